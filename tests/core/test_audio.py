"""Probe, block decode and encode through PyAV, on files written in tmp_path."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest
import soundfile as sf

from puresound_core.audio import (
    EncoderSettings,
    ProbeResult,
    blocks_of,
    decode,
    encode_blocks,
    iter_blocks,
    probe,
)
from puresound_core.errors import EncodingError, InvalidAudioError
from puresound_core.validation import ValidationLimits, validate_file
from tests.conftest import pink_noise, sine, write_wav


@pytest.mark.parametrize(("subtype", "fmt", "bits"), [
    ("PCM_U8", "WAV", 8), ("PCM_16", "WAV", 16), ("PCM_24", "WAV", 24), ("PCM_32", "WAV", 32),
    ("FLOAT", "WAV", 32), ("PCM_24", "WAVEX", 24), ("PCM_16", "AIFF", None), ("PCM_24", "FLAC", 24),
])
def test_pcm_formats_probe_and_decode(tmp_path, subtype, fmt, bits):
    audio = sine(-6, 1.5, 44100, freq_hz=440)
    path = write_wav(tmp_path / f"x.{fmt.lower()}", audio, 44100, subtype=subtype, fmt=fmt)
    info = probe(path)
    assert (info.sample_rate_hz, info.channels) == (44100, 2)
    assert info.declared_duration_s == pytest.approx(1.5, abs=1e-3)
    if bits is not None:
        assert info.bit_depth == bits
    decoded, rate = decode(path)
    assert rate == 44100 and decoded.shape == audio.shape and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, audio, atol=2 / 2**8 if bits == 8 else 1e-4)


def test_blocks_have_the_asked_size_and_cover_the_stream(tmp_path):
    path = write_wav(tmp_path / "b.wav", pink_noise(3, 48000), 48000)
    sizes = [b.shape[1] for b in iter_blocks(path, block_size=10000)]
    assert all(s == 10000 for s in sizes[:-1]) and 0 < sizes[-1] <= 10000
    assert sum(sizes) == 3 * 48000
    with pytest.raises(ValueError, match="block_size must be > 0, got 0"):
        next(iter_blocks(path, block_size=0))


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("channels", [1, 2, 8])
@pytest.mark.parametrize(("frames", "block_size"), [(4095, 4096), (4097, 4096), (12289, 1024), (1, 65536)])
def test_every_sample_format_decodes_to_what_libsndfile_reads(tmp_path, subtype, channels, frames, block_size):
    # Integer frames are copied straight into the blocks, scaled as libswresample would, or (u8,
    # double) go through libswresample: either way, exactly libsndfile's float (an independent decoder).
    rng = np.random.default_rng(frames + channels)
    audio = rng.uniform(-1, 1, (frames, channels)) * np.linspace(0.01, 1, channels)
    path = tmp_path / f"{subtype}_{channels}.wav"
    sf.write(path, audio, 32000, subtype=subtype)
    blocks = list(iter_blocks(path, block_size=block_size))
    assert all(b.shape == (channels, block_size) for b in blocks[:-1]) and 0 < blocks[-1].shape[1] <= block_size
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), sf.read(path, dtype="float32", always_2d=True)[0].T)


@pytest.mark.parametrize(("encoder", "suffix", "bits", "channels"), [
    ("alac", "m4a", 16, 2), ("wavpack", "wv", 24, 6), ("wavpack", "wv", 24, 8), ("wavpack", "wv", 16, 12)])
def test_planar_frames_decode_exactly_direct_and_past_the_8_channel_guard(tmp_path, encoder, suffix, bits,
                                                                           channels):
    # Lossless codecs that decode to planar integers: under 8 channels the planes are read
    # directly; from 8 on, PyAV 18's `planes` would crash the process, so libswresample
    # de-interleaves them. Either way the blocks are exactly the integers written.
    rng = np.random.default_rng(channels)
    ints = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (5000, channels), dtype=np.int32)
    packed = (ints if bits == 16 else ints << 8).astype(np.int16 if bits == 16 else np.int32)
    fmt, layout = ("s16" if bits == 16 else "s32"), f"{channels}c" if channels not in (2, 6) else (
        "stereo" if channels == 2 else "5.1")
    path = tmp_path / f"planar.{suffix}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=44100, layout=layout)
        stream.codec_context.format = f"{fmt}p"  # else wavpack's first format, u8p
        frame = av.AudioFrame.from_ndarray(packed.reshape(1, -1), format=fmt, layout=layout)
        frame.sample_rate, frame.pts = 44100, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with av.open(str(path)) as container:
        first = next(container.decode(audio=0))
        assert first.format.is_planar and first.layout.nb_channels == channels
    decoded = np.concatenate(list(iter_blocks(path, block_size=1777)), axis=1)
    expected = packed.T.astype(np.float32) * np.float32(2.0 ** (-15 if bits == 16 else -31))
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")
def test_concatenated_mp3s_of_other_rates_and_layouts_decode_at_the_first_ones(tmp_path):
    # `cat a.mp3 b.mp3` changes rate and layout mid-stream: libswresample is set up again at each change.
    parts = [(44100, 2, 440.0), (24000, 1, 1000.0), (44100, 2, 440.0)]
    data = b""
    for i, (rate, channels, freq) in enumerate(parts):
        tone = np.tile(0.3 * np.sin(2 * np.pi * freq * np.arange(2 * rate) / rate), (channels, 1)).T
        sf.write(tmp_path / f"p{i}.mp3", tone, rate)
        data += (tmp_path / f"p{i}.mp3").read_bytes()
    (tmp_path / "joined.mp3").write_bytes(data)
    decoded, rate = decode(tmp_path / "joined.mp3")
    assert rate == 44100 and decoded.shape[0] == 2
    assert 6.0 <= decoded.shape[1] / rate <= 6.3  # three 2 s parts, each with its encoder's padding
    middle = decoded[0, int(2.5 * rate):int(3.5 * rate)]  # the 24 kHz mono part, as 44.1 kHz stereo
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    assert np.argmax(spectrum) * rate / len(middle) == pytest.approx(1000.0, abs=2)
    np.testing.assert_array_equal(decoded[0, int(2.5 * rate):int(3.5 * rate)], decoded[1, int(2.5 * rate):int(3.5 * rate)])


@pytest.mark.parametrize(("settings", "max_error"), [
    (EncoderSettings(codec="wav", sample_rate_hz=48000, channels=2, bit_depth=16), 2**-15),
    (EncoderSettings(codec="wav", sample_rate_hz=48000, channels=2, bit_depth=24), 2**-23),
    (EncoderSettings(codec="flac", sample_rate_hz=48000, channels=2, bit_depth=24), 2**-23),
    (EncoderSettings(codec="mp3", sample_rate_hz=48000, channels=2, bitrate_kbps=192), None),
    (EncoderSettings(codec="mp3", sample_rate_hz=48000, channels=2, vbr_quality=2), None),
    (EncoderSettings(codec="aac", sample_rate_hz=48000, channels=2, bitrate_kbps=192), None),
    (EncoderSettings(codec="opus", sample_rate_hz=48000, channels=1, bitrate_kbps=64), None),
])
def test_encode_round_trip(tmp_path, settings, max_error):
    audio = pink_noise(4, 48000, channels=settings.channels, level_dbfs=-20, seed=1)
    out = tmp_path / f"r.{settings.extension}"
    result = encode_blocks(blocks_of(audio, block_size=5000), out, settings=settings,
                           tags={"title": "Test Title", "artist": "Pure Sound"})
    assert result.samples_in == audio.shape[1] and out.stat().st_size == result.size_bytes
    info = probe(out)
    assert (info.sample_rate_hz, info.channels) == (48000, settings.channels)
    assert info.tags.get("title") == "Test Title"
    decoded, _ = decode(out)
    # Priming is removed by the decoder: lengths agree within 50 ms (AAC keeps end padding).
    assert abs(decoded.shape[1] - audio.shape[1]) <= 0.05 * 48000
    if max_error is not None:
        assert np.abs(decoded - audio).max() <= max_error * 0.51 + 1e-9
    else:
        n = min(decoded.shape[1], audio.shape[1])
        corr = np.corrcoef(decoded[0, 2000:n - 2000], audio[0, 2000:n - 2000])[0, 1]
        assert corr > 0.5  # aligned: priming removed (a one-sample offset of noise gives ~0)


def test_encode_is_atomic_on_failure(tmp_path):
    out = tmp_path / "fail.mp3"
    settings = EncoderSettings(codec="mp3", sample_rate_hz=44100, channels=2, bitrate_kbps=128)
    good = sine(-6, 1, 44100)

    def blocks():
        yield good
        yield good[:1]  # wrong channel count mid-stream

    with pytest.raises(EncodingError, match="expects 2 channels"):
        encode_blocks(blocks(), out, settings=settings)
    assert list(tmp_path.iterdir()) == []


def test_video_container_first_audio_stream(tmp_path):
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("flac", rate=48000, layout="stereo")
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        audio = sine(-12, 1, 48000)
        frame = av.AudioFrame.from_ndarray(audio, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 48000, 0
        for packet in sound.encode(frame):
            out.mux(packet)
        for packet in sound.encode(None):
            out.mux(packet)
    info = probe(path)
    assert info.codec == "flac" and info.channels == 2
    decoded, rate = decode(path)
    assert rate == 48000 and decoded.shape[1] == 48000


def test_probe_errors_name_the_rule(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("not audio at all\n" * 50)
    with pytest.raises(InvalidAudioError) as err:
        probe(empty)
    assert err.value.rule == "decodable" and "empty.wav" in str(err.value)
    with pytest.raises(InvalidAudioError) as err:
        probe(text)
    assert err.value.rule in ("decodable", "has_audio_stream") and "notes.mp3" in str(err.value)


def test_encoder_settings_reject_impossible_combinations():
    with pytest.raises(ValueError, match="opus needs sample_rate_hz"):
        EncoderSettings(codec="opus", sample_rate_hz=44100, bitrate_kbps=64)
    with pytest.raises(ValueError, match="vbr_quality applies to mp3"):
        EncoderSettings(codec="aac", bitrate_kbps=128, vbr_quality=2)


def test_written_files_are_readable_by_libsndfile(tmp_path):
    settings = EncoderSettings(codec="wav", sample_rate_hz=22050, channels=1)
    out = encode_blocks([sine(-6, 1, 22050, channels=1)], tmp_path / "m.wav", settings=settings)
    data, rate = sf.read(out.path)
    assert rate == 22050 and data.shape == (22050,)


def _distinct_channels(channels: int, sample_rate_hz: int = 48000, duration_s: float = 1.0) -> np.ndarray:
    """Each channel a different sine frequency and level, so a channel swap or mix is visible."""
    t = np.arange(int(duration_s * sample_rate_hz)) / sample_rate_hz
    return np.stack([0.5 * np.sin(2 * np.pi * (200 + 100 * c) * t) * (c + 1) / (channels + 1)
                     for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("channels", [6, 8, 12])
def test_multichannel_24bit_decodes_exactly(tmp_path, channels):
    # WAV decodes to packed frames; planar ones: test_planar_frames_decode_exactly_...
    audio = _distinct_channels(channels)
    path = write_wav(tmp_path / f"c{channels}.wav", audio, 48000, subtype="PCM_24")
    info = probe(path)
    assert (info.channels, info.sample_rate_hz, info.bit_depth) == (channels, 48000, 24)
    decoded, rate = decode(path)
    assert rate == 48000 and decoded.shape == (channels, 48000)
    np.testing.assert_allclose(decoded, audio, atol=2**-23)  # 24-bit quantisation (1/2 LSB)
    sizes = [b.shape for b in iter_blocks(path, block_size=5000)]
    assert all(s[0] == channels for s in sizes) and sum(s[1] for s in sizes) == 48000


def _encode_wav(path, encoder: str, *, rate: int, layout: str, duration_s: float = 3.0):
    """A compressed WAV written by PyAV's wav muxer (which also writes a ``fact`` chunk)."""
    channels = 2 if layout == "stereo" else 1
    n = int(rate * duration_s)
    audio = np.tile(0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate), (channels, 1)).astype(np.float32)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream(encoder, rate=rate, layout=layout)
        fmt = next(f.name for f in stream.codec_context.codec.audio_formats if f.name in ("fltp", "s16", "s16p"))
        size = stream.codec_context.frame_size or 1024
        for start in range(0, n, size):
            block = audio[:, start:start + size]
            data = block if fmt.endswith("p") else block.T.reshape(1, -1)
            if fmt.startswith("s16"):
                data = np.round(data * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _gsm_wav(path, *, blocks: int = 150, seed: int = 0):
    """GSM 6.10 in WAV (format tag 0x31, 65-byte blocks of 320 samples) around seeded payload.

    FFmpeg has no GSM encoder; every bit pattern is a valid GSM frame, so the payload decodes.
    """
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 256, blocks * 65, dtype=np.uint8).tobytes()
    fmt = struct.pack("<HHIIHHHH", 0x31, 1, 8000, 1625, 65, 0, 2, 320)
    fact = struct.pack("<I", blocks * 320)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
            + b"data" + struct.pack("<I", len(payload)) + payload)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.mark.parametrize(("encoder", "rate", "layout"), [
    ("adpcm_ima_wav", 8000, "mono"), ("adpcm_ms", 22050, "stereo"), ("libmp3lame", 44100, "stereo"),
])
def test_compressed_wav_declares_its_fact_duration(tmp_path, encoder, rate, layout):
    path = _encode_wav(tmp_path / f"{encoder}.wav", encoder, rate=rate, layout=layout)
    info = probe(path)
    assert info.container == "wav" and not info.codec.startswith("pcm_")
    assert info.declared_duration_s == pytest.approx(3.0, abs=0.1)  # not data bytes / block_align
    assert info.bit_depth is None
    report = validate_file(path)
    assert report.passed, [r.message for r in report.failures]


