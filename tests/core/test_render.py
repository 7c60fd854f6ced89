"""Render -> encode -> verify, re-measured with an independent meter (pyloudnorm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

from puresound_core.analysis import analyze_file
from puresound_core.audio import EncoderSettings, decode, encode_blocks, probe
from puresound_core.render import LoudnessTarget, decoded_sha256, render_rendition, verify_rendition
from puresound_core.true_peak import true_peak_dbtp
from tests.conftest import pink_noise, sine, write_wav


#: Real music shipped with the repository (public domain; see examples/README.md).
EXAMPLE_MUSIC = Path(__file__).resolve().parents[2] / "examples" / "tuxtype__tuxi.ogg"


def _reference_lufs(path) -> float:
    audio, rate = decode(path)
    return pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(audio.T.astype(np.float64))


@pytest.fixture
def programme(tmp_path):
    """12 s of stereo 44.1 kHz noise with bursts 15 dB over the bed: a hard case for limiter and codec."""
    audio = pink_noise(12, 44100, level_dbfs=-32, seed=11)
    for second in range(12):
        start = second * 44100 + 5000
        audio[:, start:start + 400] *= 6.0
    path = write_wav(tmp_path / "programme.wav", audio, 44100, subtype="PCM_24")
    return path


@pytest.mark.parametrize(("settings", "target"), [
    (EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100, channels=2),
     LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0)),
    (EncoderSettings(codec="opus", bitrate_kbps=48, sample_rate_hz=48000, channels=1),
     LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0)),
    (EncoderSettings(codec="aac", bitrate_kbps=256, sample_rate_hz=44100, channels=2),
     LoudnessTarget(target_lufs=-14.0, tolerance_lu=1.0, ceiling_dbtp=-1.0)),
    (EncoderSettings(codec="wav", bit_depth=24, sample_rate_hz=48000, channels=2),
     LoudnessTarget(target_lufs=-23.0, tolerance_lu=0.5, ceiling_dbtp=-1.0)),
])
def test_rendition_meets_its_target_by_an_independent_meter(tmp_path, settings, target):
    analysis = analyze_file(EXAMPLE_MUSIC)
    out = tmp_path / f"out.{settings.extension}"
    result = render_rendition(EXAMPLE_MUSIC, out, settings=settings, target=target, analysis=analysis,
                              tags={"title": "Episode 1", "artist": "Pure Sound"})
    assert result.verification.passed, [c.message for c in result.verification.failures]
    assert abs(_reference_lufs(out) - target.target_lufs) <= target.tolerance_lu
    assert true_peak_dbtp(decode(out)[0]) <= target.ceiling_dbtp
    info = probe(out)
    assert (info.channels, info.sample_rate_hz) == (settings.channels, settings.sample_rate_hz)
    assert info.tags.get("title") == "Episode 1"
    if settings.codec in ("mp3", "opus", "flac"):  # M4A and WAV have no gain tag FFmpeg writes
        gain_tag = "r128_track_gain" if settings.codec == "opus" else "replaygain_track_gain"
        assert gain_tag in info.tags


def test_limiter_is_off_when_the_gain_leaves_headroom(tmp_path):
    path = write_wav(tmp_path / "loud.wav", sine(-6, 5, 48000, freq_hz=440), 48000)
    analysis = analyze_file(path)
    result = render_rendition(path, tmp_path / "down.flac",
                              settings=EncoderSettings(codec="flac", sample_rate_hz=48000, channels=2),
                              target=LoudnessTarget(target_lufs=-23.0, tolerance_lu=0.5), analysis=analysis)
    assert result.plan.ceiling_dbtp is None and not result.processing.limiter_active
    assert result.plan.gain_db == pytest.approx(-23.0 - analysis.loudness.integrated_lufs)
    assert result.verification.passed


def test_voice_chain_trims_high_passes_and_downmixes(tmp_path):
    rate = 48000
    speechy = sine(-18, 4, rate, freq_hz=300) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(4 * rate) / rate))
    audio = np.concatenate([np.zeros((2, 2 * rate)), speechy, np.zeros((2, 3 * rate))], axis=1).astype(np.float32)
    path = write_wav(tmp_path / "voice.wav", audio, rate)
    analysis = analyze_file(path)
    result = render_rendition(path, tmp_path / "voice.opus",
                              settings=EncoderSettings(codec="opus", bitrate_kbps=32, sample_rate_hz=48000, channels=1),
                              target=LoudnessTarget(target_lufs=-18.0, tolerance_lu=1.0, ceiling_dbtp=-1.0),
                              analysis=analysis, highpass_hz=80.0, trim_silence=True, trim_keep_s=0.1)
    assert result.verification.passed, [c.message for c in result.verification.failures]
    assert result.verification.loudness.duration_s == pytest.approx(4.2, abs=0.05)


def test_verify_reports_each_missed_target(tmp_path):
    path = write_wav(tmp_path / "hot.wav", sine(-1, 3, 44100), 44100)
    report = verify_rendition(path, settings=EncoderSettings(codec="wav", sample_rate_hz=48000, channels=1),
                              target=LoudnessTarget(target_lufs=-23.0, tolerance_lu=0.5, ceiling_dbtp=-2.0),
                              expected_duration_s=2.0)
    assert {c.check for c in report.failures} == {"integrated_loudness", "true_peak", "duration", "channels",
                                                  "sample_rate"}
    assert "hot.wav: true peak" in next(c.message for c in report.failures if c.check == "true_peak")


def test_lossy_overshoot_is_rendered_again_and_reported(tmp_path, programme):
    # Heavy limiting then MP3 at 128 kbps: the encoder's ripple overshoots the ceiling.
    result = render_rendition(programme, tmp_path / "o.mp3",
                              settings=EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100, channels=2),
                              target=LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0),
                              analysis=analyze_file(programme))
    assert result.attempts == 2
    assert "mp3 encode overshot the -1.0 dBTP ceiling" in result.retry_reason
    assert result.plan.ceiling_dbtp < -1.0
    assert result.verification.passed


def test_lossless_rendition_is_bit_exact(tmp_path):
    audio = pink_noise(3, 44100, level_dbfs=-20)
    path = write_wav(tmp_path / "src.wav", audio, 44100, subtype="PCM_16")
    analysis = analyze_file(path)
    out = tmp_path / "archive.flac"
    render_rendition(path, out, settings=EncoderSettings(codec="flac", sample_rate_hz=44100, channels=2),
                     target=LoudnessTarget(target_lufs=None, ceiling_dbtp=None), analysis=analysis)
    assert decoded_sha256(out) == decoded_sha256(path)


def test_source_tags_are_carried_over_by_default(tmp_path):
    source = tmp_path / "tagged.flac"
    encode_blocks([sine(-18, 3, 44100)], source, settings=EncoderSettings(codec="flac", sample_rate_hz=44100),
                  tags={"title": "Morning News", "artist": "Newsroom", "album": "Daily", "date": "2026"})
    out = tmp_path / "tagged.mp3"
    render_rendition(source, out, settings=EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100),
                     target=LoudnessTarget(target_lufs=-16.0), analysis=analyze_file(source))
    tags = probe(out).tags
    assert (tags["title"], tags["artist"], tags["album"], tags["date"]) == ("Morning News", "Newsroom", "Daily", "2026")
