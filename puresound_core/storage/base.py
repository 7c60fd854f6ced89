"""The Storage protocol and helpers shared by its backends."""

from __future__ import annotations

import hashlib
import os
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


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root.

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
        For empty, absolute, ``..``-containing, backslash, NUL or over-1024-byte keys.
    """
    parts = key.split("/")
    if (not key or key.startswith("/") or "\\" in key or "\0" in key or len(key.encode()) > 1024
            or any(part in ("", ".", "..") for part in parts)):
        raise StorageError(f"storage key {key!r} rejected: must be a relative path without '..', '\\\\' or NUL")
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

    def uri(self, key: str) -> str:
        """The URI ``key`` has (or would have) in this storage."""
        ...
