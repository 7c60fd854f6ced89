"""Publishing tasks: store renditions and reports, record lineage. I/O, so retried with jitter.

Storage, S3 client and lineage store come from :func:`puresound.resources.resources`: made
once per process and configuration, not in every call.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from prefect import task
from prefect.assets import Asset, materialize
from prefect.cache_policies import NO_CACHE

from puresound.resources import resources
from puresound_core.lineage import LineageStore
from puresound_core.storage import StoredObject

#: Storage / network tasks: retried with backoff and jitter.
#: Side-effect tasks take no cache policy (NO_CACHE): nothing to reuse, and no hashing of large inputs.
_IO_RETRIES = {"retries": 3, "retry_delay_seconds": [1, 2, 4], "retry_jitter_factor": 0.5}
_MAX_ASSET_KEY = 512


# Characters Prefect refuses in asset keys (prefect.types.names.RESTRICTED_ASSET_CHARACTERS).
_ASSET_KEY_REFUSED = re.compile(r"[\n\r\t\0 #?&%\"'<>\[\]{}|\\^`]")


def asset_key(uri: str, sha256: str) -> str:
    """A Prefect asset key for a URI.

    Asset keys may not hold spaces, ``%``, ``#``... and are at most 512 characters: such
    characters become ``_`` and a short hash of the exact URI keeps keys distinct.

    Parameters
    ----------
    uri : str
    sha256 : str
        Content hash, used when even the cleaned URI is too long.

    Returns
    -------
    str
    """
    if not _ASSET_KEY_REFUSED.search(uri) and len(uri) <= _MAX_ASSET_KEY:
        return uri
    cleaned = _ASSET_KEY_REFUSED.sub("_", uri) + "~" + hashlib.sha256(uri.encode()).hexdigest()[:8]
    return cleaned if len(cleaned) <= _MAX_ASSET_KEY else f"puresound://sha256/{sha256}"


def lineage_store(database_url: str) -> LineageStore:
    """This process's LineageStore (engine + connection pool) of a database URL (:mod:`puresound.resources`)."""
    return resources().lineage(database_url)


@materialize("puresound://rendition", name="store-rendition", **_IO_RETRIES)
def store_rendition(local_path: str, key: str, output_dir: str, sha256: str) -> StoredObject:
    """Publish a verified rendition (atomic, checksummed, idempotent) to a folder or S3.

    Called with ``.with_options(assets=[rendition URI], asset_deps=[source URI])`` so the
    orchestrator records the rendition as an asset materialised from its source.

    Parameters
    ----------
    local_path : str
        The verified rendition in the work area.
    key : str
        Relative key under ``output_dir``.
    output_dir : str
        Local folder or ``s3://bucket/prefix``.
    sha256 : str
        Checksum of ``local_path``, checked again by the storage.

    Returns
    -------
    StoredObject

    Raises
    ------
    StorageError
        After the retries, on I/O errors or a checksum mismatch.
    """
    return resources().storage(output_dir).put_file(local_path, key, sha256=sha256)


def store_rendition_as_asset(local_path: str, key: str, output_dir: str, sha256: str, source_uri: str,
                             source_sha256: str) -> StoredObject:
    """Run :func:`store_rendition` with the rendition URI as asset key and the source as dependency.

    Parameters
    ----------
    local_path, key, output_dir, sha256 : str
        As :func:`store_rendition`.
    source_uri, source_sha256 : str
        The source the asset depends on.

    Returns
    -------
    StoredObject
    """
    uri = resources().storage(output_dir).uri(key)
    task_with_assets = store_rendition.with_options(
        assets=[Asset(key=asset_key(uri, sha256))], asset_deps=[Asset(key=asset_key(source_uri, source_sha256))])
    return task_with_assets(local_path, key, output_dir, sha256)


@task(name="store-report", cache_policy=NO_CACHE, **_IO_RETRIES)
def store_report(report: dict, key: str, output_dir: str) -> StoredObject:
    """Publish a JSON report atomically.

    Parameters
    ----------
    report : dict
        JSON-serialisable (other values are written with ``str``).
    key : str
    output_dir : str
        Local folder or ``s3://bucket/prefix``.

    Returns
    -------
    StoredObject

    Raises
    ------
    StorageError
    """
    data = json.dumps(report, indent=2, sort_keys=False, default=str).encode()
    return resources().storage(output_dir).put_bytes(data, key)


@task(name="record-lineage", cache_policy=NO_CACHE, **_IO_RETRIES)
def record_lineage(database_url: str, *, source: dict, analysis: dict | None, renditions: list[dict],
                   run_id: int, code_version: str) -> None:
    """Write the source, its analysis and its renditions to the lineage database.

    Parameters
    ----------
    database_url : str
    source : dict
        Keyword arguments of :meth:`LineageStore.record_source`.
    analysis : dict or None
        JSON of the :class:`AnalysisReport`; ``None`` for rejected sources.
    renditions : list of dict
        Keyword arguments of :meth:`LineageStore.record_rendition` (without ``run_id``).
    run_id : int
    code_version : str

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        After the retries.
    """
    store = lineage_store(database_url)
    store.record_source(**source)
    if analysis is not None:
        store.record_analysis(sha256=source["sha256"], code_version=code_version, report=analysis)
    for row in renditions:
        store.record_rendition(run_id=run_id, **row)


@task(name="fetch-source", **_IO_RETRIES)
def fetch_source(uri: str, work_dir: str) -> tuple[str, str]:
    """Download an S3 source into the work area under a safe name.

    The object is only read: sources are never modified or deleted.

    Parameters
    ----------
    uri : str
        ``s3://bucket/key``.
    work_dir : str

    Returns
    -------
    (str, str)
        Local path and SHA-256.

    Raises
    ------
    StorageError
        For a refused key, or when the download fails after the retries.
    """
    from puresound_core.storage.s3 import S3Storage, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    path, sha256 = S3Storage(f"s3://{bucket}", client=resources().s3()).download(key, Path(work_dir) / "sources")
    return str(path), sha256
