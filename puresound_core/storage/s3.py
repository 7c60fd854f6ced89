"""S3 storage (AWS or any S3-compatible endpoint) through boto3.

* Uploads are verified end to end: single-part PUTs carry the SHA-256 as
  ``x-amz-checksum-sha256`` (AWS rejects a body that does not match), multipart uploads carry
  per-part SHA-256 checksums, and after every upload the object's ETag is compared with the
  one computed locally (MD5 of the body, or of the part MD5s for multipart), which also
  catches corruption on endpoints that ignore checksum headers. (Objects encrypted with
  SSE-KMS have no MD5 ETag; for them the checksum headers are the verification.) The hex
  SHA-256 is stored as object metadata (``sha256``): it makes re-runs idempotent and is
  what lineage records.
* Transient errors (5xx, throttling, resets, timeouts) are retried by botocore's
  ``standard`` mode: exponential backoff with full jitter, up to ``max_attempts``.
* Keys from uploaders are untrusted: :func:`untrusted_key_problem` says why a key is
  refused, and :func:`safe_local_name` is the only way a key becomes a local file name.
* Nothing here deletes an object; sources are only read.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from ..errors import StorageError
from .base import StoredObject, check_key, sha256_file, untrusted_key_problem

#: Objects larger than this go up in parts (multipart upload).
MULTIPART_THRESHOLD_BYTES = 16 * 1024 * 1024


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key-or-prefix`` into bucket and key, the key taken literally.

    An S3 URI (as the AWS CLI writes it) is not URL-encoded: a key may hold ``#``, ``?``,
    ``%`` or ``;``, which a URL parser would cut off as fragment, query or parameters.

    Parameters
    ----------
    uri : str

    Returns
    -------
    (str, str)
        The bucket, and everything after the ``/`` that follows it (``""`` for none); a
        further leading ``/`` belongs to the key, as S3 and the AWS CLI take it.

    Raises
    ------
    StorageError
        If ``uri`` is not an ``s3://`` URI with a bucket.
    """
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise StorageError(f"{uri!r} is not an s3://bucket/prefix URI")
    return bucket, key


def make_s3_client(*, endpoint_url: str | None = None, region_name: str | None = None, max_attempts: int = 10,
                   connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0, session=None):
    """A boto3 S3 client with retries (standard mode: backoff with jitter) and timeouts.

    Parameters
    ----------
    endpoint_url : str, optional
        S3-compatible endpoint (MinIO, Ceph, moto...); path-style addressing is used then.
    region_name : str, optional
    max_attempts : int
        Total attempts per request, first included.
    connect_timeout_s, read_timeout_s : float
    session : boto3.session.Session, optional
        Where credentials come from (e.g. a Prefect ``AwsCredentials`` block's session);
        default: the standard AWS chain (environment, profile, instance role).

    Returns
    -------
    botocore.client.S3

    References
    ----------
    botocore retries guide ("standard" mode); boto3 S3 client.
    """
    config = Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                    connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                    s3={"addressing_style": "path"} if endpoint_url else None,
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return (session or boto3).client("s3", endpoint_url=endpoint_url, region_name=region_name, config=config)


def make_sqs_client(*, endpoint_url: str | None = None, region_name: str | None = None, max_attempts: int = 10,
                    session=None):
    """A boto3 SQS client with the same retry policy as :func:`make_s3_client`."""
    config = Config(retries={"max_attempts": max_attempts, "mode": "standard"})
    return (session or boto3).client("sqs", endpoint_url=endpoint_url, region_name=region_name, config=config)


