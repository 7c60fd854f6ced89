"""Presets: built-ins valid and cited, YAML loading with file + field errors."""

from __future__ import annotations

import os

import pytest
import yaml

from puresound_core.errors import PresetError
from puresound_core.presets import BUILTIN_PRESETS, load_preset_file, load_presets


def test_builtins_follow_their_specs():
    p = BUILTIN_PRESETS
    assert set(p) == {"podcast", "music-streaming", "audiobook-acx", "broadcast-r128", "archive-flac", "voice"}
    assert (p["podcast"].loudness.target_lufs, p["podcast"].loudness.ceiling_dbtp) == (-16.0, -1.0)
    assert [r.encoder.codec for r in p["music-streaming"].renditions] == ["aac", "opus", "mp3"]
    acx = p["audiobook-acx"]
    assert acx.loudness.rms_range_dbfs == (-23.0, -18.0) and acx.loudness.noise_floor_max_dbfs == -60.0
    assert acx.validation.duration_max_s == 7200.0 and acx.renditions[0].encoder.channels == 1
    assert p["broadcast-r128"].loudness.tolerance_lu == 0.5
    assert p["voice"].processing.highpass_hz == 80.0 and p["voice"].processing.trim_silence
    assert all(preset.standard for preset in p.values())


def test_fingerprint_changes_with_any_field():
    podcast = BUILTIN_PRESETS["podcast"]
    louder = podcast.model_copy(update={"loudness": podcast.loudness.model_copy(update={"target_lufs": -15.0})})
    assert podcast.fingerprint != louder.fingerprint


def test_yaml_preset_loads_and_can_replace_a_builtin(tmp_path):
    (tmp_path / "radio.yaml").write_text(
        "name: radio\nversion: '2'\nloudness: {target_lufs: -18, tolerance_lu: 1, ceiling_dbtp: -2}\n"
        "renditions:\n  - name: mp3-96k\n    encoder: {codec: mp3, bitrate_kbps: 96, sample_rate_hz: 44100, channels: 1}\n")
    presets = load_presets(tmp_path)
    assert presets["radio"].loudness.ceiling_dbtp == -2.0 and "podcast" in presets


def test_bad_yaml_preset_names_the_file_and_the_field_path(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nversion: '1'\nrenditions:\n  - name: x\n"
                   "    encoder: {codec: mp3, bitrate_kbps: -5, sample_rate_hz: 44100}\n")
    with pytest.raises(PresetError) as err:
        load_preset_file(bad)
    assert str(err.value).startswith("broken.yaml: renditions.0.encoder.bitrate_kbps:")


def test_unknown_field_and_non_mapping_are_errors(tmp_path):
    (tmp_path / "typo.yaml").write_text("name: typo\nversion: '1'\nrendtions: []\n")
    with pytest.raises(PresetError, match="typo.yaml: .*rendtions"):
        load_presets(tmp_path)
    (tmp_path / "typo.yaml").write_text("- just a list\n")
    with pytest.raises(PresetError, match=r"typo.yaml: \(top level\)"):
        load_presets(tmp_path)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("version", "/../../../../../../ESCAPED", "version: String should match pattern"),
    ("output_naming", "{stem.__class__.__mro__}-{sha8}", "unknown field {stem.__class__.__mro__}"),
    ("output_naming", "{stem:>500000000}{sha8}", "unknown field {stem:>500000000}"),
    ("output_naming", "../{sha8}", "characters ['/'] are not allowed"),
    ("output_naming", "{stem}", "must contain {sha8} or {sha16}"),
])
def test_fields_that_become_paths_are_checked_when_the_preset_loads(tmp_path, field, value, expected):
    data = BUILTIN_PRESETS["podcast"].model_dump(mode="json") | {field: value}
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PresetError) as err:
        load_preset_file(tmp_path / "evil.yaml")
    assert str(err.value).startswith(f"evil.yaml: {field}") and expected in str(err.value)


def test_output_folder_is_a_slug_whatever_the_source_name():
    preset = BUILTIN_PRESETS["podcast"].model_copy(update={"output_naming": "{preset}-{version}-{stem}-{sha16}"})
    sha = "0123456789abcdef" * 4
    assert preset.output_folder("Episode 12 (final).wav", sha) == "podcast/podcast-1-Episode_12_final_-0123456789abcdef"
    weird = os.fsdecode(b"../../\xff\xfe..evil.wav")
    folder = preset.output_folder(weird, sha)
    assert folder.startswith("podcast/podcast-1-") and "/" not in folder.removeprefix("podcast/")
    assert ".." not in folder.split("/")


def test_an_opus_rendition_that_could_never_verify_is_refused_at_load(tmp_path):
    (tmp_path / "phone.yaml").write_text(
        "name: phone\nversion: '1'\nrenditions:\n  - name: opus-16k\n"
        "    encoder: {codec: opus, bitrate_kbps: 16, sample_rate_hz: 16000, channels: 1}\n")
    with pytest.raises(PresetError, match=r"phone.yaml: renditions.0: .*opus renditions decode at 48000 Hz"):
        load_preset_file(tmp_path / "phone.yaml")
