"""The embedded (temporary) Prefect server of ``puresound run`` when no ``PREFECT_API_URL`` is set.

Prefect can start one by itself, but its start-up wait (20 s by default) is too short for a
busy 2-core machine, its failure is a 40-line traceback, and its server process outlives a
``puresound run`` killed with SIGKILL. This module starts the same server (uvicorn with
Prefect's app factory, SQLite under ``PREFECT_HOME``) as a child that the kernel stops when
its parent dies (Linux ``PR_SET_PDEATHSIG``), waits for its health endpoint as long as
``PURESOUND_SERVER_STARTUP_TIMEOUT_S`` says, and fails with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

#: Linux prctl option: signal sent to this process when its parent thread exits.
_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(RuntimeError):
    """The temporary Prefect server did not start; the message says what to set instead."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the atexit / finally clean-up still stops it on a normal exit


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def embedded_server(*, startup_timeout_s: float) -> Iterator[str]:
    """Run a temporary Prefect server for the duration of a ``with`` block.

    Parameters
    ----------
    startup_timeout_s : float
        How long to wait for ``/api/health`` to answer.

    Yields
    ------
    str
        The API URL (``http://127.0.0.1:PORT/api``).

    Raises
    ------
    EmbeddedServerError
        One line: why it did not start (timed out, or the process exited with its last log
        line) and what to set (``PREFECT_API_URL`` or ``PURESOUND_SERVER_STARTUP_TIMEOUT_S``).
    """
    import prefect

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tempfile.NamedTemporaryFile(prefix="puresound-prefect-server-", suffix=".log", delete=False)
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
         "--lifespan", "on"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    started = False
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                lines = Path(log.name).read_text(errors="replace").strip().splitlines()
                raise EmbeddedServerError(
                    f"the temporary Prefect server exited with code {process.returncode}"
                    f" ({lines[-1] if lines else 'no output'}; log {log.name}); set PREFECT_API_URL to a running "
                    "server (`prefect server start`)")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the temporary Prefect server did not answer within {startup_timeout_s:g} s (a busy machine?); "
                    "set PURESOUND_SERVER_STARTUP_TIMEOUT_S higher, or PREFECT_API_URL to a running server "
                    "(`prefect server start`)")
            time.sleep(0.2)
        started = True
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if started:  # a failed start keeps its log, named in the error
            with contextlib.suppress(OSError):
                os.unlink(log.name)
