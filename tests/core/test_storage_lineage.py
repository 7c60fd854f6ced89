"""Local storage (atomic, checksummed, idempotent, confined) and the lineage database (SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from puresound_core.errors import StorageError
from puresound_core.lineage import LineageStore
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
        versions = [row[0] for row in connection.execute(text("SELECT version FROM schema_version"))]
    assert versions == [1] and store.schema_version == 1


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
