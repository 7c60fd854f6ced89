"""Local storage (atomic, checksummed, idempotent, confined) and the lineage database (SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import inspect, text

from puresound_core.errors import StorageError
from puresound_core.lineage import HEAD_REVISION, LineageStore, head_revision
from puresound_core.storage import LocalStorage, sha256_file


def test_put_file_is_checksummed_and_idempotent(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    storage = LocalStorage(tmp_path / "out")
    first = storage.put_file(src, "p/a.bin")
    again = storage.put_file(src, "p/a.bin")
    assert first.written and not again.written
    assert first.sha256 == sha256_file(src) == sha256_file(tmp_path / "out/p/a.bin")
    assert [p.name for p in (tmp_path / "out/p").iterdir()] == ["a.bin"]  # no temporary left behind


def test_a_write_removes_the_temporaries_killed_writers_left_in_its_folder(tmp_path):
    from puresound_core.storage.local import _WRITER

    storage = LocalStorage(tmp_path / "out")
    folder = tmp_path / "out" / "p"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names a writer that no longer exists
    parts = {
        "killed here, 2 min ago": f".a.mp3.{'0' * 32}.{dead.pid}@{_WRITER}.part",
        "killed here, just now": f".a.mp3.{'6' * 32}.{dead.pid}@{_WRITER}.part",
        "live here": f".a.mp3.{'1' * 32}.{os.getpid()}@{_WRITER}.part",
        "recent, other host": f".a.mp3.{'2' * 32}.{dead.pid}@0badc0de.part",
        "stale, other host": f".a.mp3.{'3' * 32}.123@0badc0de.part",
        "stale, old name": f".a.mp3.{'4' * 32}.part",
        "another destination": f".b.mp3.{'5' * 32}.{dead.pid}@{_WRITER}.part",
        "stale, a longer name": f".a.mp3.json.{'7' * 32}.123@0badc0de.part",
    }
    for name in parts.values():
        (folder / name).write_bytes(b"partial")
    for what, age_s in (("killed here, 2 min ago", 120), ("stale, other host", 2 * LocalStorage.STALE_PART_S),
                        ("stale, old name", 2 * LocalStorage.STALE_PART_S),
                        ("stale, a longer name", 2 * LocalStorage.STALE_PART_S)):
        then = time.time() - age_s
        os.utime(folder / parts[what], (then, then))
    storage.put_bytes(b"second", "p/a.mp3")
    kept = {what for what, name in parts.items() if (folder / name).exists()}
    assert kept == {"killed here, just now", "live here", "recent, other host", "another destination"}
    assert (folder / "a.mp3").read_bytes() == b"second"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".a.mp3.0")] == []


@pytest.mark.parametrize("key", ["../evil.wav", "a/../../x", "/abs/x", "a\\b", "a\0b", "", "a//b", "x" * 1100])
def test_keys_cannot_escape_the_root(tmp_path, key):
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).put_bytes(b"data", key)
    assert list(tmp_path.iterdir()) == []


def _store(tmp_path) -> LineageStore:
    return LineageStore(f"sqlite:///{tmp_path / 'lineage.sqlite'}")


def test_lineage_chain_in_both_directions(tmp_path):
    store = _store(tmp_path)
    store.record_source(sha256="s" * 64, uri="file:///in/a.wav", size_bytes=10, probe={"codec": "pcm_s16le"})
    run = store.start_run(flow_run_id="run-1", preset_name="podcast", preset_version="1", preset_fingerprint="f",
                          package_version="0.1.0", pyav_version="18", ffmpeg_version="62")
    for name in ("mp3-128k", "opus-48k-mono"):
        store.record_rendition(source_sha256="s" * 64, run_id=run, preset_name="podcast", preset_version="1",
                               rendition_name=name, uri=f"file:///out/{name}", sha256=name[0] * 64, size_bytes=5,
                               codec_json="{}", verdict="published")
    store.finish_run(run, "completed")
    forward = store.chain("s" * 64)
    assert forward.matched == "source" and [r["rendition"] for r in forward.renditions] == ["mp3-128k", "opus-48k-mono"]
    backward = store.chain("file:///out/mp3-128k")
    assert backward.matched == "rendition" and backward.source["sha256"] == "s" * 64
    assert backward.renditions[0]["flow_run_id"] == "run-1" and backward.renditions[0]["matched"]
    assert store.published(sha256="s" * 64, preset_name="podcast", preset_version="1")
    assert not store.published(sha256="s" * 64, preset_name="podcast", preset_version="2")
    assert store.chain("nothing").matched == "none"


def test_schema_is_versioned_and_migration_is_repeatable(tmp_path):
    _store(tmp_path)
    store = _store(tmp_path)  # second open: nothing to apply, nothing broken
    with store.engine.connect() as connection:
        revisions = [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    assert revisions == [head_revision()] == [store.schema_version] == [HEAD_REVISION]  # the constant is current


def test_a_database_from_before_alembic_is_upgraded_in_place(tmp_path):
    """The hand-rolled scheme's version-1 database, with a duplicate rendition row, keeps its rows."""
    import sqlite3

    path = tmp_path / "lineage.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA_1)
        db.execute("INSERT INTO schema_version VALUES (1, '2026-01-01')")
        db.execute("INSERT INTO runs VALUES (1, 'r', 'podcast', '1', 'f', '0.1', '18', '62', '2026-01-01', NULL, "
                   "'completed')")
        for _ in range(2):  # what two racing workers could write before the unique index
            db.execute("INSERT INTO renditions (source_sha256, run_id, preset_name, preset_version, rendition_name, "
                       "uri, sha256, size_bytes, codec_json, verdict, attempts, created_at) VALUES "
                       "('s', 1, 'podcast', '1', 'mp3', 'file:///o.mp3', 'h', 1, '{}', 'published', 1, '2026-01-01')")
    store = LineageStore(f"sqlite:///{path}")
    assert store.schema_version == head_revision()
    assert [r["uri"] for r in store.chain("file:///o.mp3").renditions] == ["file:///o.mp3"]  # duplicates folded
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM renditions")).scalar() == 1
        assert connection.execute(text("SELECT status FROM runs")).scalar() == "completed"
        assert "schema_version" not in inspect(connection).get_table_names()
    assert store.published(sha256="s", preset_name="podcast", preset_version="1")


