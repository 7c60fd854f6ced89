"""S3 -> SQS -> Prefect bridge: one preset flow run per uploaded object, exactly once.

``puresound s3-bridge --queue-url URL`` long-polls an SQS queue fed by S3 ``ObjectCreated``
notifications. For every record it URL-decodes the key, finds the route (bucket + prefix
-> preset, output), and starts the preset's ``on-upload`` deployment with an idempotency
key built from bucket, key and version id (or ETag). The Prefect server answers a repeated
key with the run it already has, so a redelivered or duplicated notification starts no
second run. A message is deleted only after its runs exist: a crash before that means the
message comes back (at-least-once in, exactly-once runs out).

Malformed messages and refused keys are logged and set aside (sent to a dead-letter queue
when one is configured, else appended to ``{state_dir}/bridge-quarantine.jsonl``), then
deleted, so they never block or crash the bridge. ``s3:TestEvent`` messages are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import yaml
from pydantic import BaseModel, ConfigDict, Field

from puresound_core.storage.base import untrusted_key_problem

log = logging.getLogger("puresound.bridge")


class Route(BaseModel):
    """Which preset handles uploads under a bucket / prefix, and where its outputs go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str
    prefix: str = ""
    preset: str
    output: str = Field(description="Local folder or s3://bucket/prefix for renditions and reports")


class BridgeConfig(BaseModel):
    """Routes, most specific (longest prefix) first when matching.

    Attributes
    ----------
    routes : list of Route
    deployment : str
        Deployment name started for each object (``on-upload``).
    dead_letter_queue_url : str or None
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    routes: list[Route] = Field(min_length=1)
    deployment: str = "on-upload"
    dead_letter_queue_url: str | None = None

    def route_for(self, bucket: str, key: str) -> Route | None:
        """The longest-prefix route for an object, or ``None``."""
        matches = [r for r in self.routes if r.bucket == bucket and key.startswith(r.prefix)]
        return max(matches, key=lambda r: len(r.prefix)) if matches else None


def load_bridge_config(path: str | Path) -> BridgeConfig:
    """Read a bridge config from YAML or JSON (``routes: [{bucket, prefix, preset, output}]``)."""
    return BridgeConfig.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


class MalformedMessage(ValueError):
    """An SQS message that is not an S3 event notification."""


class ObjectCreated(BaseModel):
    """One ``ObjectCreated`` record, key URL-decoded."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    size_bytes: int | None = None
    etag: str | None = None
    version_id: str | None = None

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    @property
    def idempotency_key(self) -> str:
        """``s3-object:{sha256(bucket, key, version id or ETag)}``: one run per object version."""
        identity = json.dumps([self.bucket, self.key, self.version_id or self.etag or ""])
        return "s3-object:" + hashlib.sha256(identity.encode()).hexdigest()


def parse_notification(body: str) -> list[ObjectCreated]:
    """The ``ObjectCreated`` records of an S3 event notification (possibly SNS-wrapped).

    Parameters
    ----------
    body : str
        SQS message body.

    Returns
    -------
    list of ObjectCreated
        Empty for ``s3:TestEvent`` and for records that are not ``ObjectCreated``.

    Raises
    ------
    MalformedMessage
        When the body is not JSON or has no usable ``Records``.
    """
    try:
        message = json.loads(body)
        if isinstance(message, dict) and "Message" in message and "Records" not in message:
            message = json.loads(message["Message"])  # delivered through SNS
    except (json.JSONDecodeError, TypeError) as err:
        raise MalformedMessage(f"not JSON: {err}") from err
    if not isinstance(message, dict):
        raise MalformedMessage("not a JSON object")
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        raise MalformedMessage("no Records list")
    events = []
    for record in records:
        try:
            if not str(record.get("eventName", "")).startswith("ObjectCreated"):
                continue
            s3 = record["s3"]
            obj = s3["object"]
            events.append(ObjectCreated(
                bucket=s3["bucket"]["name"], key=unquote_plus(obj["key"]), size_bytes=obj.get("size"),
                etag=(obj.get("eTag") or obj.get("etag") or "").strip('"') or None, version_id=obj.get("versionId")))
        except (KeyError, TypeError, AttributeError) as err:
            raise MalformedMessage(f"record without s3.bucket.name / s3.object.key: {err}") from err
    return events


