"""Render -> encode -> verify, re-measured with an independent meter (pyloudnorm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

from puresound_core.analysis import analyze_file
from puresound_core.audio import EncoderSettings, decode, encode_blocks, probe
from puresound_core.render import LoudnessTarget, decoded_sha256, plan_rendition, render_rendition, verify_rendition
from puresound_core.true_peak import true_peak_dbtp
from tests.conftest import pink_noise, sine, write_wav


#: Real music shipped with the repository (public domain; see examples/README.md).
EXAMPLE_MUSIC = Path(__file__).resolve().parents[2] / "examples" / "tuxtype__tuxi.ogg"


def _reference_lufs(path) -> float:
    """pyloudnorm's reading as played: a mono file on two loudspeakers (dual-mono)."""
    audio, rate = decode(path)
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
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
    assert {c.rule for c in report.failures} == {"integrated_loudness", "true_peak", "duration", "channels",
                                                  "sample_rate"}
    assert "hot.wav: true peak" in next(c.message for c in report.failures if c.rule == "true_peak")


def test_lossy_overshoot_is_rendered_again_and_reported(tmp_path, programme):
    # Heavy limiting then Opus at 24 kbps: the codec adds more than the 0.5 dB lossy margin.
    result = render_rendition(programme, tmp_path / "o.opus",
                              settings=EncoderSettings(codec="opus", bitrate_kbps=24, sample_rate_hz=48000, channels=1),
                              target=LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0),
                              analysis=analyze_file(programme))
    assert result.attempts >= 2
    assert "opus encode overshot the -1.0 dBTP ceiling" in result.retry_reason
    overshoots = [float(part.split("ceiling by ")[1].split(" dB")[0])
                  for part in result.retry_reason.split("attempt ")[1:] if "ceiling by " in part]
    assert overshoots == sorted(overshoots, reverse=True)  # each retry closer than the one before
    assert result.plan.ceiling_dbtp < -1.5
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


def test_a_loudness_miss_is_corrected_toward_target_plus_miss_and_converges(tmp_path):
    # Pink noise with a white hiss on top through MP3 at 64 kbps: LAME's low-pass takes ~1.5 LU
    # of K-weighted energy away, more than the 0.5 LU tolerance.
    audio = pink_noise(8, 44100, level_dbfs=-30, seed=4)
    audio += (np.random.default_rng(3).standard_normal(audio.shape) * 0.003).astype(np.float32)
    path = write_wav(tmp_path / "hiss.wav", audio, 44100)
    target = LoudnessTarget(target_lufs=-16.0, tolerance_lu=0.5, ceiling_dbtp=-1.0)
    result = render_rendition(path, tmp_path / "hiss.mp3", target=target, analysis=analyze_file(path),
                              settings=EncoderSettings(codec="mp3", bitrate_kbps=64, sample_rate_hz=44100))
    assert result.attempts == 2 and result.kept_attempt == 2, result.retry_reason
    first_miss = float(result.retry_reason.split("measured ")[1].split(" LUFS")[0]) - target.target_lufs
    assert first_miss < -target.tolerance_lu
    assert "aim moved by" in result.retry_reason
    # The retry is not undone by limiter compensation: it lands within a tenth of the tolerance.
    assert abs(result.verification.loudness.integrated_lufs - target.target_lufs) <= 0.05
    assert abs(_reference_lufs(tmp_path / "hiss.mp3") - target.target_lufs) <= 0.1


def test_gain_tags_are_written_from_the_measured_rendition(tmp_path):
    out = tmp_path / "tagged.mp3"
    result = render_rendition(EXAMPLE_MUSIC, out, settings=EncoderSettings(codec="mp3", bitrate_kbps=128,
                                                                            sample_rate_hz=44100),
                              target=LoudnessTarget(target_lufs=-16.0), analysis=analyze_file(EXAMPLE_MUSIC))
    measured = result.verification.loudness.integrated_lufs
    tag = probe(out).tags["replaygain_track_gain"]
    assert float(tag.removesuffix(" dB")) == pytest.approx(-18.0 - measured, abs=0.005)
    assert result.gain_tags["REPLAYGAIN_TRACK_GAIN"] == tag
    # Tagging edits the tag block only: the audio still measures what verification measured.
    assert verify_rendition(out, settings=result.settings, target=LoudnessTarget(target_lufs=-16.0),
                            expected_duration_s=result.verification.loudness.duration_s).loudness == \
        result.verification.loudness


def test_mono_and_stereo_renditions_play_equally_loud(tmp_path):
    analysis = analyze_file(EXAMPLE_MUSIC)
    target = LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0)
    stereo = render_rendition(EXAMPLE_MUSIC, tmp_path / "s.mp3", target=target, analysis=analysis,
                              settings=EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100))
    mono = render_rendition(EXAMPLE_MUSIC, tmp_path / "m.opus", target=target, analysis=analysis,
                            settings=EncoderSettings(codec="opus", bitrate_kbps=48, sample_rate_hz=48000, channels=1))
    assert mono.verification.dual_mono and not stereo.verification.dual_mono
    assert mono.verification.single_channel_lufs == pytest.approx(
        mono.verification.loudness.integrated_lufs - 3.0103, abs=0.001)
    # Independent reference: pyloudnorm on the mono file played on both loudspeakers.
    as_played = _reference_lufs(tmp_path / "m.opus")
    assert abs(as_played - _reference_lufs(tmp_path / "s.mp3")) <= 0.5
    assert abs(as_played - target.target_lufs) <= target.tolerance_lu


@pytest.mark.parametrize(("signal", "rule"), [
    ("tone_at_-85_dbfs", "loudness_measurable"),   # every gating block under -70 LUFS
    ("tone_at_-60_dbfs", "gain_max"),              # -63 LUFS: +47 dB would be needed
    ("click_in_silence", "max_gain_reduction"),    # one sample in 10 s: huge gain, huge peak
])
def test_a_target_that_cannot_be_reached_is_known_before_rendering(tmp_path, signal, rule):
    rate = 48000
    if signal.startswith("tone"):
        audio = sine(float(signal.split("_")[2]), 10, rate, freq_hz=1000)
    else:
        audio = np.zeros((2, 10 * rate), dtype=np.float32)
        audio[:, 5 * rate] = 0.5
    path = write_wav(tmp_path / f"{signal}.wav", audio, rate, subtype="PCM_24")
    planned = plan_rendition(path, settings=EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100),
                             target=LoudnessTarget(target_lufs=-16.0, ceiling_dbtp=-1.0), analysis=analyze_file(path))
    rules = [p.rule for p in planned.problems]
    assert rule in rules, [p.message for p in planned.problems]
    problem = next(p for p in planned.problems if p.rule == rule)
    assert problem.message.startswith(f"{signal}.wav: rule '{rule}' failed:")
    if problem.limit is not None:
        assert problem.measured > problem.limit


def test_an_encoder_that_changes_the_level_is_compensated_before_the_first_render(tmp_path):
    from puresound_core.render import encoder_gain_db

    mp3 = EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100)
    assert -0.6 < encoder_gain_db(mp3) < -0.3  # libmp3lame <= 160 kbps plays back ~0.45 dB quieter
    assert encoder_gain_db(EncoderSettings(codec="flac", sample_rate_hz=44100)) == 0.0
    analysis = analyze_file(EXAMPLE_MUSIC)
    result = render_rendition(EXAMPLE_MUSIC, tmp_path / "o.mp3", settings=mp3, analysis=analysis,
                              target=LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0))
    assert result.attempts == 1
    assert abs(result.verification.loudness.integrated_lufs + 16.0) <= 0.1
