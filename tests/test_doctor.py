"""``puresound doctor`` and ``puresound setup`` against a real Prefect server and real databases."""

from __future__ import annotations

from uuid import uuid4

from typer.testing import CliRunner

from puresound.cli import app
from puresound.doctor import masked_url, run_checks
from puresound.settings import PureSoundSettings

runner = CliRunner()


def _by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_doctor_finds_what_is_missing_and_setup_creates_it(puresound_env, monkeypatch):
    pool = f"doctor-{uuid4().hex[:8]}"
    monkeypatch.setenv("PURESOUND_ENCODE_CONCURRENCY_LIMIT", "no-such-limit")
    monkeypatch.setenv("PURESOUND_OUTPUT_DIR", "s3://published/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADOCTORTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "doctor-secret-never-printed")
    checks = _by_name(run_checks(pool=pool))
    assert checks["Prefect API"].status == "ok" and "server" in checks["Prefect API"].detail
    assert checks["work pool"].status == "fail" and pool in checks["work pool"].detail
    assert checks["concurrency limit"].status == "fail" and "no-such-limit" in checks["concurrency limit"].detail
    assert checks["part deployments"].status == "warn"
    assert checks["lineage database"].status == "ok" and "sqlite" in checks["lineage database"].detail
    assert checks["S3 credentials"].status == "ok" and "env" in checks["S3 credentials"].detail
    result = runner.invoke(app, ["doctor", "--pool", pool])
    assert result.exit_code == 1, result.output
    assert "doctor-secret-never-printed" not in result.output and "AKIADOCTORTEST" not in result.output

    result = runner.invoke(app, ["setup", "--pool", pool])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["setup", "--pool", pool])
    assert "exists" in again.output  # idempotent
    checks = _by_name(run_checks(pool=pool))
    assert checks["work pool"].status == "warn" and "0 online" in checks["work pool"].detail
    assert checks["crash detection"].status == "ok" and "540 s" in checks["crash detection"].detail  # 3 x 180 s

    from prefect.client.orchestration import get_client

    from flows.recovery import read_zombie_automation

    automation = read_zombie_automation()
    with get_client(sync_client=True) as client:  # a window shorter than this process's heartbeat period
        client.delete_automation(automation.id)
    runner.invoke(app, ["setup", "--pool", pool, "--heartbeat-s", "30"])
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 120}):
        crash = _by_name(run_checks(pool=pool))["crash detection"]
    assert crash.status == "fail" and "every 120 s" in crash.detail and "90 s" in crash.detail
    with get_client(sync_client=True) as client:
        client.delete_automation(read_zombie_automation().id)


def test_doctor_reads_a_postgresql_lineage_and_never_prints_its_password(postgres_url, prefect_server, tmp_path):
    checks = _by_name(run_checks(pool="any", settings=PureSoundSettings(database_url=postgres_url,
                                                                         state_dir=tmp_path / "state")))
    assert checks["lineage database"].status == "ok" and "postgresql" in checks["lineage database"].detail
    assert "empty" in checks["lineage database"].detail
    assert "s3cr3t" not in masked_url("postgresql+psycopg://puresound:s3cr3t@db.example/lineage")
    broken = PureSoundSettings(database_url="postgresql+psycopg://u:s3cr3t@127.0.0.1:1/none", state_dir=tmp_path)
    lineage = _by_name(run_checks(pool="any", settings=broken))["lineage database"]
    assert lineage.status == "fail" and "cannot connect" in lineage.detail and "s3cr3t" not in lineage.detail
