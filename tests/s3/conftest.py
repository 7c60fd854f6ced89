"""Real S3 and SQS over HTTP (moto's server in a subprocess), a fault-injecting proxy in front
of it, and a Prefect runner (``puresound serve``) executing deployment runs."""

from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout_s} s")


@pytest.fixture(scope="session")
def moto_url():
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/moto-api/")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session", autouse=True)
def aws_env():
    """Fake credentials for moto; never real ones."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class FaultProxy:
    """HTTP proxy to moto that fails a share of requests (500 or a dropped connection) and logs them all."""

    def __init__(self, upstream: str, *, failure_rate: float = 0.0, corrupt_puts: bool = False, seed: int = 7):
        self.upstream = upstream.removeprefix("http://")
        self.failure_rate = failure_rate
        self.corrupt_puts = corrupt_puts
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    roll = proxy.random.random()
                    fail = roll < proxy.failure_rate
                    drop = fail and roll < proxy.failure_rate / 2
                    proxy.log.append((self.command, self.path, "drop" if drop else "500" if fail else "ok"))
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fail:
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
                               b"<Message>injected fault</Message></Error>")
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if proxy.corrupt_puts and self.command == "PUT" and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]  # one flipped byte in transit
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD answer has no body but the Content-Length of the object.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests_for(self, method: str, fragment: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [entry for entry in self.log if entry[0] == method and fragment in entry[1]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(moto_url):
    proxies = []

    def make(failure_rate: float = 0.0, corrupt_puts: bool = False) -> FaultProxy:
        proxies.append(FaultProxy(moto_url, failure_rate=failure_rate, corrupt_puts=corrupt_puts))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def s3_env(tmp_path, monkeypatch, moto_url, prefect_server):
    """PURESOUND_* pointing at moto, with a fresh state dir / lineage DB."""
    monkeypatch.setenv("PURESOUND_S3_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("PURESOUND_DATABASE_URL", raising=False)
    return tmp_path
