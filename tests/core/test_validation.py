"""Validation rules: every failure named, every bad corpus file handled."""

from __future__ import annotations

import numpy as np
import pytest

from puresound_core.validation import ValidationLimits, validate_file
from tests.conftest import pink_noise, sine, write_wav

# ../shared/corpus/bad: file -> the rule that must fail (None: valid, must pass).
BAD_CORPUS = {
    "clipped_square_1kHz_0dBFS_10s.wav": "clipping_ratio_max",
    "digital_silence_60s_48k_stereo.wav": "not_silent",
    "float32_with_nan_inf.wav": "finite_samples",
    "header_samplerate_0.wav": "sample_rate",
    "mono_8kHz_16bit.wav": None,
    "one_sample.wav": "duration_min",
    "png_image_renamed.mp3": "has_audio_stream",
    "text_file_renamed.wav": "decodable",
    "truncated_half.mp3": "declared_duration",
    "truncated_half.wav": "declared_duration",
    "valid_wav_named.mp3": None,
    "zero_bytes.wav": "decodable",
}


def test_every_bad_corpus_file_gets_a_named_rule(corpus):
    files = sorted((corpus / "bad").iterdir())
    assert {f.name for f in files} == set(BAD_CORPUS), "corpus/bad changed: update BAD_CORPUS"
    for path in files:
        report = validate_file(path)
        expected = BAD_CORPUS[path.name]
        if expected is None:
            assert report.passed, [r.message for r in report.failures]
        else:
            assert expected in report.failed_rules, (path.name, report.failed_rules)
            failure = next(r for r in report.failures if r.rule == expected)
            assert path.name in failure.message and expected in failure.message


def test_every_failed_rule_is_reported_not_only_the_first(tmp_path):
    audio = np.sign(sine(0, 0.5, 48000, freq_hz=100))  # clipped square, 0.5 s
    path = write_wav(tmp_path / "short_and_clipped.wav", audio, 48000)
    limits = ValidationLimits(duration_min_s=1.0, channels_max=1, sample_rate_max_hz=44100)
    report = validate_file(path, limits)
    assert set(report.failed_rules) == {"duration_min", "channels_max", "sample_rate", "clipping_ratio_max"}
    messages = {r.rule: r.message for r in report.failures}
    assert messages["sample_rate"] == ("short_and_clipped.wav: rule 'sample_rate' failed: "
                                       "48000 Hz outside 8000-44100 Hz")
    assert "2 > 1" in messages["channels_max"]


def test_duration_max_and_file_size(tmp_path):
    path = write_wav(tmp_path / "long.wav", pink_noise(3, 16000, channels=1), 16000)
    report = validate_file(path, ValidationLimits(duration_max_s=2.0, file_size_max_bytes=1000))
    assert set(report.failed_rules) == {"duration_max", "file_size_max"}
    assert report.stats.decoded_duration_s == pytest.approx(3.0)


def test_near_silent_but_not_digital_silence_passes(tmp_path):
    path = write_wav(tmp_path / "quiet.wav", sine(-80, 2, 48000), 48000, subtype="PCM_24")
    assert validate_file(path).passed


def test_occasional_full_scale_samples_are_not_clipping(tmp_path):
    audio = pink_noise(5, 48000, level_dbfs=-12)
    audio /= np.abs(audio).max()  # one sample reaches full scale
    path = write_wav(tmp_path / "peaky.wav", audio, 48000, subtype="FLOAT")
    report = validate_file(path)
    assert report.passed and report.stats.clipped_ratio == 0.0


def test_decode_timeout_is_a_failed_rule(tmp_path):
    path = write_wav(tmp_path / "slow.wav", pink_noise(30, 48000), 48000)
    report = validate_file(path, ValidationLimits(decode_timeout_s=1e-9))
    assert "decode_timeout" in report.failed_rules
    assert "slow.wav: rule 'decode_timeout' failed" in report.failures[0].message


def test_missing_file_is_a_report_not_an_exception(tmp_path):
    report = validate_file(tmp_path / "nope.wav")
    assert not report.passed and "decodable" in report.failed_rules
