"""The temporary Prefect server of `puresound run`: starts, serves, and dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puresound.embedded import EmbeddedServerError, embedded_server


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_the_server_answers_and_stops_with_the_block(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    before = set(_children(os.getpid()))  # e.g. the isolation forkserver of earlier tests
    with embedded_server(startup_timeout_s=180) as url:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            assert response.status == 200
        children = [pid for pid in _children(os.getpid()) if pid not in before]
        assert len(children) == 1
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def test_a_server_that_cannot_start_is_one_line_with_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    with pytest.raises(EmbeddedServerError) as err:
        with embedded_server(startup_timeout_s=0.01):
            pass
    message = str(err.value)
    assert "\n" not in message and "PREFECT_API_URL" in message and "PURESOUND_SERVER_STARTUP_TIMEOUT_S" in message


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find child processes")
def test_a_killed_run_leaves_no_server_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PURESOUND_STATE_DIR=str(tmp_path / "state"))
    examples = Path(__file__).resolve().parents[1] / "examples"
    proc = subprocess.Popen([sys.executable, "-m", "puresound.cli", "run", "podcast", str(examples), "--output",
                             str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    server = []
    while not server and time.monotonic() < deadline and proc.poll() is None:
        server = [pid for pid in _children(proc.pid)
                  if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        time.sleep(0.2)
    assert server, "the run never started its temporary server"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while _alive(server[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server[0]), "the temporary server outlived its killed parent"


@pytest.mark.slow
def test_worker_processes_use_the_temporary_server_and_start_none_of_their_own(tmp_path):
    # The README's first command: no PREFECT_API_URL, two files, so the batch runs in worker processes.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), PURESOUND_WORKERS="2", PURESOUND_TASK_RUNNER="process")
    examples = Path(__file__).resolve().parents[1] / "examples"
    proc = subprocess.run([sys.executable, "-m", "puresound.cli", "run", "podcast", str(examples), "--output",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Server process did not start" not in output and "Traceback" not in output, output
    assert "'published': 2" in output
