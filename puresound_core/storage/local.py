"""Local-folder storage: atomic (temp file + rename) and checksummed."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from ..errors import StorageError
from .base import StoredObject, check_key, sha256_file


class LocalStorage:
    """Publish into a folder tree.

    Parameters
    ----------
    root : str or path-like
        Created if missing.

    Notes
    -----
    A write goes to a hidden temporary file in the destination folder, is checksummed
    there, then renamed over the destination (atomic on POSIX). An existing destination
    with the same SHA-256 is left alone, so re-runs are idempotent.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise StorageError(f"storage key {key!r} resolves outside {self.root}")
        return path

    def _write_atomically(self, dest: Path, key: str, fill) -> None:
        """``fill(tmp)`` writes a hidden temporary beside ``dest``, which is then renamed over it."""
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fill(tmp)
            os.replace(tmp, dest)
        except OSError as err:
            raise StorageError(f"{key}: cannot write to {self.root}: {err.strerror}") from err
        finally:
            tmp.unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        """``file://`` URI of ``key``."""
        return self._path(key).as_uri()

    def put_file(self, local_path: str | os.PathLike, key: str, *, sha256: str | None = None) -> StoredObject:
        """Copy a file in atomically; verify the copy's SHA-256.

        Parameters
        ----------
        local_path : str or path-like
        key : str
        sha256 : str, optional
            Known checksum of ``local_path`` (computed when not given).

        Returns
        -------
        StoredObject

        Raises
        ------
        StorageError
            On I/O errors or a checksum mismatch after the copy.
        """
        dest = self._path(key)
        expected = sha256 or sha256_file(local_path)
        size = Path(local_path).stat().st_size
        if dest.exists() and dest.stat().st_size == size and sha256_file(dest) == expected:
            return StoredObject(uri=dest.as_uri(), key=key, sha256=expected, size_bytes=size, written=False)
        def fill(tmp: Path) -> None:
            shutil.copyfile(local_path, tmp)
            actual = sha256_file(tmp)
            if actual != expected:
                raise StorageError(f"{key}: checksum mismatch after copy ({actual[:12]} != {expected[:12]})")

        self._write_atomically(dest, key, fill)
        return StoredObject(uri=dest.as_uri(), key=key, sha256=expected, size_bytes=size, written=True)

    def put_bytes(self, data: bytes, key: str) -> StoredObject:
        """Write bytes atomically (temp file + rename).

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
        dest = self._path(key)
        digest = hashlib.sha256(data).hexdigest()
        self._write_atomically(dest, key, lambda tmp: tmp.write_bytes(data))
        return StoredObject(uri=dest.as_uri(), key=key, sha256=digest, size_bytes=len(data), written=True)


#: Files a folder listing leaves out: reports, notes and our own temporaries.
NON_AUDIO_SUFFIXES = frozenset({".md", ".txt", ".tsv", ".json", ".yaml", ".yml", ".part"})


def list_local_files(paths: list[str | os.PathLike]) -> list[str]:
    """Files named directly plus every non-hidden file under named folders: sorted, deduplicated.

    Parameters
    ----------
    paths : list of str or path-like

    Returns
    -------
    list of str
        Folder contents skip hidden entries and :data:`NON_AUDIO_SUFFIXES`; a file named
        directly is always kept (validation then says what is wrong with it).

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    """
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file()
                         and not any(part.startswith(".") for part in p.relative_to(path).parts)
                         and p.suffix.lower() not in NON_AUDIO_SUFFIXES)
        elif path.is_file():
            found.append(str(path))
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return list(dict.fromkeys(found))
