"""Listing a batch's inputs: local files and folders, S3 prefixes; the nightly skip of known sources."""

from __future__ import annotations

import os
from pathlib import Path

from flows.models import SourceRef, display_name
from puresound_core.errors import PureSoundError
from puresound_core.lineage import LineageStore
from puresound_core.presets import Preset
from puresound_core.storage import sha256_file
from puresound_core.storage.local import NON_AUDIO_SUFFIXES, scan_local_sources


def list_sources(locations: list[str], *, exclude: list[str] = (),
                 follow_symlinks: bool = False) -> tuple[list[SourceRef], list[str]]:
    """Inputs from local files / folders and ``s3://bucket/prefix`` locations.

    Parameters
    ----------
    locations : list of str
        Local paths, ``file://`` URIs (as :attr:`SourceRef.uri`: any bytes of a name survive
        JSON), and ``s3://bucket/prefix``.
    exclude : list of str
        Local folders whose contents are never inputs (the output folder, the work area).
    follow_symlinks : bool
        See :func:`puresound_core.storage.local.scan_local_sources`.

    Returns
    -------
    sources : list of SourceRef
        S3 keys that fail :func:`untrusted_key_problem` and local links leading out of their
        folder are listed with their ``problem`` (rejected unread).
    excluded : list of str
        Local files left out because they are inside an ``exclude`` folder.

    Raises
    ------
    FileNotFoundError
        For a local path that does not exist.
    StorageError
        When an S3 listing fails after retries.
    """
    from puresound.settings import s3_client
    from puresound_core.storage.base import untrusted_key_problem
    from puresound_core.storage.s3 import S3Storage, parse_s3_uri

    refs: list[SourceRef] = []
    local = [SourceRef(uri=loc).local_path if loc.startswith("file://") else loc
             for loc in locations if not loc.startswith("s3://")]
    found, excluded = scan_local_sources(local, exclude=list(exclude), follow_symlinks=follow_symlinks)
    refs.extend(SourceRef.local(entry.path, problem=entry.problem) for entry in found)
    for loc in (loc for loc in locations if loc.startswith("s3://")):
        bucket, prefix = parse_s3_uri(loc)
        storage = S3Storage(f"s3://{bucket}", client=s3_client())
        for obj in storage.list_objects(prefix):
            if obj.key.endswith("/") or Path(obj.key).suffix.lower() in NON_AUDIO_SUFFIXES:
                continue
            refs.append(SourceRef(uri=obj.uri, size_bytes=obj.size_bytes, etag=obj.etag,
                                  problem=untrusted_key_problem(obj.key)))
    return list({r.uri: r for r in refs}.values()), excluded


def already_published(lineage: LineageStore, ref: SourceRef, preset: Preset) -> bool:
    """Known source at this URI with this ETag / size+mtime (or, locally, this content) and published.

    Parameters
    ----------
    lineage : LineageStore
    ref : SourceRef
    preset : Preset

    Returns
    -------
    bool
    """
    sha256 = lineage.known_location(uri=ref.uri, etag=ref.etag)
    if sha256 is None and ref.local_path is not None and ref.problem is None:
        sha256 = sha256_file(ref.local_path)  # in doubt: local bytes are cheap to hash, no download involved
    return sha256 is not None and lineage.published(sha256=sha256, preset_name=preset.name,
                                                    preset_version=preset.version)


def needs_no_audio_work(lineage: LineageStore, ref: SourceRef, preset: Preset, work_dir: str) -> bool:
    """Whether this source, as last seen, needs no audio work: its renditions of this preset are
    cached in the work area, or its cached verdicts reject it.

    Recognised without reading it: by URI + ETag (S3) or URI + size + mtime (local), as
    recorded in lineage. A file rejected unread (``ref.problem``) needs no work either.

    Parameters
    ----------
    lineage : LineageStore
    ref : SourceRef
    preset : Preset
    work_dir : str

    Returns
    -------
    bool
        False when in doubt (unknown location, a rendition file or result record missing).
    """
    from tasks.audio import rejection_is_cached, render_is_cached

    if ref.problem is not None:
        return True
    sha256 = lineage.known_location(uri=ref.uri, etag=ref.etag)
    if sha256 is None:
        return False
    if render_is_cached(work_dir, sha256, preset):
        return True
    try:
        name = inspected_name(ref)
    except PureSoundError:  # not from list_sources (file:// or s3:// only): the pipeline names the problem
        return False
    return rejection_is_cached(sha256, name, preset)


def largest_first(refs: list[SourceRef]) -> list[SourceRef]:
    """The order to start files in: largest first, so a long recording does not start last.

    Workers take files in submission order; a batch's wall time is at least the time its
    last-started file needs. Longest first (Graham's LPT rule) keeps the batch within 4/3 of
    the best order when run times are known; here size stands in for run time (known without
    reading a byte, but a WAV minute is as large as ~10 MP3 minutes), so it is a heuristic. Equal sizes
    keep their listed order; reports keep the listed order. A batch split into part runs
    (:mod:`flows.fanout`) is split in listed order.

    Parameters
    ----------
    refs : list of SourceRef

    Returns
    -------
    list of SourceRef
        The same references, by ``size_bytes`` descending.

    References
    ----------
    R. L. Graham, "Bounds on multiprocessing timing anomalies", SIAM J. Appl. Math. 17(2), 1969.
    """
    return sorted(refs, key=lambda ref: -ref.size_bytes)


def inspected_name(ref: SourceRef) -> str:
    """The file name the per-file pipeline inspects a source under (it enters the inspect and plan cache keys).

    Parameters
    ----------
    ref : SourceRef

    Returns
    -------
    str
        A local file's own name, or its display form when the name is not valid UTF-8
        (:func:`flows.pipeline.readable_alias`); for an S3 object, the safe local name its
        download gets (:func:`puresound_core.storage.s3.safe_local_name`).

    Raises
    ------
    StorageError
        For a URI that is neither ``file://`` nor ``s3://bucket/key``.
    """
    if ref.local_path is None:
        from puresound_core.storage.s3 import parse_s3_uri, safe_local_name

        return safe_local_name(parse_s3_uri(ref.uri)[1])
    return display_name(os.path.basename(ref.local_path))  # a valid UTF-8 name is its own display form