def _rendition(run: int, uri: str, sha256: str, verdict: str = "published") -> dict:
    return dict(source_sha256="s" * 64, run_id=run, preset_name="podcast", preset_version="1",
                rendition_name="mp3", uri=uri, sha256=sha256, size_bytes=5, codec_json="{}", verdict=verdict)


def test_one_row_per_rendition_and_overwritten_bytes_are_superseded(tmp_path):
    store = _store(tmp_path)
    store.record_source(sha256="s" * 64, uri="file:///in/a.wav", size_bytes=10, probe={})
    store.record_source(sha256="s" * 64, uri="file:///in/a.wav", size_bytes=10, probe={}, etag="e2")
    run = store.start_run(flow_run_id="run-1", preset_name="podcast", preset_version="1", preset_fingerprint="f",
                          package_version="0.1.0", pyav_version="18", ffmpeg_version="62")
    assert store.record_rendition(**_rendition(run, "file:///out/a.mp3", "a" * 64))
    assert not store.record_rendition(**_rendition(run, "file:///out/a.mp3", "a" * 64))  # same bytes again
    assert store.record_rendition(**_rendition(run, "file:///out/a.mp3", "b" * 64))  # other bytes, same path
    verdicts = {r["sha256"][0]: r["verdict"] for r in store.chain("s" * 64).renditions}
    assert verdicts == {"a": "superseded", "b": "published"}
    assert store.known_location(uri="file:///in/a.wav", etag="e2") == "s" * 64


def test_runs_left_running_by_a_dead_process_are_closed(tmp_path):
    store = _store(tmp_path)
    fields = dict(preset_name="podcast", preset_version="1", preset_fingerprint="f", package_version="0.1.0",
                  pyav_version="18", ffmpeg_version="62")
    dead, alive = store.start_run(flow_run_id="dead", **fields), store.start_run(flow_run_id="alive", **fields)
    assert sorted(store.open_runs()) == [(dead, "dead"), (alive, "alive")]
    assert store.close_runs([dead], "crashed") == 1
    assert store.close_runs([dead], "crashed") == 0  # closed rows are left alone
    assert store.open_runs() == [(alive, "alive")]


