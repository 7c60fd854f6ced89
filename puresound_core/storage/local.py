"""Local-folder storage: atomic (temp file + rename) and checksummed."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import NamedTuple

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

    A process killed mid-copy (SIGKILL, a lost machine) cannot remove its temporary, so a
    write first removes the abandoned temporaries in its folder (at most once per
    :attr:`SWEEP_EVERY_S` per folder): those named by a process of this host and pid
    namespace that no longer exists (and a minute old), and those untouched for
    :attr:`STALE_PART_S` seconds, where a live copy touches its file far more often.
    """

    #: Age (seconds since last modification) after which any temporary is taken as abandoned.
    STALE_PART_S = 900.0
    #: Age after which a temporary named by a dead process of this host (and pid namespace)
    #: is taken as abandoned.
    DEAD_WRITER_GRACE_S = 60.0
    #: A folder is swept at most this often per storage object (its listing is not free on NFS).
    SWEEP_EVERY_S = 300.0

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self._swept: dict[str, float] = {}

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise StorageError(f"storage key {key!r} resolves outside {self.root}")
        return path

    def _write_atomically(self, dest: Path, key: str, fill) -> None:
        """``fill(tmp)`` writes a hidden temporary beside ``dest``, which is then renamed over it."""
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.{os.getpid()}@{_WRITER}.part"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._remove_abandoned_parts(dest)
            fill(tmp)
            os.replace(tmp, dest)
        except OSError as err:
            raise StorageError(f"{key}: cannot write to {self.root}: {err.strerror}") from err
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_abandoned_parts(self, dest: Path) -> None:
        """Delete the temporaries killed writers left in ``dest``'s folder (see the class notes); never fails."""
        folder = str(dest.parent)
        now = time.monotonic()
        if now - self._swept.get(folder, -math.inf) < self.SWEEP_EVERY_S:
            return
        self._swept[folder] = now
        wall = time.time()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    found = _PART.match(entry.name)  # of any destination in the folder: the same rules hold
                    if found is None:
                        continue
                    with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
                        age_s = wall - entry.stat(follow_symlinks=False).st_mtime
                        dead_here = (found["writer"] == _WRITER and found["pid"] is not None
                                     and not _process_exists(int(found["pid"])))
                        if age_s > self.STALE_PART_S or (dead_here and age_s > self.DEAD_WRITER_GRACE_S):
                            os.unlink(entry.path)
        except OSError:
            return

    def uri(self, key: str) -> str:
        """``file://`` URI of ``key``."""
        return self._path(key).as_uri()

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None`` when there is no such object.

        Raises
        ------
        StorageError
            When the object exists but cannot be read.
        """
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StorageError(f"{key}: cannot read from {self.root}: {err.strerror}") from err

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


def _writer_id() -> str:
    """8 hex digits naming this host and pid namespace (containers may share a host name)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(f"{socket.gethostname()}:{namespace}".encode()).hexdigest()[:8]


_WRITER = _writer_id()
#: ``.{name}.{32 hex}[.{pid}@{writer}].part``: a temporary of destination ``name``.
_PART = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{32}(?:\.(?P<pid>\d+)@(?P<writer>[0-9a-f]{8}))?\.part$")


def _process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Files a folder listing leaves out: reports, notes and our own temporaries.
NON_AUDIO_SUFFIXES = frozenset({".md", ".txt", ".tsv", ".json", ".yaml", ".yml", ".part"})


class LocalSource(NamedTuple):
    """One entry of an input folder.

    Attributes
    ----------
    path : str
        As the OS names it (undecodable bytes as surrogate escapes, :func:`os.fsdecode`).
    problem : str or None
        Why the entry is refused without being read (a symbolic link leading out of its
        input folder); ``None`` for a regular source.
    """

    path: str
    problem: str | None = None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def scan_local_sources(
    paths: list[str | os.PathLike],
    *,
    exclude: list[str | os.PathLike] = (),
    follow_symlinks: bool = False,
) -> tuple[list[LocalSource], list[str]]:
    """Sources from files named directly and every non-hidden file under named folders.

    Parameters
    ----------
    paths : list of str or path-like
    exclude : list of str or path-like
        Folders whose contents are never sources (the output folder and the work area):
        a run's own renditions never become the next run's inputs.
    follow_symlinks : bool
        Read symbolic links found inside input folders wherever they lead. By default a
        link whose target lies outside its input folder is listed with a ``problem`` and
        never opened (a link to ``/etc/shadow`` is not read as audio); links to files
        inside the folder are read; linked folders are not descended.

    Returns
    -------
    sources : list of LocalSource
        Sorted by path within each input, deduplicated.
    excluded : list of str
        Files skipped because they are inside an ``exclude`` folder.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    """
    excluded_roots = [Path(e).resolve() for e in exclude]
    found: dict[str, LocalSource] = {}
    skipped: list[str] = []
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            real_root = root.resolve()
            entries: list[Path] = []
            visited: set[Path] = set()
            for folder, dirs, files in os.walk(root, followlinks=follow_symlinks):
                real = Path(folder).resolve()
                if real in visited:  # a link cycle (only when following links)
                    dirs[:] = []
                    continue
                visited.add(real)
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for d in dirs:
                    if (Path(folder) / d).is_symlink() and not follow_symlinks:
                        entries.append(Path(folder) / d)
                entries.extend(Path(folder) / f for f in files if not f.startswith("."))
            for entry in sorted(entries):
                if entry.suffix.lower() in NON_AUDIO_SUFFIXES:
                    continue
                if any(_inside(entry.resolve() if not entry.is_symlink() else entry.absolute(), ex)
                       for ex in excluded_roots):
                    skipped.append(str(entry))
                    continue
                problem = None
                if entry.is_symlink() and not follow_symlinks:
                    target = entry.resolve()
                    if entry.is_dir():
                        problem = "is a symbolic link to a folder: not followed"
                    elif not _inside(target, real_root):
                        problem = ("is a symbolic link leading outside its input folder: not followed "
                                   "(PURESOUND_FOLLOW_SYMLINKS=true reads such links)")
                    elif not target.is_file():
                        problem = "is a symbolic link to nothing readable"
                elif not entry.is_file():
                    continue
                found.setdefault(str(entry), LocalSource(str(entry), problem))
        elif root.is_file():
            if any(_inside(root.resolve(), ex) for ex in excluded_roots):
                skipped.append(str(root))
                continue
            found.setdefault(str(root), LocalSource(str(root)))
        else:
            raise FileNotFoundError(f"{os.fsencode(raw).decode('utf-8', 'replace')}: no such file or folder")
    return list(found.values()), skipped


def list_local_files(paths: list[str | os.PathLike]) -> list[str]:
    """Readable sources among files and folders (see :func:`scan_local_sources`), as paths.

    Parameters
    ----------
    paths : list of str or path-like

    Returns
    -------
    list of str
        Folder contents skip hidden entries, :data:`NON_AUDIO_SUFFIXES` and symbolic links
        leading outside their folder; a file named directly is always kept (validation then
        says what is wrong with it).

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    """
    sources, _ = scan_local_sources(paths)
    return [s.path for s in sources if s.problem is None]
