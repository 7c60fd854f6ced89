"""One nightly ingest of 12 files on one worker, then on two: fan-out over a real work pool.

Real components: a PostgreSQL server (Debian's ``postgresql`` package: ``apt-get install
postgresql``; it holds both the Prefect server's database and the lineage), ``prefect server
start`` on it, a process work pool, ``prefect worker start`` processes (``--limit 3``: the
batch run holds one slot, two parts run beside it). Each run gets a fresh lineage database,
output folder and work area. The batch is 12 two-minute pieces of the corpus' longest speech
file (a balanced batch), each part run takes 2 files one at a time (``PURESOUND_WORKERS=1``).

Prints: wall time of each run, files per worker, renditions verified by the pipeline, and
lineage rows against renditions. Both workers are on this machine, so two workers share its
cores: the table shows the fan-out's overhead and spread, not a second machine's speed-up.

    .venv/bin/python benchmarks/bench_fanout.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_peers import speech_chunks  # noqa: E402
from tests.servers import psql, start_postgres, start_prefect_server, stop, wait_for  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def run_once(workers: int, files: Path, work: Path, sock: str, api: str, pool: str) -> dict:
    """One nightly ingest of ``files`` with ``workers`` worker processes; returns the measurements."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from sqlalchemy import create_engine, text

    database = f"lineage_{workers}"
    psql(sock, f"DROP DATABASE IF EXISTS {database}")
    psql(sock, f"CREATE DATABASE {database}")
    lineage_url = f"postgresql+psycopg://postgres@/{database}?host={sock}"
    out, state = work / f"out-{workers}", work / f"state-{workers}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PURESOUND_")}
    env.update(PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
               PREFECT_LOCAL_STORAGE_PATH=str(state / "prefect-results"), PURESOUND_DATABASE_URL=lineage_url,
               PURESOUND_STATE_DIR=str(state), PURESOUND_WORKERS="1", PURESOUND_TASK_RUNNER="thread")
    procs = [subprocess.Popen([str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", "3",
                               "--name", f"worker-{i}"], env=env, stdout=(work / f"worker-{workers}-{i}.log").open("wb"),
                              stderr=subprocess.STDOUT, start_new_session=True) for i in range(workers)]
    try:
        with get_client(sync_client=True) as client:
            wait_for(lambda: sum(w.status.value == "ONLINE" for w in client.read_workers_for_work_pool(pool))
                     >= workers, 120, "the workers")
        started = time.perf_counter()
        batch = run_deployment("ingest-podcast/nightly", timeout=3600, poll_interval=1,
                               parameters={"source": str(files), "output_dir": str(out)})
        seconds = time.perf_counter() - started
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=60)
    report = json.loads((out / "podcast" / "runs" / f"{batch.id}.json").read_text())
    renditions = [r for s in report["sources"] for r in s["renditions"]]
    engine = create_engine(lineage_url)
    with engine.connect() as connection:
        runs = connection.execute(text("SELECT id, flow_run_id, worker FROM runs")).all()
        rows = connection.execute(text("SELECT run_id FROM renditions")).all()
    engine.dispose()
    worker_of_run = {r.id: r.worker.split("@")[0] for r in runs}
    files_per_worker = Counter(worker_of_run[r.run_id] for r in rows)
    return {"workers": workers, "state": batch.state.type.value, "seconds": seconds,
            "published": report["counts"]["published"], "files": len(report["sources"]),
            "verified": sum(r["verified"] for r in renditions), "renditions": len(renditions),
            "lineage_rows": len(rows), "distinct_uris": len({r["uri"] for r in renditions}),
            "per_worker": {w: n // 2 for w, n in sorted(files_per_worker.items())}}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    os.chmod(work, 0o755)
    sock, postgres = start_postgres(work / "pg")
    prefect_server = None
    try:
        api, prefect_server = start_prefect_server(sock, work)
        os.environ["PREFECT_API_URL"] = api
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate

        from deployments.serve import build_deployments
        from puresound.settings import PureSoundSettings
        from puresound_core.presets import BUILTIN_PRESETS

        files = work / "incoming" / "podcast"
        speech_chunks(files, count=12, seconds=120)
        pool = "bench-fanout"
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        for deployment in build_deployments({"podcast": BUILTIN_PRESETS["podcast"]},
                                            PureSoundSettings(output_dir=str(work / "out"))):
            deployment.apply(work_pool_name=pool)
        results = [run_once(n, files, work, sock, api, pool) for n in (1, 2)]
    finally:
        if prefect_server is not None:
            stop(prefect_server)
        stop(postgres, signal.SIGINT)
    print(f"\n12 files, {12 * 2} min of speech, podcast preset; Prefect server and lineage on PostgreSQL\n")
    print("| workers | state | seconds | files published | renditions verified | lineage rows / renditions "
          "| files per worker |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['workers']} | {r['state']} | {r['seconds']:.1f} | {r['published']} / {r['files']} | "
              f"{r['verified']} / {r['renditions']} | {r['lineage_rows']} / {r['distinct_uris']} | "
              f"{', '.join(f'{w}: {n}' for w, n in r['per_worker'].items())} |")
    print(f"\n2 workers / 1 worker wall time: {results[1]['seconds'] / results[0]['seconds']:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
