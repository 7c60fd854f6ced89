"""Preset policy decided before rendering: what a source can be delivered as."""

from __future__ import annotations

import pytest

from puresound_core.audio import probe
from puresound_core.isolation import is_transient_failure
from puresound_core.policy import lossless_source_rule, resolve_encoder, source_rules
from puresound_core.presets import BUILTIN_PRESETS, Preset
from puresound_core.validation import RuleResult, ValidationReport
from tests.conftest import pink_noise, write_wav


def test_archive_sources_must_be_integer_pcm_and_renditions_must_hold_the_channels(tmp_path):
    float_wav = write_wav(tmp_path / "float.wav", pink_noise(1, 48000), 48000, subtype="FLOAT")
    rule = lossless_source_rule(probe(float_wav))
    assert not rule.passed and "pcm_f32le" in rule.message and rule.message.startswith("float.wav:")
    six = write_wav(tmp_path / "six.wav", pink_noise(1, 48000, channels=6), 48000, subtype="PCM_24")
    keep = Preset(**{**BUILTIN_PRESETS["archive-flac"].model_dump(), "name": "keep", "lossless_archive": False})
    failures = source_rules(keep, probe(six))
    assert [f.rule for f in failures] == ["source_format"] and "6 > 2" in failures[0].message
    with pytest.raises(ValueError):  # validated, never a silent 6-channel encoder setting
        resolve_encoder(keep.renditions[0], probe(six))
    stereo = write_wav(tmp_path / "st.wav", pink_noise(1, 44100), 44100, subtype="PCM_16")
    settings = resolve_encoder(keep.renditions[0], probe(stereo))
    assert (settings.sample_rate_hz, settings.channels, settings.bit_depth) == (44100, 2, 16)


def test_only_failures_the_machine_may_cause_are_transient():
    def report(rule: str, message: str) -> ValidationReport:
        return ValidationReport(path="x.wav", passed=False,
                                rules=[RuleResult(rule=rule, passed=False, message=f"x.wav: {message}")])

    assert is_transient_failure(report("decode_timeout", "decoder process still running after 605 s limit, killed"))
    assert is_transient_failure(report("decodable", "decoder process killed by SIGKILL (killed from outside)"))
    assert not is_transient_failure(report("decodable", "decoder process killed by SIGSEGV"))
    assert not is_transient_failure(report("declared_duration", "truncated"))


def test_infinite_or_nan_preset_values_are_refused():
    data = BUILTIN_PRESETS["podcast"].model_dump()
    for field, value in (("tolerance_lu", float("inf")), ("target_lufs", float("-inf"))):
        with pytest.raises(ValueError):
            Preset(**{**data, "loudness": {**data["loudness"], field: value}})
