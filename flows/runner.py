"""How the files of a batch run: in worker processes (every core), or threads of the flow's process.

Prefect's :class:`~prefect.task_runners.ProcessPoolTaskRunner` keeps task states, caching,
retries and logs; each worker process runs the whole per-file pipeline
(:func:`flows.pipeline.process_source`), so pure-Python work no longer serialises on one
GIL. ``PURESOUND_TASK_RUNNER=thread`` keeps everything in the flow's process (one file, or
one worker, always does: starting a process costs ~2 s of imports).

A stop (SIGTERM) reaches every worker through one shared event
(:func:`puresound_core.cancel.share_stop`); a worker whose parent dies is stopped by the
kernel (Linux ``PR_SET_PDEATHSIG``), so a killed run leaves no process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from puresound_core.cancel import request_stop, share_stop

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def init_worker(stop_event) -> None:  # pragma: no cover - runs in each worker process
    """Initializer of every worker process: share the batch's stop event, stop on SIGTERM, die with the parent.

    Parameters
    ----------
    stop_event : multiprocessing.synchronize.Event
    """
    share_stop(stop_event)
    signal.signal(signal.SIGTERM, lambda *_: request_stop("SIGTERM"))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def batch_task_runner(kind: str, workers: int, files: int) -> TaskRunner:
    """The task runner for a batch (worker processes share one stop event with this process).

    Parameters
    ----------
    kind : {"process", "thread"}
        ``PURESOUND_TASK_RUNNER``.
    workers : int
        Files at once (``PURESOUND_WORKERS``, ``--workers``).
    files : int
        Files in the batch: never more workers than files.

    Returns
    -------
    TaskRunner
        Not started (use it as a context manager). For processes, a stop requested here
        (:func:`puresound_core.cancel.request_stop`) reaches every worker.
    """
    workers = max(1, min(workers, files))
    if kind == "process" and workers > 1:
        event = multiprocessing.get_context("spawn").Event()
        share_stop(event)
        return ProcessPoolTaskRunner(max_workers=workers, initializer=init_worker, initargs=(event,))
    return ThreadPoolTaskRunner(max_workers=workers)


#: Thread pools of native libraries, one thread each in worker processes: with a pool per
#: worker, N workers on N cores oversubscribe them (measured: 2 workers on 2 cores took 143 s
#: of CPU for what 1 worker did in 100 s; with these at 1, 74 s).
WORKER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextlib.contextmanager
def worker_environment(runner: TaskRunner) -> Iterator[None]:
    """While a process pool starts its workers: one native-library thread each (unless the user set them).

    Worker processes inherit the environment when they are spawned; the parent's own
    libraries are already initialised and unaffected.

    Parameters
    ----------
    runner : TaskRunner
        Nothing changes for a thread pool.
    """
    if not isinstance(runner, ProcessPoolTaskRunner):
        yield
        return
    added = [name for name in WORKER_THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def content_lock(work_dir: str, key: str) -> Iterator[None]:
    """Hold an exclusive lock on ``key`` across the threads and processes sharing ``work_dir``.

    Identical inputs in one batch render once: the second waits, then finds the cached
    render. ``flock`` on a file in the work area: released by the kernel if the holder dies.

    Parameters
    ----------
    work_dir : str
    key : str
        Content hash + preset fingerprint.
    """
    folder = Path(work_dir) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
