"""Preset flows end to end under a real Prefect server, through the ``puresound`` CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import scipy.signal
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from puresound.cli import app
from puresound_core.audio import decode
from tests.conftest import pink_noise, write_wav

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


def _batch(out: Path, preset: str) -> dict:
    return json.loads((out / preset / "report.json").read_text())


def _independent_true_peak_dbtp(audio: np.ndarray) -> float:
    """4x oversampling with scipy's Kaiser-windowed polyphase filter (not the BS.1770 one)."""
    return 20 * np.log10(np.abs(scipy.signal.resample_poly(audio, 4, 1, axis=1)).max())


@pytest.mark.slow
def test_podcast_over_the_corpus_publishes_compliant_renditions(puresound_env, corpus):
    out = puresound_env / "out"
    result = _run("podcast", str(corpus / "music"), str(corpus / "speech"), "--output", str(out), "--workers", "2")
    assert result.exit_code == 0, result.output
    batch = _batch(out, "podcast")
    assert batch["counts"]["published"] == len(batch["sources"]) >= 15
    published = [r for s in batch["sources"] for r in s["renditions"]]
    assert len(published) == 2 * len(batch["sources"])
    for rendition in published:
        path = Path(rendition["uri"].removeprefix("file://"))
        audio, rate = decode(path)
        lufs = pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(audio.T.astype(np.float64))
        assert abs(lufs + 16.0) <= 1.0, (path, lufs)
        assert rendition["true_peak_dbtp"] <= -1.0, path
        assert _independent_true_peak_dbtp(audio) <= -0.9, path


def test_bad_corpus_every_file_has_a_verdict_and_nothing_rejected_is_published(puresound_env, corpus):
    out = puresound_env / "out"
    result = _run("podcast", str(corpus / "bad"), "--output", str(out))
    assert result.exit_code == 0, result.output
    batch = _batch(out, "podcast")
    by_name = {Path(s["path"]).name: s for s in batch["sources"]}
    assert set(by_name) == {p.name for p in (corpus / "bad").iterdir()}
    for name, source in by_name.items():
        assert source["verdict"] in ("published", "rejected"), (name, source["reason"])
        if source["verdict"] == "rejected":
            assert source["failed_rules"] and name in source["reason"]
            folder = next((out / "podcast").glob(f"{Path(name).stem}-*"))
            assert [p.name for p in folder.iterdir()] == ["report.json"]
    assert by_name["truncated_half.wav"]["failed_rules"] == ["declared_duration"]


def _task_run_states(flow_run_id: str) -> dict[str, list[str]]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


def test_second_run_does_no_audio_work_and_writes_nothing_new(puresound_env):
    out = puresound_env / "out"
    assert _run("podcast", str(EXAMPLES), "--output", str(out)).exit_code == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp3")}
    assert _run("podcast", str(EXAMPLES), "--output", str(out)).exit_code == 0
    states = _task_run_states(_batch(out, "podcast")["flow_run_id"])
    for name in ("validate", "analyze", "render-rendition"):
        assert states[name] and set(states[name]) == {"Cached"}, (name, states[name])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp3")} == first


def test_rendition_failing_verification_fails_the_run_and_names_the_file(puresound_env):
    # A float source cannot be archived bit-exactly in 24-bit FLAC: verification must say so.
    src = puresound_env / "in"
    src.mkdir()
    write_wav(src / "float_master.wav", pink_noise(4, 48000, level_dbfs=-20), 48000, subtype="FLOAT")
    write_wav(src / "pcm_master.wav", pink_noise(4, 48000, level_dbfs=-20, seed=2), 48000, subtype="PCM_24")
    out = puresound_env / "out"
    result = _run("archive-flac", str(src), "--output", str(out))
    assert result.exit_code == 1
    batch = _batch(out, "archive-flac")
    by_name = {Path(s["path"]).name: s for s in batch["sources"]}
    assert by_name["pcm_master.wav"]["verdict"] == "published"
    assert by_name["float_master.wav"]["verdict"] == "failed"
    assert "decoded samples differ from the source" in by_name["float_master.wav"]["reason"]
    assert not list((out / "archive-flac").glob("float_master-*/*.flac"))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(batch["flow_run_id"])
    assert flow_run.state.is_failed() and "float_master.wav" in flow_run.state.message


def test_lineage_from_rendition_back_to_source_and_forward(puresound_env):
    out = puresound_env / "out"
    assert _run("voice", str(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac"), "--output", str(out)).exit_code == 0
    rendition = next(out.rglob("*.opus"))
    back = json.loads(runner.invoke(app, ["lineage", "--json", str(rendition)]).output)
    assert back["matched"] == "rendition"
    assert back["source"]["locations"] == [(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac").resolve().as_uri()]
    forward = json.loads(runner.invoke(app, ["lineage", "--json", str(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac")]).output)
    assert forward["matched"] == "source"
    assert [(r["preset"], r["rendition"]) for r in forward["renditions"]] == [("voice", "opus-32k-mono")]
    assert forward["renditions"][0]["flow_run_id"] == _batch(out, "voice")["flow_run_id"]
    # The orchestrator recorded the same lineage as an asset materialisation event.
    source_uri = (EXAMPLES / "en-US_espeak-ng_news-bulletin.flac").resolve().as_uri()
    event = _wait_for_materialization(rendition.resolve().as_uri())
    assert source_uri in [r.id for r in event.related]


def _wait_for_materialization(asset_uri: str, timeout_s: float = 30.0):
    """Poll the events API until the materialisation event arrives (events are sent asynchronously)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"]),
                               resource=EventResourceFilter(id=[asset_uri]))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            page = client.read_events(filter=event_filter, limit=50)  # the client default (100) exceeds the server max (50)
            if page.events:
                return page.events[0]
            time.sleep(0.5)
    raise AssertionError(f"no materialization event for {asset_uri} within {timeout_s} s")


def test_unknown_preset_and_missing_path_are_usage_errors(puresound_env):
    assert runner.invoke(app, ["run", "nope", str(EXAMPLES)]).exit_code == 2
    assert runner.invoke(app, ["run", "podcast", "/no/such/dir"]).exit_code == 2
