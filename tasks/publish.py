"""Publishing tasks: store renditions and reports, record lineage. I/O, so retried with jitter."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.assets import Asset, materialize

from puresound_core.lineage import LineageStore
from puresound_core.storage import LocalStorage, StoredObject

_IO_RETRIES = {"retries": 3, "retry_delay_seconds": [1, 2, 4], "retry_jitter_factor": 0.5}
_MAX_ASSET_KEY = 512


def asset_key(uri: str, sha256: str) -> str:
    """A Prefect asset key for a URI (keys are limited to 512 characters).

    Parameters
    ----------
    uri : str
    sha256 : str
        Content hash, used when ``uri`` is too long.

    Returns
    -------
    str
    """
    return uri if len(uri) <= _MAX_ASSET_KEY else f"puresound://sha256/{sha256}"


@materialize("puresound://rendition", name="store-rendition", **_IO_RETRIES)
def store_rendition(local_path: str, key: str, output_dir: str, sha256: str) -> StoredObject:
    """Publish a verified rendition (atomic, checksummed, idempotent).

    Called with ``.with_options(assets=[rendition URI], asset_deps=[source URI])`` so the
    orchestrator records the rendition as an asset materialised from its source.
    """
    return LocalStorage(output_dir).put_file(local_path, key, sha256=sha256)


def store_rendition_as_asset(local_path: str, key: str, output_dir: str, sha256: str, source_uri: str,
                             source_sha256: str) -> StoredObject:
    """Run :func:`store_rendition` with the rendition URI as asset key and the source as dependency."""
    uri = LocalStorage(output_dir).uri(key)
    task_with_assets = store_rendition.with_options(
        assets=[Asset(key=asset_key(uri, sha256))], asset_deps=[Asset(key=asset_key(source_uri, source_sha256))])
    return task_with_assets(local_path, key, output_dir, sha256)


@task(name="store-report", **_IO_RETRIES)
def store_report(report: dict, key: str, output_dir: str) -> StoredObject:
    """Publish a JSON report atomically."""
    data = json.dumps(report, indent=2, sort_keys=False, default=str).encode()
    return LocalStorage(output_dir).put_bytes(data, key)


@task(name="record-lineage", **_IO_RETRIES)
def record_lineage(database_url: str, *, source: dict, analysis: dict | None, renditions: list[dict],
                   run_id: int, code_version: str) -> None:
    """Write the source, its analysis and its renditions to the lineage database."""
    store = LineageStore(database_url)
    store.record_source(**source)
    if analysis is not None:
        store.record_analysis(sha256=source["sha256"], code_version=code_version, report=analysis)
    for row in renditions:
        store.record_rendition(run_id=run_id, **row)


def source_uri(path: str) -> str:
    """``file://`` URI of a local source path."""
    return Path(path).resolve().as_uri()
