"""The Storage protocol and helpers shared by its backends."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from ..errors import StorageError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        Hex digest.

    Raises
    ------
    StorageError
        If the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as err:
        raise StorageError(f"{Path(path).name}: cannot read for checksum: {err.strerror}") from err
    return digest.hexdigest()


#: Longest object key S3 accepts (bytes of UTF-8).
MAX_KEY_BYTES = 1024


def untrusted_key_problem(key: str) -> str | None:
    """Why a storage key (e.g. an uploader's object key) must not be used, or ``None``.

    Parameters
    ----------
    key : str

    Returns
    -------
    str or None
        E.g. ``"key contains a '..' segment"``.
    """
    if not key:
        return "key is empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"key is longer than {MAX_KEY_BYTES} bytes"
    if "\0" in key:
        return "key contains NUL"
    if "\\" in key:
        return "key contains a backslash"
    if key.startswith("/"):
        return "key is absolute (starts with '/')"
    if any(part in (".", "..") for part in key.split("/")):
        return "key contains a '.' or '..' segment"
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        return "key contains control characters"
    return None


def check_key(key: str) -> str:
    """Reject keys we write under that could escape the storage root or name nothing.

    Parameters
    ----------
    key : str

    Returns
    -------
    str
        The key, unchanged.

    Raises
    ------
    StorageError
        For every key :func:`untrusted_key_problem` refuses, and for empty segments (``a//b``).
    """
    problem = untrusted_key_problem(key) or ("key has an empty segment" if "" in key.split("/") else None)
    if problem:
        raise StorageError(f"storage key {key[:200]!r} rejected: {problem}")
    return key


class StoredObject(BaseModel):
    """An object as stored.

    Attributes
    ----------
    uri : str
        ``file:///...`` or ``s3://bucket/key``.
    key : str
    sha256 : str
    size_bytes : int
    written : bool
        False when an identical object was already there (idempotent re-run).
    """

    model_config = ConfigDict(frozen=True)

    uri: str
    key: str
    sha256: str
    size_bytes: int
    written: bool


@runtime_checkable
class Storage(Protocol):
    """Where outputs are published."""

    def put_file(self, local_path: str | os.PathLike, key: str, *, sha256: str | None = None) -> StoredObject:
        """Store a local file under ``key`` atomically; skip if an identical object exists."""
        ...

    def put_bytes(self, data: bytes, key: str) -> StoredObject:
        """Store bytes under ``key`` atomically."""
        ...

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes under ``key``, or ``None`` when there is no such object."""
        ...

    def uri(self, key: str) -> str:
        """The URI ``key`` has (or would have) in this storage."""
        ...
