"""Inputs that should never meet outputs, names of any bytes, verdicts before rendering, SIGTERM."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import pink_noise, sine, write_wav
from tests.flows.helpers import add_user_preset, batch_report, run_cli


def test_links_out_of_the_input_folder_are_rejected_unread(puresound_env):
    src = puresound_env / "in"
    src.mkdir()
    write_wav(src / "episode.wav", pink_noise(3, 44100, level_dbfs=-24), 44100)
    secret = puresound_env / "secret.wav"
    write_wav(secret, pink_noise(3, 44100, level_dbfs=-24, seed=5), 44100)
    os.symlink(secret, src / "link-out.wav")
    os.symlink(src / "episode.wav", src / "link-in.wav")
    out = puresound_env / "out"
    assert run_cli("voice", str(src), "--output", str(out)).exit_code == 0
    by_name = {Path(s["path"]).name: s for s in batch_report(out, "voice")["sources"]}
    assert by_name["link-out.wav"]["verdict"] == "rejected"
    assert by_name["link-out.wav"]["failed_rules"] == ["symlink"]
    assert by_name["link-out.wav"]["sha256"] is None  # never read
    assert "outside its input folder" in by_name["link-out.wav"]["reason"]
    assert by_name["episode.wav"]["verdict"] == by_name["link-in.wav"]["verdict"] == "published"


def test_an_output_folder_inside_the_input_never_feeds_the_next_run(puresound_env):
    src = puresound_env / "in"
    src.mkdir()
    write_wav(src / "episode.wav", pink_noise(3, 44100, level_dbfs=-24), 44100)
    out = src / "published"
    for _ in range(2):
        assert run_cli("podcast", str(src), "--output", str(out)).exit_code == 0
        batch = batch_report(out, "podcast")
        assert [Path(s["path"]).name for s in batch["sources"]] == ["episode.wav"]
    assert batch["counts"]["published"] == 1
    assert len(list(out.rglob("*.mp3"))) == len(list(out.rglob("*.opus"))) == 1


def test_a_rerun_looks_verdicts_up_under_the_name_the_pipeline_inspects(tmp_path):
    # The inspect and plan cache keys hold the file's name as the pipeline opens it (S3: test_s3_storage).
    from flows.pipeline import readable_alias
    from flows.sources import inspected_name, list_sources

    src = tmp_path / "in"
    src.mkdir()
    (src / "plain.wav").write_bytes(b"x")
    (Path(os.fsdecode(os.fsencode(src) + b"/caf\xe9-news.wav"))).write_bytes(b"x")  # Latin-1, invalid UTF-8
    refs, _ = list_sources([str(src)])
    names = {inspected_name(ref) for ref in refs}
    assert names == {Path(readable_alias(ref.local_path, str(tmp_path / "work"))).name for ref in refs}
    assert names == {"plain.wav", "caf\\xe9-news.wav"}


def test_files_start_largest_first_and_equal_sizes_keep_their_order():
    from flows.models import SourceRef
    from flows.sources import largest_first

    refs = [SourceRef(uri=f"s3://b/{name}", size_bytes=size)
            for name, size in [("a", 10), ("b", 5_000_000), ("c", 10), ("d", 0), ("e", 70)]]
    assert [r.uri[-1] for r in largest_first(refs)] == ["b", "e", "a", "c", "d"]


def test_a_file_name_that_is_not_utf8_is_processed_and_named(puresound_env):
    src = puresound_env / "in"
    src.mkdir()
    raw = os.fsdecode(b"caf\xe9-news.wav")  # Latin-1 bytes, invalid as UTF-8
    write_wav(src / "tmp.wav", pink_noise(3, 44100, level_dbfs=-24), 44100)
    os.rename(os.fsencode(src / "tmp.wav"), os.fsencode(src) + b"/caf\xe9-news.wav")
    write_wav(src / "plain.wav", pink_noise(3, 44100, level_dbfs=-24, seed=9), 44100)
    out = puresound_env / "out"
    assert run_cli("voice", str(src), "--output", str(out)).exit_code == 0
    batch = batch_report(out, "voice")
    assert batch["counts"]["published"] == 2
    names = sorted(Path(s["path"]).name for s in batch["sources"])
    assert names == ["caf\\xe9-news.wav", "plain.wav"]
    assert os.listdir(src) and (src / raw).is_file()  # the source is untouched


def test_what_cannot_pass_is_rejected_before_rendering(puresound_env):
    src = puresound_env / "in"
    src.mkdir()
    write_wav(src / "float_master.wav", pink_noise(4, 48000, level_dbfs=-20), 48000, subtype="FLOAT")
    write_wav(src / "pcm_master.wav", pink_noise(4, 48000, level_dbfs=-20, seed=2), 48000, subtype="PCM_24")
    out = puresound_env / "out"
    assert run_cli("archive-flac", str(src), "--output", str(out)).exit_code == 0
    by_name = {Path(s["path"]).name: s for s in batch_report(out, "archive-flac")["sources"]}
    assert by_name["pcm_master.wav"]["verdict"] == "published"
    assert by_name["float_master.wav"]["verdict"] == "rejected"
    assert by_name["float_master.wav"]["failed_rules"] == ["lossless_source"]
    assert "pcm_f32le" in by_name["float_master.wav"]["reason"]
    assert not list((puresound_env / "state").rglob("float_master*.flac"))  # nothing was rendered

    quiet = puresound_env / "quiet"
    quiet.mkdir()
    write_wav(quiet / "tone-85dbfs.wav", sine(-85, 10, 48000), 48000, subtype="PCM_24")
    assert run_cli("podcast", str(quiet), "--output", str(out)).exit_code == 0
    source = batch_report(out, "podcast")["sources"][0]
    assert source["verdict"] == "rejected" and source["failed_rules"] == ["loudness_measurable"]


def _processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigterm_stops_the_run_and_its_worker_processes_cleanly(puresound_env, prefect_server):
    from prefect.settings import PREFECT_API_URL

    src = puresound_env / "in"
    src.mkdir()
    for name in ("long1.wav", "long2.wav"):  # 10 min each: minutes to render, in two worker processes
        write_wav(src / name, pink_noise(600, 44100, level_dbfs=-24, seed=len(name)), 44100)
    out = puresound_env / "out"
    marker = f"PURESOUND_TEST_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PURESOUND_WORKERS": "2",
           "PURESOUND_TASK_RUNNER": "process", "PURESOUND_STATE_DIR": str(puresound_env / "state"),
           marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen([sys.executable, "-m", "puresound.cli", "run", "podcast", str(src), "--output", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    renders = puresound_env / "state" / "renders"
    deadline = time.monotonic() + 240
    while not list(renders.rglob("*.attempt*")) and time.monotonic() < deadline:  # wait for an encode to start
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
        time.sleep(0.2)
    assert list(renders.rglob("*.attempt*")), "no render started within 240 s"
    workers = [pid for pid in _processes_with(marker) if pid != proc.pid]
    assert workers, "the batch runs in worker processes"
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 1, output
    assert not [p for p in renders.rglob("*") if p.is_file()], "partial renders left in the work area"
    batch = batch_report(out, "podcast")
    assert batch["stopped"] and {s["verdict"] for s in batch["sources"]} == {"failed"}
    assert all("SIGTERM" in s["reason"] for s in batch["sources"]), batch["sources"]
    with sqlite3.connect(puresound_env / "state" / "lineage.sqlite") as db:
        statuses = [row[0] for row in db.execute("select status from runs")]
    assert statuses == ["cancelled"]
    deadline = time.monotonic() + 30
    while _processes_with(marker) and time.monotonic() < deadline:  # exited workers are reaped asynchronously
        time.sleep(0.2)
    assert _processes_with(marker) == [], "worker processes outlived the run"


def test_a_verdict_the_machine_may_have_caused_is_not_cached(puresound_env, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    add_user_preset(monkeypatch, puresound_env / "presets", "hasty",
                    "validation: {decode_timeout_s: 0.000001}\nloudness: {target_lufs: -16}\n"
                    "renditions:\n  - name: mp3\n    encoder: {codec: mp3, bitrate_kbps: 128, sample_rate_hz: 44100}\n")
    src = puresound_env / "in"
    src.mkdir()
    write_wav(src / "slow.wav", pink_noise(3, 44100, level_dbfs=-24), 44100)
    out = puresound_env / "out"
    for _ in range(2):
        assert run_cli("hasty", str(src), "--output", str(out)).exit_code == 0
        source = batch_report(out, "hasty")["sources"][0]
        assert source["verdict"] == "rejected" and "decode_timeout" in source["failed_rules"], source
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[batch_report(out, "hasty")["flow_run_id"]])))
        inspect_states = [r.state.name for r in runs if r.name.startswith("inspect ") and r.state is not None]
        assert inspect_states and "Cached" not in inspect_states, inspect_states