#: What the hand-rolled migration 1 created (before Alembic), as SQLite printed it.
LEGACY_SCHEMA_1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at DATETIME NOT NULL, PRIMARY KEY (version));
CREATE TABLE sources (id INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL, size_bytes INTEGER NOT NULL,
    probe_json VARCHAR NOT NULL, first_seen_at DATETIME NOT NULL, PRIMARY KEY (id));
CREATE UNIQUE INDEX ix_sources_sha256 ON sources (sha256);
CREATE TABLE source_locations (id INTEGER NOT NULL, uri VARCHAR NOT NULL, sha256 VARCHAR(64) NOT NULL,
    size_bytes INTEGER NOT NULL, etag VARCHAR, version_id VARCHAR, seen_at DATETIME NOT NULL, PRIMARY KEY (id),
    UNIQUE (uri, sha256));
CREATE INDEX ix_source_locations_sha256 ON source_locations (sha256);
CREATE INDEX ix_source_locations_uri ON source_locations (uri);
CREATE TABLE analyses (id INTEGER NOT NULL, source_sha256 VARCHAR(64) NOT NULL, code_version VARCHAR NOT NULL,
    report_json VARCHAR NOT NULL, created_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (source_sha256, code_version));
CREATE INDEX ix_analyses_source_sha256 ON analyses (source_sha256);
CREATE TABLE runs (id INTEGER NOT NULL, flow_run_id VARCHAR NOT NULL, preset_name VARCHAR NOT NULL,
    preset_version VARCHAR NOT NULL, preset_fingerprint VARCHAR NOT NULL, package_version VARCHAR NOT NULL,
    pyav_version VARCHAR NOT NULL, ffmpeg_version VARCHAR NOT NULL, started_at DATETIME NOT NULL,
    finished_at DATETIME, status VARCHAR NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_runs_flow_run_id ON runs (flow_run_id);
CREATE TABLE renditions (id INTEGER NOT NULL, source_sha256 VARCHAR(64) NOT NULL, run_id INTEGER NOT NULL,
    preset_name VARCHAR NOT NULL, preset_version VARCHAR NOT NULL, rendition_name VARCHAR NOT NULL,
    uri VARCHAR NOT NULL, sha256 VARCHAR(64) NOT NULL, size_bytes INTEGER NOT NULL, codec_json VARCHAR NOT NULL,
    integrated_lufs FLOAT, true_peak_dbtp FLOAT, lra_lu FLOAT, verdict VARCHAR NOT NULL, attempts INTEGER NOT NULL,
    created_at DATETIME NOT NULL, PRIMARY KEY (id), FOREIGN KEY(run_id) REFERENCES runs (id));
CREATE INDEX ix_renditions_preset_name ON renditions (preset_name);
CREATE INDEX ix_renditions_uri ON renditions (uri);
CREATE INDEX ix_renditions_source_sha256 ON renditions (source_sha256);
CREATE INDEX ix_renditions_run_id ON renditions (run_id);
CREATE INDEX ix_renditions_sha256 ON renditions (sha256);
"""


def test_input_scan_refuses_links_out_skips_outputs_and_keeps_any_name(tmp_path):
    import os

    from puresound_core.storage.local import list_local_files, scan_local_sources

    root = tmp_path / "in"
    (root / "published").mkdir(parents=True)
    (root / "a.wav").write_bytes(b"a")
    (root / "published" / "a-1234.mp3").write_bytes(b"r")
    raw = os.fsdecode(b"caf\xe9.wav")
    (root / raw).write_bytes(b"c")
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"s")
    os.symlink(outside, root / "out.wav")
    os.symlink(root / "a.wav", root / "in.wav")
    os.symlink(tmp_path, root / "loop")
    sources, excluded = scan_local_sources([root], exclude=[root / "published"])
    by_name = {os.path.basename(s.path): s.problem for s in sources}
    assert by_name["a.wav"] is None and by_name[raw] is None and by_name["in.wav"] is None
    assert "outside its input folder" in by_name["out.wav"]
    assert "link to a folder" in by_name["loop"]
    assert excluded == [str(root / "published" / "a-1234.mp3")]
    assert str(root / "out.wav") not in list_local_files([root])
    followed, _ = scan_local_sources([root], follow_symlinks=True)
    assert {os.path.basename(s.path): s.problem for s in followed}["out.wav"] is None