def safe_local_name(key: str) -> str:
    """A local file name for an object key that can never leave its folder.

    Parameters
    ----------
    key : str

    Returns
    -------
    str
        ``{sha256(key)[:16]}-{sanitised last segment}``: only ``[A-Za-z0-9._-]``, no leading dot.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", key.rsplit("/", 1)[-1]).lstrip(".")[-80:] or "object"
    return f"{digest}-{tail}"


def _digests(path: str | os.PathLike, size: int) -> tuple[str, str]:
    """SHA-256 and the S3 ETag the upload of this file will have (MD5, or multipart MD5-of-MD5s)."""
    sha = hashlib.sha256()
    part_md5s: list[bytes] = []
    whole = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(MULTIPART_THRESHOLD_BYTES):
            sha.update(chunk)
            whole.update(chunk)
            part_md5s.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if size < MULTIPART_THRESHOLD_BYTES:
        return sha.hexdigest(), whole.hexdigest()
    combined = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
    return sha.hexdigest(), f"{combined}-{len(part_md5s)}"


class S3Object(BaseModel):
    """A listed object.

    Attributes
    ----------
    key : str
    size_bytes : int
    etag : str
        Without quotes.
    uri : str
    """

    model_config = ConfigDict(frozen=True)

    key: str
    size_bytes: int
    etag: str
    uri: str


class S3Storage:
    """Publish into and read from ``s3://bucket/prefix``.

    Parameters
    ----------
    uri : str
        ``s3://bucket/prefix``.
    client : botocore.client.S3
        From :func:`make_s3_client`.
    sse : {None, "AES256", "aws:kms"}
        Server-side encryption of written objects.
    kms_key_id : str, optional
        With ``sse="aws:kms"``.
    """

    def __init__(self, uri: str, *, client, sse: str | None = None, kms_key_id: str | None = None):
        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.client = client
        self._extra: dict[str, str] = {}
        if sse:
            self._extra["ServerSideEncryption"] = sse
            if kms_key_id:
                self._extra["SSEKMSKeyId"] = kms_key_id

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def uri(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self._key(key)}"

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None`` when there is no such object.

        Raises
        ------
        StorageError
            When the GET fails for another reason (after the client's retries).
        """
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"{self.uri(key)}: GET failed: {err}") from err

    def _existing_sha256(self, full_key: str) -> str | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full_key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"s3://{self.bucket}/{full_key}: HEAD failed: {err}") from err
        return head.get("Metadata", {}).get("sha256")

    def put_file(self, local_path: str | os.PathLike, key: str, *, sha256: str | None = None) -> StoredObject:
        """Upload a file (verified by SHA-256; skipped when an identical object exists).

        Parameters
        ----------
        local_path : str or path-like
        key : str
            Relative to the storage prefix.
        sha256 : str, optional

        Returns
        -------
        StoredObject

        Raises
        ------
        StorageError
            When the upload fails after retries or the stored checksum does not match.
        """
        full_key = self._key(key)
        size = Path(local_path).stat().st_size
        digest, etag = _digests(local_path, size)
        if sha256 is not None and sha256 != digest:
            raise StorageError(f"{Path(local_path).name}: sha256 {digest} differs from the expected {sha256}")
        uri = f"s3://{self.bucket}/{full_key}"
        try:
            if self._existing_sha256(full_key) == digest:
                return StoredObject(uri=uri, key=key, sha256=digest, size_bytes=size, written=False)
            extra = {**self._extra, "Metadata": {"sha256": digest}}
            if size < MULTIPART_THRESHOLD_BYTES:
                with open(local_path, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=full_key, Body=body,
                                           ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(), **extra)
            else:
                self.client.upload_file(str(local_path), self.bucket, full_key,
                                        ExtraArgs={**extra, "ChecksumAlgorithm": "SHA256"},
                                        Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD_BYTES,
                                                              multipart_chunksize=MULTIPART_THRESHOLD_BYTES))
            head = self.client.head_object(Bucket=self.bucket, Key=full_key)
        except (ClientError, BotoCoreError, OSError) as err:
            raise StorageError(f"{uri}: upload failed: {err}") from err
        stored_etag = head.get("ETag", "").strip('"')
        if self._extra.get("ServerSideEncryption") != "aws:kms" and stored_etag != etag:
            raise StorageError(f"{uri}: upload corrupted: stored ETag {stored_etag} != local {etag}")
        if head.get("Metadata", {}).get("sha256") != digest or head.get("ContentLength") != size:
            raise StorageError(f"{uri}: stored object does not match the local file")
        return StoredObject(uri=uri, key=key, sha256=digest, size_bytes=size, written=True)

    def put_bytes(self, data: bytes, key: str) -> StoredObject:
        """Upload bytes in one verified PUT.

        Parameters
        ----------
        data : bytes
        key : str

        Returns
        -------
        StoredObject

        Raises
        ------
        StorageError
        """
        full_key = self._key(key)
        digest = hashlib.sha256(data).hexdigest()
        uri = f"s3://{self.bucket}/{full_key}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=full_key, Body=data,
                                   ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
                                   Metadata={"sha256": digest}, **self._extra)
        except (ClientError, BotoCoreError) as err:
            raise StorageError(f"{uri}: upload failed: {err}") from err
        return StoredObject(uri=uri, key=key, sha256=digest, size_bytes=len(data), written=True)

    def list_objects(self, prefix: str = "") -> Iterator[S3Object]:
        """Objects under ``prefix`` (relative to the storage prefix), keys as stored.

        Yields
        ------
        S3Object

        Raises
        ------
        StorageError
        """
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield S3Object(key=item["Key"], size_bytes=int(item["Size"]), etag=item["ETag"].strip('"'),
                                   uri=f"s3://{self.bucket}/{item['Key']}")
        except (ClientError, BotoCoreError) as err:
            raise StorageError(f"s3://{self.bucket}/{self.prefix}{prefix}: listing failed: {err}") from err

    def download(self, full_key: str, folder: str | os.PathLike) -> tuple[Path, str]:
        """Download an object (a full key, as listed) into a folder under a safe local name.

        Parameters
        ----------
        full_key : str
            Untrusted; refused when :func:`untrusted_key_problem` objects.
        folder : str or path-like

        Returns
        -------
        (Path, str)
            The local file and its SHA-256.

        Raises
        ------
        StorageError
            For a refused key or a failed download (after retries).
        """
        problem = untrusted_key_problem(full_key)
        if problem:
            raise StorageError(f"s3://{self.bucket}/{full_key!r}: refused: {problem}")
        dest = Path(folder) / safe_local_name(full_key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        try:
            self.client.download_file(self.bucket, full_key, str(tmp))
            os.replace(tmp, dest)
        except (ClientError, BotoCoreError, OSError) as err:
            raise StorageError(f"s3://{self.bucket}/{full_key}: download failed: {err}") from err
        finally:
            tmp.unlink(missing_ok=True)
        return dest, sha256_file(dest)