def test_gsm_in_wav_declares_its_fact_duration(tmp_path):
    path = _gsm_wav(tmp_path / "gsm.wav")
    info = probe(path)
    assert info.codec == "gsm_ms" and info.declared_duration_s == pytest.approx(150 * 320 / 8000)
    report = validate_file(path, ValidationLimits(clipping_ratio_max=1.0))
    assert {"declared_duration", "decode_errors", "decodable"}.isdisjoint(report.failed_rules), report.failed_rules


def _two_track_mka(path, *, default_track: int | None):
    """Track 0 digital silence, track 1 a -6 dBFS sine; ``default_track`` gets the default flag."""
    audio = sine(-6, 2, 48000)
    with av.open(str(path), "w", format="matroska") as out:
        tracks = [out.add_stream("flac", rate=48000, layout="stereo") for _ in range(2)]
        for i, track in enumerate(tracks):
            track.disposition = av.stream.Disposition.default if i == default_track else 0
        for track, signal in zip(tracks, (np.zeros_like(audio), audio), strict=True):
            for start in range(0, audio.shape[1], 4800):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(signal[:, start:start + 4800]),
                                                   format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                for packet in track.encode(frame):
                    out.mux(packet)
            for packet in track.encode(None):
                out.mux(packet)
    return path


def test_two_track_mka_uses_the_default_track_for_probe_and_decode(tmp_path):
    path = _two_track_mka(tmp_path / "two.mka", default_track=1)
    info = probe(path)
    assert (info.stream_index, info.audio_streams) == (1, 2)
    decoded, _ = decode(path)
    assert np.abs(decoded).max() == pytest.approx(10 ** (-6 / 20), abs=1e-3)  # the sine, not the silence
    assert validate_file(path).passed


