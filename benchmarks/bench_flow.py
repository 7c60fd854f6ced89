"""Prefect overhead and re-run cost of a preset flow, against a running Prefect server.

Bars (issues 3 and 8):
* the flow path is at most 10 % slower than the same core calls in a plain loop (both with
  one worker process per core: inspect in an isolated child, plan, render, store);
* running the same batch again (cached) takes <= 5 % of the first run's time;
* temporary-server start-up is reported separately.

Run: ``python benchmarks/bench_flow.py [FILES_OR_FOLDERS...]`` (default: ../shared/corpus/music).
It starts ``prefect server start`` on 127.0.0.1:4299 with a throw-away PREFECT_HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORT = 4299

PLAIN_LOOP = r'''
import json, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from puresound_core.storage import list_local_files
from puresound_core.isolation import inspect_isolated
from puresound_core.lineage import LineageStore
from puresound_core.presets import BUILTIN_PRESETS
from puresound_core.policy import plan_rules, render_preset, rendition_plans, source_rules
from puresound_core.storage import LocalStorage, sha256_file
preset = BUILTIN_PRESETS["podcast"]
out, state, sources = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
def one(path):
    store = LineageStore(f"sqlite:///{state / 'lineage.sqlite'}")
    storage = LocalStorage(out)
    sha = sha256_file(path)
    inspection = inspect_isolated(path, preset.validation)
    if not inspection.validation.passed or source_rules(preset, inspection.validation.probe):
        return
    plans = rendition_plans(preset, path, inspection.analysis)
    if plan_rules(preset, plans):
        return
    works = [state / sha / f"{r.name}.{r.encoder.extension}" for r in preset.renditions]
    for result, work in zip(render_preset(preset, path, inspection.analysis, plans, works), works):
        storage.put_file(result.path, f"podcast/{sha[:8]}/{work.name}")
    store.record_source(sha256=sha, uri=Path(path).resolve().as_uri(), size_bytes=Path(path).stat().st_size, probe={})
t0 = time.perf_counter()
with ProcessPoolExecutor(os.cpu_count()) as pool:
    list(pool.map(one, list_local_files(sources)))
print(json.dumps({"seconds": time.perf_counter() - t0}))
'''

FLOW_RUN = r'''
import json, sys, time
from flows.presets import RunRequest, preset_flow
from puresound_core.presets import BUILTIN_PRESETS
flow_fn = preset_flow(BUILTIN_PRESETS["podcast"])  # PURESOUND_WORKERS: the core count
t0 = time.perf_counter()
state = flow_fn(request=RunRequest(sources=sys.argv[2:], output_dir=sys.argv[1]), return_state=True)
print(json.dumps({"seconds": time.perf_counter() - t0, "state": state.type.value}))
'''

TRIVIAL_FLOW = r'''
import json, time
t0 = time.perf_counter()
from prefect import flow
@flow
def noop():
    return 1
noop()
print(json.dumps({"seconds": time.perf_counter() - t0}))
'''


def _child(code: str, args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         cwd=HERE.parent)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sources = sys.argv[1:] or [str(HERE.parents[1] / "shared" / "corpus" / "music")]
    root = Path(tempfile.mkdtemp(prefix="puresound-bench-"))
    base_env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_HOME": str(root / "prefect-home")}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(PORT)], env=base_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        server_start_s = time.perf_counter() - t0
        served = {**base_env, "PREFECT_API_URL": f"http://127.0.0.1:{PORT}/api",
                  "PURESOUND_STATE_DIR": str(root / "state-flow")}
        (root / "state-plain").mkdir()
        plain = _child(PLAIN_LOOP, [str(root / "out-plain"), str(root / "state-plain"), *sources],
                       {**base_env, "PURESOUND_STATE_DIR": str(root / "state-plain")})
        first = _child(FLOW_RUN, [str(root / "out-flow"), *sources], served)
        second = _child(FLOW_RUN, [str(root / "out-flow"), *sources], served)
        ephemeral_env = {k: v for k, v in base_env.items() if k != "PREFECT_API_URL"}
        ephemeral_env["PREFECT_HOME"] = str(root / "prefect-home-ephemeral")
        temporary = _child(TRIVIAL_FLOW, [], ephemeral_env)
        served_trivial = _child(TRIVIAL_FLOW, [], served)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    print(f"sources: {', '.join(sources)}; preset podcast; 2 workers")
    print(f"{'path':44} {'seconds':>8} {'ratio':>8}  bar")
    print(f"{'plain loop of core calls':44} {plain['seconds']:8.1f} {1.0:8.3f}")
    print(f"{'flow, first run (running server)':44} {first['seconds']:8.1f} {first['seconds'] / plain['seconds']:8.3f}  <= 1.10")
    print(f"{'flow, same batch again (cached)':44} {second['seconds']:8.1f} {second['seconds'] / first['seconds']:8.3f}  <= 0.05 of first run")
    print(f"{'prefect server start (to /api/health)':44} {server_start_s:8.1f}")
    print(f"{'trivial flow, temporary server (cold process)':44} {temporary['seconds']:8.1f}")
    print(f"{'trivial flow, running server (cold process)':44} {served_trivial['seconds']:8.1f}")


if __name__ == "__main__":
    main()
