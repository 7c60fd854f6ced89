"""Upload -> S3 notification -> SQS -> bridge -> deployment run -> renditions in S3, with real
components: moto's server over HTTP, a real Prefect server, and ``puresound serve`` executing runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.deployments import run_deployment

from flows.presets import RunRequest, ingest_flow, preset_flow
from puresound.bridge import Bridge, BridgeConfig, Route, start_deployment_run
from puresound.settings import PureSoundSettings
from puresound_core.lineage import LineageStore
from puresound_core.presets import BUILTIN_PRESETS
from puresound_core.storage.s3 import make_s3_client, make_sqs_client
from tests.conftest import sine, write_wav

REPO = Path(__file__).resolve().parents[2]
VOICE = BUILTIN_PRESETS["voice"]


def _speech_like(path: Path, seconds: float = 4.0, seed: int = 0) -> Path:
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * (3.5 + seed) * t)
    audio = (sine(-14, seconds, rate, freq_hz=220 + 20 * seed, channels=1) * envelope).astype(np.float32)
    return write_wav(path, audio, rate)


@pytest.fixture(scope="module")
def world(moto_url, prefect_server, tmp_path_factory):
    """Buckets, a queue fed by S3 notifications, and a runner serving the voice deployments."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("s3world")
    suffix = uuid.uuid4().hex[:8]
    incoming, published = f"incoming-{suffix}", f"published-{suffix}"
    s3 = make_s3_client(endpoint_url=moto_url)
    sqs = make_sqs_client(endpoint_url=moto_url)
    s3.create_bucket(Bucket=incoming)
    s3.create_bucket(Bucket=published)
    queue_url = sqs.create_queue(QueueName=f"uploads-{suffix}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=incoming, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PURESOUND_S3_ENDPOINT_URL": moto_url, "PURESOUND_STATE_DIR": str(root / "state"),
           "PREFECT_LOCAL_STORAGE_PATH": str(root / "results"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PURESOUND_DATABASE_URL", None)
    runner = subprocess.Popen([sys.executable, "-m", "puresound.cli", "serve", "--preset", "voice"], cwd=REPO, env=env,
                              stdout=open(root / "runner.log", "wb"), stderr=subprocess.STDOUT)
    try:
        _wait_for_deployment("voice", "on-upload")
        yield {"s3": s3, "sqs": sqs, "queue_url": queue_url, "incoming": incoming, "published": published,
               "root": root, "env": env, "moto_url": moto_url}
    finally:
        runner.terminate()
        runner.wait(timeout=30)


def _wait_for_deployment(flow_name: str, name: str, timeout_s: float = 120.0) -> None:
    """Poll until the runner has registered ``flow_name/name`` (it does so at start-up)."""
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                client.read_deployment_by_name(f"{flow_name}/{name}")
                return
            except ObjectNotFound:
                time.sleep(0.5)
    raise AssertionError(f"deployment {flow_name}/{name} not registered within {timeout_s} s")


def _wait_for_run(flow_run_id, *, terminal: bool = True, timeout_s: float = 240.0):
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and (run.state.is_final() if terminal else (run.state.is_running() or run.state.is_final())):
                return run
            time.sleep(0.25)
    raise AssertionError(f"flow run {flow_run_id} not {'finished' if terminal else 'started'} in {timeout_s} s")


def _lineage(world) -> LineageStore:
    return LineageStore(PureSoundSettings(state_dir=world["root"] / "state").lineage_url)


def test_upload_to_renditions_in_s3_exactly_once_with_lineage(world, tmp_path):
    s3, sqs, queue_url = world["s3"], world["sqs"], world["queue_url"]
    key = "voice/episode 1.flac"  # the space arrives URL-encoded in the notification
    local = _speech_like(tmp_path / "episode.wav")
    # Drain the s3:TestEvent the notification configuration sent, then upload.
    config = BridgeConfig(routes=[Route(bucket=world["incoming"], prefix="voice/", preset="voice",
                                        output=f"s3://{world['published']}/out")])
    runs = []
    bridge = Bridge(sqs, queue_url, config, quarantine=tmp_path / "quarantine.jsonl",
                    start_run=lambda *args: runs.append(start_deployment_run(*args)) or runs[-1])
    while bridge.poll_once(wait_time_s=1):
        pass
    uploaded_at = time.monotonic()
    s3.upload_file(str(local), world["incoming"], key)
    # The same notification delivered three times, plus one malformed message.
    messages = []
    while not messages:
        messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5).get("Messages", [])
    body = messages[0]["Body"]
    assert "episode+1.flac" in body or "episode%201.flac" in body
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
    for _ in range(3):
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    sqs.send_message(QueueUrl=queue_url, MessageBody="{not json")
    deadline = time.monotonic() + 30
    while (len(runs) < 3 or bridge.set_aside < 1) and time.monotonic() < deadline:
        bridge.poll_once(wait_time_s=1)
    assert len(runs) == 3 and len({run.id for run in runs}) == 1, "three deliveries must map to one flow run"
    assert bridge.set_aside == 1 and "malformed" in (tmp_path / "quarantine.jsonl").read_text()
    started = _wait_for_run(runs[0].id, terminal=False)
    start_latency_s = time.monotonic() - uploaded_at
    finished = _wait_for_run(runs[0].id)
    assert finished.state.is_completed(), finished.state.message
    print(f"upload -> flow run started: {start_latency_s:.1f} s ({started.state.name})")

    objects = {o["Key"] for o in s3.list_objects_v2(Bucket=world["published"]).get("Contents", [])}
    renditions = [k for k in objects if k.endswith(".opus")]
    assert len(renditions) == 1 and renditions[0].startswith("out/voice/episode_1-")
    report = json.loads(s3.get_object(Bucket=world["published"], Key="out/voice/report.json")["Body"].read())
    assert report["counts"]["published"] == 1
    chain = _lineage(world).chain(f"s3://{world['incoming']}/{key}")
    assert chain.matched == "source"
    assert [r["uri"] for r in chain.renditions] == [f"s3://{world['published']}/{renditions[0]}"]
    with get_client(sync_client=True) as client:
        all_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter())
    assert sum(1 for r in all_runs if r.idempotency_key == runs[0].idempotency_key) == 1


