"""Real servers for the slow tests and the benchmarks: Debian's PostgreSQL and ``prefect server start`` on it.

The Prefect server's PostgreSQL schema needs the ``pg_trgm`` extension, which ``pgserver``'s
binaries lack; Debian's ``postgresql`` package has it (``apt-get install postgresql``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def debian_postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` whose server has ``pg_trgm``, or None."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True):
        version = folder.parent.name
        if (folder / "initdb").exists() and Path(f"/usr/share/postgresql/{version}/extension/pg_trgm.control").exists():
            return folder
    return None


def _as_postgres(args: list[str]) -> list[str]:
    """Run a PostgreSQL binary as the ``postgres`` user when this is root (the server refuses root)."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def wait_for(condition, timeout_s: float, what: str):
    """Poll ``condition()`` every 0.5 s until it returns something truthy, which is returned.

    Raises
    ------
    TimeoutError
        Naming ``what``, after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


def start_postgres(folder: Path) -> tuple[str, subprocess.Popen]:
    """Debian's PostgreSQL with its data in ``folder`` (readable by user ``postgres``), on a Unix socket.

    Returns
    -------
    (str, subprocess.Popen)
        The socket folder (``host=`` in a URL) and the server process (stop it with :func:`stop`).

    Raises
    ------
    RuntimeError
        Debian's PostgreSQL with ``pg_trgm`` is not installed.
    """
    bins = debian_postgres_bin()
    if bins is None:
        raise RuntimeError("needs Debian's PostgreSQL (apt-get install postgresql): the Prefect server needs pg_trgm")
    data, sock = folder / "data", folder / "sock"
    for path in (data, sock):
        path.mkdir(parents=True)
    if os.geteuid() == 0:
        for path in (folder, data, sock):
            shutil.chown(path, "postgres")
    subprocess.run(_as_postgres([str(bins / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
                   check=True, capture_output=True)
    server = subprocess.Popen(_as_postgres([str(bins / "postgres"), "-D", str(data), "-k", str(sock),
                                            "-c", "listen_addresses=", "-c", "max_connections=200"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (sock / ".s.PGSQL.5432").exists(), 60, "PostgreSQL")
    except BaseException:
        stop(server, signal.SIGINT)
        raise
    return str(sock), server


def psql(sock: str, sql: str) -> None:
    """Run ``sql`` as ``postgres`` on the server at socket folder ``sock``."""
    bins = debian_postgres_bin()
    subprocess.run([str(bins / "psql") if bins else "psql", "-h", sock, "-U", "postgres", "-d", "postgres",
                    "-qc", sql], check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect_server(sock: str, home: Path, database: str = "prefect") -> tuple[str, subprocess.Popen]:
    """``prefect server start`` (no UI) on a new database ``database`` of the PostgreSQL at ``sock``.

    Returns
    -------
    (str, subprocess.Popen)
        The API URL and the server process (its own session; stop it with :func:`stop`).
        Its log is ``home/server.log``.
    """
    import httpx

    psql(sock, f"CREATE DATABASE {database}")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@/{database}?host={sock}"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                               "127.0.0.1", "--port", str(port), "--no-ui"], env=env,
                              stdout=(home / "server.log").open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy():
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with {server.returncode}: see {home / 'server.log'}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 180, "the Prefect server")
    except BaseException:
        stop(server)
        raise
    return url, server


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
    """Send ``sig`` to ``process``'s session (it leads one), SIGKILL the session after ``timeout_s``.

    For PostgreSQL pass ``signal.SIGINT`` (fast shutdown: SIGTERM waits for its clients).
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
