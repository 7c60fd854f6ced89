"""Issue 8's re-run and worker-scaling bars alone, with the CPU each side used.

Run by hand, on an otherwise idle machine::

    .venv/bin/python benchmarks/bench_rerun.py [--files N]

Against one temporary Prefect server it times (d) ``puresound run podcast`` over the corpus'
N longest music and speech files (cold caches), (e) the same batch again into a new output
folder and (e') into the same one, then (f) the one-rendition MP3 preset of
``bench_peers.py`` over 10 three-minute speech pieces with 1 and with 2 workers, and with 1
worker pinned to one core (``taskset -c 0``): one worker's file still runs its encoder,
reader and verification on threads that FFmpeg lets run in parallel, so unpinned it uses
more than one core. Beside each wall time: the CPU seconds of the ``puresound`` process tree
and of the Prefect server. ``--workers-only`` skips (d) and (e).

What two cores can give at all, on the same 10 pieces in 1 and 2 processes of a plain
``ProcessPoolExecutor`` (the server idle): (g) the core calls of that preset with no Prefect
(inspect in an isolated child, plan, render + verify) and (h) the bare PyAV transcode of
``bench_peers.py``, in spawned processes with one native-library thread each, as Pure Sound's
workers run. Their 2-vs-1 ratios are this machine's ceiling for (f)'s.
``bench_peers.py`` runs the same (d), (e) and (f) beside the peers; this one is quicker to
repeat while working on them.

Bars (issue 8): (e) <= 5 % of (d); 2 workers >= 1.8x the throughput of 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers as peers  # noqa: E402


def _server_cpu_s() -> float:
    return sum(sum(child.cpu_times()[:2]) for child in psutil.Process().children(recursive=True))


def _timed(fn) -> tuple[float, float, float]:
    """(wall s, CPU s of finished child processes, CPU s of the still-running server) of ``fn()``."""
    before, server = resource.getrusage(resource.RUSAGE_CHILDREN), _server_cpu_s()
    started = time.perf_counter()
    fn()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cli, _server_cpu_s() - server


def core_calls(job: tuple[str, str]) -> list[str]:
    """The per-file core calls of the MP3 preset with no Prefect: inspect (isolated), plan, render + verify."""
    from puresound_core.isolation import inspect_isolated
    from puresound_core.policy import render_preset, rendition_plans
    from puresound_core.presets import load_preset_file

    source, out_dir = job
    preset = load_preset_file(Path(out_dir).parent / "presets" / "mp3only.yaml")
    inspection = inspect_isolated(source, preset.validation)
    plans = rendition_plans(preset, source, inspection.analysis)
    outs = [Path(out_dir) / f"{Path(source).stem}.{r.encoder.extension}" for r in preset.renditions]
    results = render_preset(preset, source, inspection.analysis, plans, outs)
    assert all(r.verification.passed for r in results), source
    return [str(o) for o in outs]


def pool_run(fn, files: list[Path], out_dir: Path, workers: int) -> None:
    """``fn`` over ``files`` in ``workers`` spawned processes with one native-library thread each, as
    ``flows.runner`` starts Pure Sound's workers (else two BLAS pools oversubscribe two cores)."""
    from flows.runner import WORKER_THREAD_VARIABLES

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = {name: os.environ.get(name) for name in WORKER_THREAD_VARIABLES}
    os.environ.update({name: "1" for name in WORKER_THREAD_VARIABLES})
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(fn, [(str(f), str(out_dir)) for f in files]))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16, help="the N longest corpus files for (d) and (e)")
    parser.add_argument("--workers-only", action="store_true", help="skip (d) and (e)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="puresound-rerun-"))
    (work / "presets").mkdir()
    (work / "presets" / "mp3only.yaml").write_text(peers.MP3_PRESET)
    files = peers.corpus_files(args.files)
    ten = peers.speech_chunks(work / "chunks", count=10, seconds=180)
    from puresound.embedded import embedded_server

    rows: dict[str, tuple[str, float, float, float]] = {}
    with embedded_server(startup_timeout_s=180) as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PURESOUND_PRESETS_DIR": str(work / "presets")}
        state = work / "state-d"
        for key, name, out in (("d", "(d) podcast, cold", "out-d"), ("e", "(e) podcast again, new output folder",
                                                                     "out-e"),
                               ("e2", "(e') podcast again, same output folder", "out-d")):
            if not args.workers_only:
                rows[key] = (name, *_timed(lambda out=out: peers.puresound_run("podcast", files, state, work / out,
                                                                                env, 2)))
        for key, workers, cores in (("f1", 1, None), ("f2", 2, None), ("f1-pinned", 1, "0")):
            pinned = ", pinned to 1 core" if cores else ""
            rows[key] = (f"(f) MP3 preset, 10 x 3 min, {workers} worker(s){pinned}", *_timed(
                lambda w=workers, c=cores, k=key: peers.puresound_run("mp3only", ten, work / f"state-{k}",
                                                                      work / f"out-{k}", env, w, cores=c)))
        for tag, label, fn in (("g", "core calls, no Prefect", core_calls), ("h", "bare transcode",
                                                                              peers.bare_transcode)):
            for workers in (1, 2):
                rows[f"{tag}{workers}"] = (f"({tag}) {label}, {workers} process(es)", *_timed(
                    lambda w=workers, fn=fn, tag=tag: pool_run(fn, ten, work / f"{tag}{w}", w)))
    print(f"\n{len(files)} files for (d)/(e); work in {work}")
    print(f"{'run':52} {'wall s':>8} {'CLI tree CPU s':>15} {'server CPU s':>13}")
    for name, wall, cli, server in rows.values():
        print(f"{name:52} {wall:8.1f} {cli:15.1f} {server:13.1f}")
    wall = {key: row[1] for key, row in rows.items()}
    if "d" in wall:
        print(f"\n(e) / (d) = {100 * wall['e'] / wall['d']:.1f} % (bar <= 5 %); "
              f"(e') / (d) = {100 * wall['e2'] / wall['d']:.1f} %")
    print(f"2 vs 1 worker throughput = {wall['f1'] / wall['f2']:.2f}x, against 1 worker pinned to one core "
          f"{wall['f1-pinned'] / wall['f2']:.2f}x (bar >= 1.8)")
    print(f"this machine's ceiling: core calls {wall['g1'] / wall['g2']:.2f}x, "
          f"bare transcode {wall['h1'] / wall['h2']:.2f}x in 2 vs 1 processes")


if __name__ == "__main__":
    main()
