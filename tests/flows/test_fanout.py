"""Fan-out on the work pool: a nightly ingest split into child runs that two real workers share.

Real components: a Prefect server (on Debian's PostgreSQL where it is installed, as in
production; else the session's SQLite harness server), two ``prefect worker start`` processes
on one process work pool, lineage on a real PostgreSQL server (``pgserver``); the output folder, work area and
Prefect result storage are one shared folder, as two machines mounting it would have.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from uuid import uuid4

import psutil
import pytest
from sqlalchemy import text

from flows.fanout import chunks, idempotency_key
from flows.models import SourceRef
from puresound_core.presets import BUILTIN_PRESETS
from tests.conftest import pink_noise, write_wav
from tests.servers import wait_for


def test_chunks_keep_order_and_keys_name_the_batch_preset_and_sources():
    refs = [SourceRef(uri=f"s3://in/{n}.wav") for n in range(5)]
    parts = chunks(refs, 2)
    assert [[r.uri[-5:] for r in part] for part in parts] == [["0.wav", "1.wav"], ["2.wav", "3.wav"], ["4.wav"]]
    podcast = BUILTIN_PRESETS["podcast"]
    key = idempotency_key("run-a", podcast, parts[0])
    assert key == idempotency_key("run-a", podcast, parts[0])  # a retried batch finds its child
    assert key != idempotency_key("run-b", podcast, parts[0]) and key != idempotency_key("run-a", podcast, parts[1])
    with pytest.raises(ValueError):
        chunks(refs, 0)


def _start_worker(name: str, pool: str, env: dict, log: Path) -> subprocess.Popen:
    prefect = Path(sys.executable).with_name("prefect")
    return subprocess.Popen([str(prefect), "worker", "start", "--pool", pool, "--limit", "2", "--name", name],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _victim(store, batch_id) -> tuple[str, str] | None:
    """(worker, child flow run id) of a part run, on a worker not holding the batch, with 1+ rendition published."""
    with store.engine.connect() as connection:
        parent = connection.execute(text("SELECT worker FROM runs WHERE flow_run_id = :id"),
                                    {"id": str(batch_id)}).first()
        if parent is None:
            return None
        row = connection.execute(text(
            "SELECT r.worker, r.flow_run_id FROM runs r JOIN renditions d ON d.run_id = r.id "
            "WHERE r.status = 'running' AND r.worker <> :parent GROUP BY r.worker, r.flow_run_id"),
            {"parent": parent.worker}).first()
    return (row.worker.split("@")[0], row.flow_run_id) if row else None


def _task_runs_once_recorded(client, flow_run_id: str, timeout_s: float = 60) -> list:
    """The flow run's task runs, once a cached render is among them or after ``timeout_s``.

    Task run states reach the server as events, recorded asynchronously: right after the
    flow run is final, the retried attempt's task runs may not be listed yet.
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read():
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    def with_cached_render():
        runs = read()
        return runs if any(t.name.startswith("render") and t.state and t.state.name == "Cached" for t in runs) else None

    try:
        return wait_for(with_cached_render, timeout_s, "a cached render in the retried part")
    except TimeoutError:
        return read()  # the assertion on it names what there is


