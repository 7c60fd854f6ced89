"""``PURESOUND_TASK_RUNNER=dask``: a batch's files on a Dask cluster (prefect-dask), local or at an address."""

from __future__ import annotations

import sys

import pytest

from flows.runner import DASK_WORKER_CONFIG, batch_task_runner
from puresound_core.errors import PureSoundError
from tests.conftest import pink_noise, write_wav
from tests.flows.helpers import batch_report, run_cli

distributed = pytest.importorskip("distributed")
pytest.importorskip("prefect_dask")


def _sources(folder, count: int):
    folder.mkdir()
    for i in range(count):
        write_wav(folder / f"talk{i}.wav", pink_noise(4, 44100, level_dbfs=-24, seed=i), 44100)
    return folder


def test_a_missing_prefect_dask_is_named_with_its_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # import fails as if not installed
    with pytest.raises(PureSoundError, match=r"pip install 'puresound\[dask\]'"):
        batch_task_runner("dask", workers=2, files=3)


def test_a_batch_runs_on_a_local_dask_cluster(puresound_env, monkeypatch):
    src = _sources(puresound_env / "in", 3)
    out = puresound_env / "out"
    monkeypatch.setenv("PURESOUND_TASK_RUNNER", "dask")
    monkeypatch.setenv("PURESOUND_WORKERS", "2")
    import flows.presets

    made = []
    monkeypatch.setattr(flows.presets, "batch_task_runner",
                        lambda *a, **k: made.append(batch_task_runner(*a, **k)) or made[-1])
    assert run_cli("voice", str(src), "--output", str(out)).exit_code == 0
    assert [type(r).__name__ for r in made] == ["DaskTaskRunner"]
    assert made[0].cluster_kwargs["n_workers"] == 2
    batch = batch_report(out, "voice")
    assert batch["counts"]["published"] == 3, batch["sources"]
    assert all(r["verified"] for s in batch["sources"] for r in s["renditions"])


def test_a_batch_runs_on_the_dask_cluster_at_an_address(puresound_env, monkeypatch):
    import dask
    from prefect.settings import PREFECT_API_URL

    src = _sources(puresound_env / "in", 3)
    out = puresound_env / "out"
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the cluster's workers report to this server
    with (dask.config.set(DASK_WORKER_CONFIG),
          distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          distributed.Client(cluster) as client):
        monkeypatch.setenv("PURESOUND_TASK_RUNNER", "dask")
        monkeypatch.setenv("PURESOUND_DASK_ADDRESS", cluster.scheduler_address)
        assert run_cli("voice", str(src), "--output", str(out)).exit_code == 0
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    batch = batch_report(out, "voice")
    assert batch["counts"]["published"] == 3, batch["sources"]
    assert sum(executed.values()) >= 3, executed  # every file ran on the cluster's workers


def test_doctor_fails_a_dask_cluster_whose_workers_cannot_start_the_decode_child(prefect_server, tmp_path):
    import dask

    from puresound.doctor import run_checks
    from puresound.settings import PureSoundSettings

    def task_runner_check(address: str | None):
        settings = PureSoundSettings(task_runner="dask", dask_address=address, state_dir=tmp_path)
        return next(c for c in run_checks(pool="puresound-test", settings=settings) if c.name == "task runner")

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        check = task_runner_check(cluster.scheduler_address)  # Dask's default: daemonic workers
    assert check.status == "fail" and "DASK_DISTRIBUTED__WORKER__DAEMON=False" in check.detail, check
    with (dask.config.set(DASK_WORKER_CONFIG),
          distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster):
        check = task_runner_check(cluster.scheduler_address)
    assert check.status == "ok" and "1 worker(s)" in check.detail, check
    check = task_runner_check("tcp://127.0.0.1:9")  # nothing listens there
    assert check.status == "fail" and "does not answer" in check.detail, check


@pytest.mark.slow
def test_sigterm_stops_a_dask_batch_without_running_its_queue(puresound_env, prefect_server):
    """Dask workers never see the stop flag: the batch cancels what they have not started and stops in seconds."""
    import json
    import os
    import signal
    import subprocess
    import time

    from prefect.settings import PREFECT_API_URL

    src = puresound_env / "in"
    src.mkdir()
    for i in range(4):  # 3 min each: each render takes far longer than the stop may
        write_wav(src / f"long{i}.wav", pink_noise(180, 44100, level_dbfs=-24, seed=i), 44100)
    out, renders = puresound_env / "out", puresound_env / "state" / "renders"
    # Prefect results of this test only: the harness sets its storage path in-process, so a CLI run
    # would otherwise use ~/.prefect/storage and find the renders of an earlier run of this test.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PURESOUND_WORKERS": "2",
           "PURESOUND_TASK_RUNNER": "dask", "PURESOUND_STATE_DIR": str(puresound_env / "state"),
           "PREFECT_LOCAL_STORAGE_PATH": str(puresound_env / "prefect-results")}
    proc = subprocess.Popen([sys.executable, "-m", "puresound.cli", "run", "podcast", str(src), "--output", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not list(renders.rglob("*.attempt*")) and time.monotonic() < deadline:  # an encode has started
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
        time.sleep(0.2)
    assert list(renders.rglob("*.attempt*")), "no render started within 300 s"
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 1, output
    batch = json.loads((out / "podcast" / "report.json").read_text())
    assert batch["stopped"] and all(s["verdict"] == "failed" and "SIGTERM" in s["reason"] for s in batch["sources"])
    started = {p.name for p in renders.glob("*/*")}  # renders/<sha[:2]>/<sha>: one per source whose render began
    assert len(started) <= 2, started  # the 2 queued files were cancelled, never rendered
