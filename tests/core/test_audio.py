"""Probe, block decode and encode through PyAV, on files written in tmp_path."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf

from puresound_core.audio import EncoderSettings, blocks_of, decode, encode_blocks, iter_blocks, probe
from puresound_core.errors import EncodingError, InvalidAudioError
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