@pytest.mark.slow
def test_a_nightly_ingest_fans_out_to_two_workers_and_survives_one_killed(tmp_path, prefect_api_on_postgres,
                                                                          postgres_url):
    """Two real workers share a 12-file nightly ingest; one is SIGKILLed with its run mid-file.

    The killed part run is marked Crashed by the zombie automation (heartbeats every 30 s, 60 s
    without one), rescheduled by its batch run and finished by the other worker, re-using the
    render finished before the kill; every rendition is recorded once and no partial file is left.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from deployments.serve import build_deployments
    from flows.recovery import ensure_zombie_automation
    from puresound.settings import PureSoundSettings
    from puresound_core.lineage import LineageStore

    incoming, out, shared = tmp_path / "incoming", tmp_path / "published", tmp_path / "shared-state"
    (incoming / "podcast").mkdir(parents=True)
    for n in range(12):
        write_wav(incoming / "podcast" / f"episode-{n:02d}.wav",
                  pink_noise(12.0 + 0.25 * n, 44100, level_dbfs=-30.0 + n, seed=n), 44100)
    pool = f"puresound-test-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    automation_id, _, _ = ensure_zombie_automation(within_s=60)
    settings = PureSoundSettings(output_dir=out, nightly_source_root=str(incoming))
    for deployment in build_deployments({"podcast": BUILTIN_PRESETS["podcast"]}, settings):
        deployment.apply(work_pool_name=pool)

    # What both machines share: the output folder, the lineage database, the work area and
    # Prefect's result storage (a shared folder; S3 or NFS in production).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PURESOUND_")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30", PREFECT_LOCAL_STORAGE_PATH=str(shared / "prefect-results"),
               PURESOUND_DATABASE_URL=postgres_url, PURESOUND_STATE_DIR=str(shared), PURESOUND_TASK_RUNNER="thread",
               PURESOUND_WORKERS="1", PURESOUND_FANOUT_MIN_FILES="4", PURESOUND_FANOUT_FILES_PER_RUN="2",
               PURESOUND_FANOUT_PENDING_TIMEOUT_S="30")
    workers = {f"worker-{i}": _start_worker(f"worker-{i}", pool, env, tmp_path / f"worker-{i}.log") for i in range(2)}
    store = LineageStore(postgres_url)
    parameters = {"source": str(incoming / "podcast"), "output_dir": str(out)}
    try:
        batch = run_deployment("ingest-podcast/nightly", timeout=0, parameters=parameters)
        victim_worker, victim_run = wait_for(lambda: _victim(store, batch.id), 300, "a part run to publish a file")
        with get_client(sync_client=True) as client:
            # A lost machine: the worker and every flow run process it started (each in a session of its own).
            doomed = [workers[victim_worker].pid, *(c.pid for c in psutil.Process(workers[victim_worker].pid)
                                                  .children(recursive=True))]
            for pid in doomed:
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            crashed = wait_for(lambda: client.read_flow_run(victim_run).state.is_crashed() or
                                client.read_flow_run(victim_run).run_count > 1, 240, "the killed run to be Crashed")
            crash_detected_s = time.monotonic() - killed_at
            final = wait_for(lambda: (r := client.read_flow_run(batch.id)).state.is_final() and r, 400,
                              "the batch run to finish")
            states = [s.type.value for s in client.read_flow_run_states(victim_run)]
            task_runs = _task_runs_once_recorded(client, victim_run)
            cached = [t.name for t in task_runs if t.state and t.state.name == "Cached"]
            task_story = [(t.name, t.state.name if t.state else None, t.run_count, str(t.start_time))
                          for t in task_runs]
        logs = "".join((tmp_path / f"{name}.log").read_text(errors="replace")[-3000:] for name in workers)
        assert final.state.is_completed(), f"{final.state}\n{logs}"
        again = run_deployment("ingest-podcast/nightly", timeout=600, poll_interval=1, parameters=parameters)
        assert again.state.is_completed(), again.state
    finally:
        for worker in workers.values():
            _stop(worker)
        with get_client(sync_client=True) as client:  # the session's other runs send no heartbeat this often
            client.delete_automation(automation_id)

    print(f"crash detected {crash_detected_s:.0f} s after the kill; cached task runs in the retried part: {cached}")
    assert crashed and "CRASHED" in states and states[-1] == "COMPLETED"
    assert any(name.startswith("render") for name in cached), task_story  # a finished file is not rendered again
    first = json.loads((out / "podcast" / "runs" / f"{batch.id}.json").read_text())
    assert first["counts"]["published"] == 12 and len(first["sources"]) == 12
    assert all(r["verified"] for s in first["sources"] for r in s["renditions"])
    latest = json.loads((out / "podcast" / "report.json").read_text())
    assert latest["flow_run_id"] == str(again.id) and latest["counts"]["skipped"] == 12  # shared lineage: all known
    with store.engine.connect() as connection:
        runs = connection.execute(text("SELECT flow_run_id, worker, status FROM runs ORDER BY id")).all()
        renditions = connection.execute(text("SELECT uri, verdict FROM renditions")).all()
    assert sorted(r.status for r in runs if r.flow_run_id == victim_run) == ["completed", "crashed"]
    children = [r for r in runs if r.flow_run_id not in (str(batch.id), str(again.id))]
    per_worker = Counter(r.worker.split("@")[0] for r in children)
    assert set(per_worker) == {"worker-0", "worker-1"}, per_worker  # both took a share
    assert all(r.status in ("completed", "crashed") for r in runs), runs
    assert len(renditions) == 24 == len({r.uri for r in renditions})  # one row per rendition
    assert all(r.verdict == "published" for r in renditions)
    leftovers = [p for p in [*out.rglob(".*"), *shared.rglob(".*")] if p.is_file()
                 and (p.name.endswith(".part") or ".attempt" in p.name)]
    assert leftovers == []


@pytest.mark.slow
def test_a_batch_no_worker_can_take_parts_of_runs_them_itself(tmp_path, prefect_server):
    """One worker with ``--limit 1`` is busy with the batch run itself: its parts would wait forever."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from deployments.serve import build_deployments
    from puresound.settings import PureSoundSettings

    incoming, out = tmp_path / "incoming", tmp_path / "published"
    (incoming / "voice").mkdir(parents=True)
    for n in range(4):
        write_wav(incoming / "voice" / f"take-{n}.wav", pink_noise(2.0, 48000, level_dbfs=-28.0 + n, seed=n), 48000)
    pool = f"puresound-test-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    for deployment in build_deployments({"voice": BUILTIN_PRESETS["voice"]}, PureSoundSettings(output_dir=str(out))):
        deployment.apply(work_pool_name=pool)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PURESOUND_")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_WORKER_QUERY_SECONDS="1",
               PURESOUND_STATE_DIR=str(tmp_path / "state"), PURESOUND_TASK_RUNNER="thread",
               PURESOUND_FANOUT_MIN_FILES="4", PURESOUND_FANOUT_FILES_PER_RUN="2",
               PURESOUND_FANOUT_START_TIMEOUT_S="8")
    prefect = Path(sys.executable).with_name("prefect")
    worker = subprocess.Popen([str(prefect), "worker", "start", "--pool", pool, "--limit", "1"], env=env,
                              stdout=(tmp_path / "worker.log").open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        batch = run_deployment("ingest-voice/nightly", timeout=300, poll_interval=1,
                               parameters={"source": str(incoming / "voice"), "output_dir": str(out)})
    finally:
        _stop(worker)
    assert batch.state.is_completed(), f"{batch.state}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    report = json.loads((out / "voice" / "report.json").read_text())
    assert report["counts"]["published"] == 4
    with get_client(sync_client=True) as client:
        parts = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"batch:{batch.id}"])))
    assert len(parts) == 2 and all(p.state.is_cancelled() for p in parts)
