"""prefect.yaml and the served deployments: one description, complete, importable, scheduled with a timezone."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.utilities.importtools import import_object

from deployments.serve import MANUAL, NIGHTLY, ON_UPLOAD, PART, build_deployments
from deployments.specs import yaml_of_builtin_presets
from puresound.settings import PureSoundSettings
from puresound_core.presets import BUILTIN_PRESETS

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_is_generated_from_the_deployments_serve_builds():
    assert (REPO / "prefect.yaml").read_text() == yaml_of_builtin_presets(), (
        "prefect.yaml is stale: run `puresound deployments --prefect-yaml > prefect.yaml`")
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    served = build_deployments(BUILTIN_PRESETS, PureSoundSettings())
    assert [(d["name"], d["entrypoint"].split(":")[1], d["tags"]) for d in project["deployments"]] == [
        (d.name, d.entrypoint.rsplit(".", 1)[1], d.tags) for d in served]


def test_prefect_yaml_declares_four_complete_deployments_per_preset():
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = project["deployments"]
    assert len(deployments) == 4 * len(BUILTIN_PRESETS)
    for deployment in deployments:
        assert deployment["description"] and deployment["parameters"], deployment["name"]
        flow = import_object(deployment["entrypoint"])
        if deployment["name"] == "nightly":
            assert flow.name.startswith("ingest-")
            assert all(s["timezone"] and s["cron"] for s in deployment["schedules"])
            # placeholder sources: a schedule switched on at deploy would fire and fail every night
            assert not any(s.get("active", True) for s in deployment["schedules"])
            assert {s["timezone"] for s in deployment["schedules"]} == {PureSoundSettings.model_fields["timezone"].default}
        elif deployment["name"] == PART:
            assert flow.name.startswith("part-") and "schedules" not in deployment
        else:
            assert flow.name in BUILTIN_PRESETS
    names = {(import_object(d["entrypoint"]).name, d["name"]) for d in deployments}
    for preset in BUILTIN_PRESETS:
        assert {(f"ingest-{preset}", NIGHTLY), (preset, ON_UPLOAD), (preset, MANUAL), (f"part-{preset}", PART)} <= names


def test_served_deployments_have_form_parameters_and_a_cron_with_timezone():
    settings = PureSoundSettings(timezone="Europe/Berlin", nightly_source_root="s3://incoming")
    built = build_deployments(BUILTIN_PRESETS, settings)
    assert len(built) == 4 * len(BUILTIN_PRESETS)
    nightly = [d for d in built if d.name == NIGHTLY]
    assert all(d.schedules[0].schedule.timezone == "Europe/Berlin" for d in nightly)
    assert nightly[0].parameters["source"] == "s3://incoming/podcast"
    manual = next(d for d in built if d.name == MANUAL)
    assert "RunRequest" in manual._parameter_openapi_schema.model_dump()["definitions"]
    assert all(d.entrypoint.startswith("flows.dynamic.") and d.description for d in built)


def test_deployment_defaults_are_absolute_and_descriptions_say_what_the_preset_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = build_deployments(BUILTIN_PRESETS, PureSoundSettings(output_dir="out", nightly_source_root="incoming"))
    manual = next(d for d in built if d.name == MANUAL and d.flow_name == "podcast")
    request = manual.parameters["request"]
    assert request["sources"] == [str(tmp_path / "incoming" / "podcast")]
    assert request["output_dir"] == str(tmp_path / "out")
    assert "-16 LUFS +-1 LU" in manual.description and "opus-48k-mono (Opus 48 kbps" in manual.description


def test_a_site_generates_its_own_prefect_yaml_with_its_schedule_and_locations(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from puresound.cli import app

    monkeypatch.delenv("PURESOUND_NIGHTLY_SOURCE_ROOT", raising=False)
    refused = CliRunner().invoke(app, ["deployments", "--prefect-yaml", "--from-settings"], catch_exceptions=False)
    assert refused.exit_code == 2 and "PURESOUND_NIGHTLY_SOURCE_ROOT" in refused.output  # no schedule on a default
    monkeypatch.setenv("PURESOUND_NIGHTLY_SOURCE_ROOT", "s3://acme-incoming/audio/")
    monkeypatch.setenv("PURESOUND_OUTPUT_DIR", "published")  # relative: made absolute (workers run elsewhere)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PURESOUND_NIGHTLY_CRON", "30 1 * * *")
    monkeypatch.setenv("PURESOUND_TIMEZONE", "Europe/Berlin")
    result = CliRunner().invoke(app, ["deployments", "--prefect-yaml", "--from-settings"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "--from-settings" in result.output.splitlines()[0]
    deployments = yaml.safe_load(result.output)["deployments"]
    nightly = {d["entrypoint"].split(":")[1]: d for d in deployments if d["name"] == NIGHTLY}
    podcast = nightly["ingest__podcast"]
    assert podcast["parameters"]["source"] == "s3://acme-incoming/audio/podcast"
    assert podcast["parameters"]["output_dir"] == str(tmp_path.resolve() / "published")
    assert podcast["schedules"] == [{"cron": "30 1 * * *", "timezone": "Europe/Berlin", "active": True}]