def test_two_track_mka_without_default_names_the_other_streams(tmp_path):
    path = _two_track_mka(tmp_path / "nodefault.mka", default_track=None)
    info = probe(path)
    with av.open(str(path)) as container:
        assert info.stream_index == container.streams.best("audio").index
    assert info.audio_streams == 2
    silent_first = np.abs(next(iter_blocks(path))).max() == 0
    report = validate_file(path)
    if silent_first:  # FFmpeg's best stream is the silent track: judged on it, and says so
        failure = next(r for r in report.failures if r.rule == "not_silent")
        assert "the file has 2 audio streams" in failure.message
    assert report.probe.stream_index == info.stream_index


def test_probe_result_defaults_keep_old_constructors():
    info = ProbeResult(path="x.wav", file_size_bytes=1, container="wav", codec="pcm_s16le", sample_rate_hz=8000,
                       channels=1, channel_layout="mono", declared_duration_s=None, bit_depth=16, bitrate_kbps=None)
    assert (info.stream_index, info.audio_streams) == (0, 1)


def test_truncated_ogg_is_an_integrity_issue(tmp_path, corpus):
    data = (corpus / "effects" / "oxygen__Oxygen-K3B-Finish-Success.ogg").read_bytes()
    assert probe(corpus / "effects" / "oxygen__Oxygen-K3B-Finish-Success.ogg").integrity_issue is None
    cut_mid_page = tmp_path / "mid.ogg"
    cut_mid_page.write_bytes(data[:len(data) * 2 // 3])
    assert "final Ogg page has" in probe(cut_mid_page).integrity_issue
    last_page = data.rfind(b"OggS")
    cut_on_page = tmp_path / "page.ogg"
    cut_on_page.write_bytes(data[:data.rfind(b"OggS", 0, last_page)])
    assert probe(cut_on_page).integrity_issue == "final Ogg page lacks the end-of-stream flag"
