"""How the files of a batch run: in worker processes (every core), threads, or on a Dask cluster.

Prefect's :class:`~prefect.task_runners.ProcessPoolTaskRunner` keeps task states, caching,
retries and logs; each worker process runs the whole per-file pipeline
(:func:`flows.pipeline.process_source`), so pure-Python work no longer serialises on one
GIL. ``PURESOUND_TASK_RUNNER=thread`` keeps everything in the flow's process (one file, or
one worker, always does: starting a process costs ~2 s of imports).
``PURESOUND_TASK_RUNNER=dask`` hands the files to ``prefect-dask``'s ``DaskTaskRunner``:
a local cluster of worker processes, or the existing cluster at ``PURESOUND_DASK_ADDRESS``
whose workers may be on other machines (they need this package, the same settings and the
same shared output and work area).

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
import sys
from collections.abc import Iterator
from pathlib import Path

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from puresound_core.cancel import request_stop, share_stop
from puresound_core.errors import PureSoundError

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


def batch_task_runner(kind: str, workers: int, files: int, dask_address: str | None = None) -> TaskRunner:
    """The task runner for a batch (worker processes share one stop event with this process).

    Parameters
    ----------
    kind : {"process", "thread", "dask"}
        ``PURESOUND_TASK_RUNNER``.
    workers : int
        Files at once (``PURESOUND_WORKERS``, ``--workers``); for ``dask`` without an
        address, the local cluster's worker processes.
    files : int
        Files in the batch: never more workers than files.
    dask_address : str or None
        ``PURESOUND_DASK_ADDRESS``: the scheduler of an existing Dask cluster (always used
        when set, whatever the batch size).

    Returns
    -------
    TaskRunner
        Not started (use it as a context manager). For processes, a stop requested here
        (:func:`puresound_core.cancel.request_stop`) reaches every worker. Dask workers do
        not see it: the batch cancels the files not started, and the files running die with
        a local cluster (the next render sweeps what they left in the work area) or run to
        their end on a remote one.

    Raises
    ------
    PureSoundError
        ``kind="dask"`` without ``prefect-dask`` installed.
    """
    workers = max(1, min(workers, files))
    if kind == "dask" and (dask_address or workers > 1):
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:
            raise PureSoundError("PURESOUND_TASK_RUNNER=dask needs prefect-dask: pip install 'puresound[dask]' "
                                 f"({err})") from err
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
            "n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None})
    if kind == "process" and workers > 1:
        event = multiprocessing.get_context("spawn").Event()
        share_stop(event)
        return ProcessPoolTaskRunner(max_workers=workers, initializer=init_worker, initargs=(event,))
    return ThreadPoolTaskRunner(max_workers=workers)


#: Thread pools of native libraries, one thread each in worker processes: with a pool per
#: worker, N workers on N cores oversubscribe them (measured: 2 workers on 2 cores took 143 s
#: of CPU for what 1 worker did in 100 s; with these at 1, 74 s).
WORKER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


#: Dask's setting for its workers: daemonic processes by default, and a daemonic process may
#: not start the child that probes and decodes each source (:mod:`puresound_core.isolation`).
#: A remote cluster's workers need it where they are started
#: (``DASK_DISTRIBUTED__WORKER__DAEMON=False dask worker tcp://...``).
DASK_WORKER_CONFIG = {"distributed.worker.daemon": False}


def _is_dask(runner: TaskRunner) -> bool:
    """Whether ``runner`` is prefect-dask's runner; ``prefect_dask`` is only looked up if already imported."""
    module = sys.modules.get("prefect_dask")
    return module is not None and isinstance(runner, module.DaskTaskRunner)


@contextlib.contextmanager
def worker_environment(runner: TaskRunner) -> Iterator[None]:
    """While a process pool starts its workers: one native-library thread each (unless the user set them).

    Worker processes inherit the environment when they are spawned; the parent's own
    libraries are already initialised and unaffected. A local Dask cluster's workers also
    start with :data:`DASK_WORKER_CONFIG`.

    Parameters
    ----------
    runner : TaskRunner
        Nothing changes for a thread pool.
    """
    is_dask = _is_dask(runner)
    if not (is_dask or isinstance(runner, ProcessPoolTaskRunner)):
        yield
        return
    added = [name for name in WORKER_THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        if is_dask:
            import dask

            with dask.config.set(DASK_WORKER_CONFIG):
                yield
        else:
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
