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


# ../shared/corpus good files -> rules they fail under the default limits (short effects).
GOOD_CORPUS_FAILURES = {
    "effects/freedesktop__bell.oga": ["duration_min"],
    "effects/freedesktop__camera-shutter.oga": ["duration_min"],
    "effects/hyperrogue__explosion.ogg": ["duration_min", "clipping_ratio_max"],
    "effects/tuxtype__laser.wav": ["duration_min"],
}


@pytest.mark.slow
def test_good_corpus_files_have_no_decode_errors(corpus):
    files = sorted(p for folder in ("music", "speech", "effects") for p in (corpus / folder).rglob("*")
                   if p.is_file())
    assert len(files) >= 20
    for path in files:
        report = validate_file(path)
        rel = str(path.relative_to(corpus))
        decode_errors = next(r for r in report.rules if r.rule == "decode_errors")
        assert decode_errors.passed and decode_errors.measured == 0, decode_errors.message
        assert report.failed_rules == GOOD_CORPUS_FAILURES.get(rel, []), (rel, report.failed_rules)


def _flac(tmp_path, name="x.flac"):
    path = write_wav(tmp_path / name, pink_noise(3, 44100, level_dbfs=-20, seed=3), 44100, subtype="PCM_16",
                     fmt="FLAC")
    assert validate_file(path).passed
    return path


def test_corrupt_flac_frames_fail_decode_errors(tmp_path):
    data = bytearray(_flac(tmp_path).read_bytes())
    for offset in range(len(data) // 3, 2 * len(data) // 3, len(data) // 20):
        data[offset] ^= 0x55  # inside frames: CRC-16 mismatches, decoding goes on
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(bytes(data))
    report = validate_file(corrupt)
    assert "decode_errors" in report.failed_rules
    rule = next(r for r in report.failures if r.rule == "decode_errors")
    assert rule.measured >= 1 and rule.limit == 0
    assert rule.message.startswith("corrupt.flac: rule 'decode_errors' failed: ") and ", first: [flac] " in rule.message
    tolerant = validate_file(corrupt, ValidationLimits(decode_errors_max=10_000))
    assert "decode_errors" not in tolerant.failed_rules


def test_truncated_flac_and_ogg_are_rejected(tmp_path, corpus):
    data = _flac(tmp_path).read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[:len(data) - 1000])
    assert not validate_file(cut).passed
    ogg = (corpus / "music" / "drascula__track12_9s_jingle.ogg").read_bytes()
    cut_ogg = tmp_path / "cut.ogg"
    cut_ogg.write_bytes(ogg[:len(ogg) // 2])
    report = validate_file(cut_ogg)
    assert "declared_duration" in report.failed_rules
    assert "truncated: final Ogg page" in next(r.message for r in report.failures if r.rule == "declared_duration")


def test_rule_table_and_rule_result_fields():
    from puresound_core import validation

    assert "``decode_errors``" in validation.__doc__
    assert list(validation.RuleResult.model_fields) == ["rule", "passed", "measured", "limit", "message"]
