"""S3 notification parsing and routing (pure parts of the bridge)."""

from __future__ import annotations

import json

import pytest

from puresound.bridge import BridgeConfig, MalformedMessage, Route, parse_notification


def _record(key: str, *, etag: str = "abc", version: str | None = None, event: str = "ObjectCreated:Put") -> dict:
    obj = {"key": key, "size": 10, "eTag": etag}
    if version:
        obj["versionId"] = version
    return {"eventName": event, "s3": {"bucket": {"name": "incoming"}, "object": obj}}


def test_keys_are_url_decoded_and_test_events_dropped():
    body = json.dumps({"Records": [_record("voice/episode+1%3F.wav"), _record("x", event="ObjectRemoved:Delete")]})
    events = parse_notification(body)
    assert [e.key for e in events] == ["voice/episode 1?.wav"]
    assert parse_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []


def test_sns_wrapped_notifications_are_unwrapped():
    inner = json.dumps({"Records": [_record("a.wav")]})
    assert parse_notification(json.dumps({"Type": "Notification", "Message": inner}))[0].key == "a.wav"


@pytest.mark.parametrize("body", ["{not json", "[]", json.dumps({"Records": "x"}),
                                  json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]})])
def test_malformed_messages_raise_a_typed_error(body):
    with pytest.raises(MalformedMessage):
        parse_notification(body)


def test_idempotency_key_is_per_object_version():
    a = parse_notification(json.dumps({"Records": [_record("k", etag="e1")]}))[0]
    again = parse_notification(json.dumps({"Records": [_record("k", etag="e1")]}))[0]
    newer = parse_notification(json.dumps({"Records": [_record("k", etag="e2")]}))[0]
    versioned = parse_notification(json.dumps({"Records": [_record("k", etag="e1", version="v9")]}))[0]
    assert a.idempotency_key == again.idempotency_key
    assert len({a.idempotency_key, newer.idempotency_key, versioned.idempotency_key}) == 3


def test_longest_prefix_route_wins():
    config = BridgeConfig(routes=[Route(bucket="incoming", prefix="", preset="podcast", output="s3://out"),
                                  Route(bucket="incoming", prefix="voice/", preset="voice", output="s3://out")])
    assert config.route_for("incoming", "voice/a.wav").preset == "voice"
    assert config.route_for("incoming", "show/a.wav").preset == "podcast"
    assert config.route_for("other", "voice/a.wav") is None
