"""Lineage on a real PostgreSQL server: migrations under concurrency, idempotent inserts across processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from sqlalchemy import text

from puresound_core.lineage import LineageStore, head_revision

RUN_FIELDS = dict(preset_name="podcast", preset_version="1", preset_fingerprint="f", package_version="0.1.0",
                  pyav_version="18", ffmpeg_version="62")


def _worker(url: str, worker: int) -> list[bool]:
    """One worker process: open (and so migrate) the store, then record what every worker records."""
    store = LineageStore(url)
    run = store.start_run(flow_run_id=f"run-{worker}", **RUN_FIELDS)
    inserted = []
    for n in range(10):
        store.record_source(sha256=f"{n:064d}", uri=f"s3://in/{n}.wav", size_bytes=n, probe={}, etag=f"e{worker}")
        store.record_analysis(sha256=f"{n:064d}", code_version="c", report={"n": n})
        inserted.append(store.record_rendition(
            source_sha256=f"{n:064d}", run_id=run, preset_name="podcast", preset_version="1",
            rendition_name="mp3", uri=f"s3://out/{n}.mp3", sha256=f"{n:064x}", size_bytes=1, codec_json="{}",
            verdict="published"))
    store.finish_run(run, "completed")
    return inserted


@pytest.mark.slow
def test_four_processes_migrate_and_record_the_same_renditions_once(postgres_url):
    """Four processes open an empty database at once and record the same 10 renditions: one row each."""
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_worker, [postgres_url] * 4, range(4)))
    assert sum(sum(r) for r in results) == 10  # each rendition inserted by exactly one process
    store = LineageStore(postgres_url)
    assert store.schema_version == head_revision()
    with store.engine.connect() as connection:
        counts = {table: connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
                  for table in ("sources", "source_locations", "analyses", "runs", "renditions")}
    assert counts == {"sources": 10, "source_locations": 10, "analyses": 10, "runs": 4, "renditions": 10}
    assert store.open_runs() == []
    assert all(store.published(sha256=f"{n:064d}", preset_name="podcast", preset_version="1") for n in range(10))


def test_superseded_and_closed_runs_on_postgresql(postgres_url):
    store = LineageStore(postgres_url)
    run = store.start_run(flow_run_id="dead", **RUN_FIELDS)
    row = dict(source_sha256="s" * 64, run_id=run, preset_name="podcast", preset_version="1", rendition_name="mp3",
               uri="s3://out/a.mp3", size_bytes=1, codec_json="{}", verdict="published")
    assert store.record_rendition(sha256="a" * 64, **row) and not store.record_rendition(sha256="a" * 64, **row)
    store.record_rendition(sha256="b" * 64, **row)
    assert {r["sha256"][0]: r["verdict"] for r in store.chain("s3://out/a.mp3").renditions} == {
        "a": "superseded", "b": "published"}
    assert store.close_runs([run], "crashed") == 1 and store.open_runs() == []
