"""The ``puresound analyze`` command on real files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from puresound.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_analyze_json_has_one_object_per_file_with_the_documented_keys():
    result = CliRunner().invoke(app, ["analyze", "--json", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {Path(r["path"]).name for r in rows} == {"tuxtype__tuxi.ogg", "en-US_espeak-ng_news-bulletin.flac"}
    for row in rows:
        assert {"path", "valid", "failed_rules", "integrated_lufs", "true_peak_dbtp", "lra_lu",
                "sample_peak_dbfs", "content_class"} <= row.keys()
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["tuxtype__tuxi.ogg"]["content_class"] == "music"
    assert by_name["en-US_espeak-ng_news-bulletin.flac"]["content_class"] == "speech"


def test_analyze_rejects_bad_input_with_rules_and_exit_0(corpus):
    result = CliRunner().invoke(app, ["analyze", "--json", str(corpus / "bad")])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(result.output)}
    assert rows["zero_bytes.wav"]["failed_rules"] == ["decodable"]
    assert rows["truncated_half.mp3"]["valid"] is False


def test_missing_path_is_a_usage_error():
    result = CliRunner().invoke(app, ["analyze", "/no/such/file.wav"])
    assert result.exit_code == 2


def test_file_names_are_printed_as_they_are_not_as_markup(tmp_path):
    weird = tmp_path / "[bold]final.ogg"  # rich would print "final.ogg" in bold
    weird.write_bytes((EXAMPLES / "tuxtype__tuxi.ogg").read_bytes())
    result = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "[bold]final" in result.output.replace("\n", "")