def test_manual_run_through_the_api_with_form_parameters(world, tmp_path):
    s3 = world["s3"]
    s3.upload_file(str(_speech_like(tmp_path / "m.wav", seed=1)), world["incoming"], "manual/take.wav")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("voice/manual")
    assert "RunRequest" in json.dumps(deployment.parameter_openapi_schema)
    request = RunRequest(sources=[f"s3://{world['incoming']}/manual/"], output_dir=f"s3://{world['published']}/manual")
    run = run_deployment("voice/manual", parameters={"request": request.model_dump()}, timeout=240)
    assert run.state.is_completed(), run.state.message
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=world["published"], Prefix="manual/").get("Contents", [])]
    assert any(k.endswith("opus-32k-mono.opus") for k in keys)


def test_nightly_ingest_skips_processed_objects_without_a_get(world, tmp_path, fault_proxy, monkeypatch):
    proxy = fault_proxy()
    monkeypatch.setenv("PURESOUND_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "state"))
    s3 = world["s3"]
    s3.upload_file(str(_speech_like(tmp_path / "a.wav", seed=2)), world["incoming"], "nightly/a.wav")
    ingest = ingest_flow(VOICE)
    source, output = f"s3://{world['incoming']}/nightly/", f"s3://{world['published']}/nightly"
    first = ingest(source=source, output_dir=output, return_state=True).result()
    assert first.counts["published"] == 1
    for name in ("b.wav", "c.wav"):
        s3.upload_file(str(_speech_like(tmp_path / name, seed=3)), world["incoming"], f"nightly/{name}")
    proxy.log.clear()
    second = ingest(source=source, output_dir=output, return_state=True).result()
    assert (second.counts["new"], second.counts["skipped"], second.counts["published"]) == (2, 1, 2)
    assert second.skipped == [f"s3://{world['incoming']}/nightly/a.wav"]
    assert proxy.requests_for("GET", "nightly/a.wav") == []
    assert proxy.requests_for("GET", "nightly/b.wav")


def test_hostile_keys_are_rejected_and_nothing_leaves_the_work_area(world, tmp_path, monkeypatch):
    monkeypatch.setenv("PURESOUND_S3_ENDPOINT_URL", world["moto_url"])
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "state"))
    s3 = world["s3"]
    body = (tmp_path / "x.wav")
    _speech_like(body)
    hostile = ["hostile/../evil.wav", "hostile/a/../../evil2.wav", "hostile/./dot.wav", "hostile/back\\slash.wav"]
    for key in hostile:
        s3.put_object(Bucket=world["incoming"], Key=key, Body=body.read_bytes())
    s3.put_object(Bucket=world["incoming"], Key="hostile/fine #1?.wav", Body=body.read_bytes())
    flow_fn = preset_flow(VOICE)
    request = RunRequest(sources=[f"s3://{world['incoming']}/hostile/"], output_dir=str(tmp_path / "out"))
    report = flow_fn(request=request, return_state=True).result()
    verdicts = {Path(s.path).name if not s.path.startswith("s3://") else s.path.rsplit("/", 1)[-1]: s
                for s in report.sources}
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=world["incoming"], Prefix="hostile/")["Contents"]}
    rejected = [s for s in report.sources if s.failed_rules == ["unsafe_key"]]
    assert len(rejected) == len(listed) - 1 and all("unsafe_key" in s.reason for s in rejected)
    assert verdicts["fine #1?.wav"].verdict == "published"  # "#" and "?" are part of a key, not URL syntax
    escaped = [p for p in tmp_path.rglob("*evil*")]
    assert escaped == []
    sources_dir = tmp_path / "state" / "sources"
    assert all(p.parent == sources_dir for p in sources_dir.iterdir())


def test_thirty_percent_s3_faults_still_deliver_every_file_exactly_once(world, tmp_path, fault_proxy, monkeypatch):
    proxy = fault_proxy(failure_rate=0.3)
    monkeypatch.setenv("PURESOUND_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "state"))
    s3 = world["s3"]
    for i in range(4):
        s3.upload_file(str(_speech_like(tmp_path / f"f{i}.wav", seed=i)), world["incoming"], f"flaky/f{i}.wav")
    flow_fn = preset_flow(VOICE)
    request = RunRequest(sources=[f"s3://{world['incoming']}/flaky/"], output_dir=f"s3://{world['published']}/flaky")
    report = flow_fn(request=request, return_state=True).result()
    assert report.counts["published"] == 4, [s.reason for s in report.sources]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=world["published"], Prefix="flaky/").get("Contents", [])]
    assert len([k for k in keys if k.endswith(".opus")]) == 4
    store = LineageStore(PureSoundSettings(state_dir=tmp_path / "state").lineage_url)
    for source in report.sources:
        assert len(store.chain(source.sha256).renditions) == 1
    faults = sum(1 for entry in proxy.log if entry[2] != "ok")
    assert faults / len(proxy.log) > 0.2, (faults, len(proxy.log))
