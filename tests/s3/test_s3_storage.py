"""S3 storage against moto's server over HTTP: verified uploads, idempotency, hostile keys, retries."""

from __future__ import annotations

import hashlib
import os

import pytest

from puresound_core.errors import StorageError
from puresound_core.storage.s3 import (
    MULTIPART_THRESHOLD_BYTES,
    S3Storage,
    make_s3_client,
    parse_s3_uri,
    safe_local_name,
    untrusted_key_problem,
)


@pytest.fixture
def bucket(moto_url, request):
    client = make_s3_client(endpoint_url=moto_url)
    name = f"b-{request.node.name.lower().replace('_', '-')[:40]}".strip("-")
    client.create_bucket(Bucket=name)
    return client, name


def test_single_and_multipart_uploads_are_verified_and_idempotent(bucket, tmp_path):
    client, name = bucket
    storage = S3Storage(f"s3://{name}/out", client=client, sse="AES256")
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(os.urandom(5000))
    large.write_bytes(os.urandom(MULTIPART_THRESHOLD_BYTES + 1_000_000))
    for path in (small, large):
        first = storage.put_file(path, f"p/{path.name}")
        assert first.written and first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not storage.put_file(path, f"p/{path.name}").written
        head = client.head_object(Bucket=name, Key=f"out/p/{path.name}")
        assert head["Metadata"]["sha256"] == first.sha256 and head["ServerSideEncryption"] == "AES256"
    assert sorted(o.key for o in storage.list_objects()) == ["out/p/large.bin", "out/p/small.bin"]
    local, digest = storage.download("out/p/large.bin", tmp_path / "dl")
    assert digest == hashlib.sha256(large.read_bytes()).hexdigest() and local.parent == tmp_path / "dl"


@pytest.mark.parametrize("key", ["", "shows/ep 1.wav", "ep#2.wav", "what?.mp3", "100%;x.flac", "a//b.wav",
                                 "/abs.wav", "caf\u00e9/\u00e9pisode.ogg"])
def test_an_s3_uri_keeps_its_key_literally(key):
    # S3 URIs are not URL-encoded: '#' or '?' in a key is not a fragment or a query.
    assert parse_s3_uri(f"s3://my-bucket/{key}") == ("my-bucket", key)


@pytest.mark.parametrize("uri", ["s3://", "s3:///key.wav", "file:///x.wav", "S3://b/k", "b/k"])
def test_what_is_not_an_s3_uri_is_refused_by_name(uri):
    with pytest.raises(StorageError, match="is not an s3://bucket/prefix URI"):
        parse_s3_uri(uri)


def test_a_download_gets_the_name_a_rerun_looks_its_verdicts_up_under(bucket, tmp_path):
    # The inspect and plan cache keys hold the downloaded file's name; a re-run that finds the
    # verdicts under another name would start worker processes for nothing.
    from flows.models import SourceRef
    from flows.sources import inspected_name

    client, name = bucket
    storage = S3Storage(f"s3://{name}", client=client)
    for key in ("shows/2026/ep 1.wav", "caf\u00e9/\u00e9pisode #2 (final).flac", "a/.hidden.mp3", "x/"):
        client.put_object(Bucket=name, Key=key, Body=b"RIFF")
        local, _ = storage.download(key, tmp_path / "sources")
        assert local.name == inspected_name(SourceRef(uri=f"s3://{name}/{key}")), key


def test_a_body_corrupted_in_transit_is_detected(fault_proxy, moto_url, tmp_path):
    make_s3_client(endpoint_url=moto_url).create_bucket(Bucket="corrupt-target")
    proxy = fault_proxy(corrupt_puts=True)
    storage = S3Storage("s3://corrupt-target/out", client=make_s3_client(endpoint_url=proxy.url))
    (tmp_path / "a.bin").write_bytes(os.urandom(4000))
    with pytest.raises(StorageError, match="upload corrupted"):
        storage.put_file(tmp_path / "a.bin", "a.bin")


@pytest.mark.parametrize(("key", "reason"), [
    ("../evil.wav", "'..' segment"), ("a/../../x.wav", "'..' segment"), ("/abs/x.wav", "absolute"),
    ("a\0b.wav", "NUL"), ("dir\\x.wav", "backslash"), ("k" * 1025, "longer than 1024 bytes"),
])
def test_hostile_keys_are_refused_with_a_reason_and_never_become_paths(bucket, tmp_path, key, reason):
    assert reason in untrusted_key_problem(key)
    name = safe_local_name(key)
    assert "/" not in name and "\\" not in name and "\0" not in name and not name.startswith(".")
    client, bucket_name = bucket
    with pytest.raises(StorageError, match="refused"):
        S3Storage(f"s3://{bucket_name}", client=client).download(key, tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_transient_faults_are_retried(fault_proxy, moto_url, tmp_path):
    proxy = fault_proxy(failure_rate=0.3)
    client = make_s3_client(endpoint_url=proxy.url)
    make_s3_client(endpoint_url=moto_url).create_bucket(Bucket="flaky")
    storage = S3Storage("s3://flaky/out", client=client)
    for i in range(20):
        (tmp_path / f"{i}.bin").write_bytes(os.urandom(2000))
        assert storage.put_file(tmp_path / f"{i}.bin", f"{i}.bin").written
    assert len(list(storage.list_objects())) == 20
    assert sum(1 for entry in proxy.log if entry[2] != "ok") >= 10  # faults really happened


def test_credentials_can_come_from_a_prefect_awscredentials_block(moto_url, prefect_server, monkeypatch):
    from prefect_aws import AwsCredentials
    from pydantic import SecretStr

    from puresound.settings import PureSoundSettings, s3_client

    AwsCredentials(aws_access_key_id="block-key", aws_secret_access_key=SecretStr("block-secret"),
                   region_name="us-east-1").save("moto-test", overwrite=True)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    client = s3_client(PureSoundSettings(s3_endpoint_url=moto_url, aws_credentials_block="moto-test"))
    assert client._request_signer._credentials.access_key == "block-key"
    client.create_bucket(Bucket="from-block")
    assert "from-block" in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_a_missing_block_is_a_clear_storage_error(prefect_server):
    from puresound.settings import PureSoundSettings, s3_client

    with pytest.raises(StorageError, match="'no-such-block' cannot be loaded"):
        s3_client(PureSoundSettings(aws_credentials_block="no-such-block"))
