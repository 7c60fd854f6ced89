"""Upload -> flow run started, through S3 notifications, SQS, the bridge and a served deployment.

Bar (issue 4): <= 10 s from upload to flow run started. Starts moto's server, ``prefect
server start`` and ``puresound serve --preset voice`` (runner polling every second) on
127.0.0.1, uploads a few files and times each one.
Run: ``python benchmarks/bench_upload.py [UPLOADS]``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "en-US_espeak-ng_news-bulletin.flac"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def main() -> None:
    uploads = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    root = Path(tempfile.mkdtemp(prefix="puresound-upload-"))
    moto_port, prefect_port = _port(), _port()
    moto_url, api_url = f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{prefect_port}/api"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "PREFECT_HOME": str(root / "prefect"), "PREFECT_API_URL": api_url,
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PURESOUND_S3_ENDPOINT_URL": moto_url,
           "PURESOUND_STATE_DIR": str(root / "state")}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                           "PREFECT_API_URL", "PURESOUND_S3_ENDPOINT_URL", "PREFECT_HOME")})
    procs = [subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                               str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(prefect_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait(moto_url + "/moto-api/")
        _wait(api_url + "/health")
        procs.append(subprocess.Popen([sys.executable, "-m", "puresound.cli", "serve", "--preset", "voice"], env=env,
                                      cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from prefect.client.orchestration import get_client

        from puresound.bridge import Bridge, BridgeConfig, Route, start_deployment_run
        from puresound_core.storage.s3 import make_s3_client, make_sqs_client

        s3, sqs = make_s3_client(endpoint_url=moto_url), make_sqs_client(endpoint_url=moto_url)
        s3.create_bucket(Bucket="incoming")
        s3.create_bucket(Bucket="published")
        queue_url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(Bucket="incoming", NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
        runs: dict[str, object] = {}

        def start(flow, deployment, parameters, key):
            run = start_deployment_run(flow, deployment, parameters, key)
            runs[parameters["request"]["sources"][0]] = run
            return run

        bridge = Bridge(sqs, queue_url, BridgeConfig(routes=[Route(bucket="incoming", prefix="voice/", preset="voice",
                                                                   output="s3://published/")]), start_run=start)
        stop = threading.Event()
        threading.Thread(target=bridge.run, kwargs={"stop": stop, "wait_time_s": 1}, daemon=True).start()
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    client.read_deployment_by_name("voice/on-upload")
                    break
                except Exception:
                    time.sleep(0.5)
            rows = []
            for i in range(uploads):
                key = f"voice/take {i}.flac"
                uploaded = time.monotonic()
                s3.upload_file(str(EXAMPLE), "incoming", key)
                uri = f"s3://incoming/{key}"
                started = finished = None
                while finished is None and time.monotonic() - uploaded < 300:
                    run = runs.get(uri)
                    if run is not None:
                        state = client.read_flow_run(run.id).state
                        if started is None and (state.is_running() or state.is_final()):
                            started = time.monotonic() - uploaded
                        if state.is_final():
                            finished = (time.monotonic() - uploaded, state.name)
                    time.sleep(0.1)
                rows.append((key, started, finished))
        stop.set()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'upload':22} {'to Running s':>13} {'to final s':>11}  state   (bar: Running <= 10 s)")
    for key, started, finished in rows:
        print(f"{key:22} {started:13.1f} {finished[0]:11.1f}  {finished[1]}")


if __name__ == "__main__":
    main()