StartRun = Callable[[str, str, dict[str, Any], str], Any]


def start_deployment_run(flow_name: str, deployment: str, parameters: dict[str, Any], idempotency_key: str):
    """Create a flow run of ``flow_name/deployment`` (returns at once; the server dedupes by key)."""
    from prefect.deployments import run_deployment

    return run_deployment(name=f"{flow_name}/{deployment}", parameters=parameters, idempotency_key=idempotency_key,
                          timeout=0, tags=["s3-upload"])


class Bridge:
    """The SQS polling loop (see module docstring).

    Parameters
    ----------
    sqs : botocore.client.SQS
    queue_url : str
    config : BridgeConfig
    start_run : callable, optional
        ``(flow_name, deployment, parameters, idempotency_key) -> flow run``; defaults to
        :func:`start_deployment_run`.
    quarantine : Path, optional
        JSON-lines file for set-aside messages when no dead-letter queue is configured.
    """

    def __init__(self, sqs, queue_url: str, config: BridgeConfig, *, start_run: StartRun | None = None,
                 quarantine: Path | None = None):
        self.sqs, self.queue_url, self.config = sqs, queue_url, config
        self.start_run = start_run or start_deployment_run
        self.quarantine = quarantine
        self.started: list[str] = []
        self.set_aside = 0

    def _set_aside(self, message: dict, reason: str) -> None:
        log.warning("setting aside SQS message %s: %s", message.get("MessageId"), reason)
        self.set_aside += 1
        if self.config.dead_letter_queue_url:
            self.sqs.send_message(QueueUrl=self.config.dead_letter_queue_url, MessageBody=message.get("Body", ""),
                                  MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:256]}})
        elif self.quarantine is not None:
            self.quarantine.parent.mkdir(parents=True, exist_ok=True)
            with self.quarantine.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"message_id": message.get("MessageId"), "reason": reason,
                                     "body": message.get("Body", "")}) + "\n")

    def handle(self, message: dict) -> None:
        """Start the runs of one message, then delete it; errors starting runs leave it queued."""
        try:
            events = parse_notification(message.get("Body", ""))
        except MalformedMessage as err:
            self._set_aside(message, f"malformed: {err}")
            events = []
        for event in events:
            problem = untrusted_key_problem(event.key)
            route = self.config.route_for(event.bucket, event.key)
            if problem is not None:
                self._set_aside(message, f"{event.uri!r} refused: {problem}")
                continue
            if route is None:
                log.info("no route for %s; ignored", event.uri)
                continue
            parameters = {"request": {"sources": [event.uri], "output_dir": route.output}}
            self.start_run(route.preset, self.config.deployment, parameters, event.idempotency_key)
            self.started.append(event.uri)
            log.info("started %s/%s for %s", route.preset, self.config.deployment, event.uri)
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def poll_once(self, *, wait_time_s: int = 20, visibility_timeout_s: int = 60) -> int:
        """One long poll; returns how many messages were received."""
        response = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=wait_time_s, VisibilityTimeout=visibility_timeout_s)
        messages = response.get("Messages", [])
        for message in messages:
            try:
                self.handle(message)
            except Exception:  # a run could not be started: leave the message for redelivery
                log.exception("message %s left on the queue for redelivery", message.get("MessageId"))
        return len(messages)

    def run(self, stop: threading.Event | None = None, *, wait_time_s: int = 20) -> None:
        """Poll until ``stop`` is set (or forever); transient SQS errors back off and retry."""
        stop = stop or threading.Event()
        backoff = 1.0
        while not stop.is_set():
            try:
                self.poll_once(wait_time_s=wait_time_s)
                backoff = 1.0
            except Exception:
                log.exception("SQS receive failed; retrying in %.0f s", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
        log.info("bridge stopped at %s", time.strftime("%H:%M:%S"))
