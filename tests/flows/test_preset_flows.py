"""Preset flows end to end under a real Prefect server, through the ``puresound`` CLI."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import scipy.signal
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from puresound.cli import app
from puresound_core.audio import decode
from tests.conftest import pink_noise, sine, write_wav
from tests.flows.helpers import add_user_preset, batch_report, run_cli, runner

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _independent_true_peak_dbtp(audio: np.ndarray) -> float:
    """4x oversampling with scipy's Kaiser-windowed polyphase filter (not the BS.1770 one)."""
    return 20 * np.log10(np.abs(scipy.signal.resample_poly(audio, 4, 1, axis=1)).max())


@pytest.mark.slow
def test_podcast_over_the_corpus_publishes_compliant_renditions(puresound_env, corpus):
    out = puresound_env / "out"
    result = run_cli("podcast", str(corpus / "music"), str(corpus / "speech"), "--output", str(out), "--workers", "2")
    assert result.exit_code == 0, result.output
    batch = batch_report(out, "podcast")
    assert batch["counts"]["published"] == len(batch["sources"]) >= 15
    published = [r for s in batch["sources"] for r in s["renditions"]]
    assert len(published) == 2 * len(batch["sources"])
    for source in batch["sources"]:
        as_played = {}
        for rendition in source["renditions"]:
            path = Path(rendition["uri"].removeprefix("file://"))
            audio, rate = decode(path)
            # Measured as heard on two loudspeakers: a mono file is dual-mono.
            stereo = np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio
            lufs = pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(stereo.T.astype(np.float64))
            assert abs(lufs + 16.0) <= 1.0, (path, lufs)
            assert rendition["true_peak_dbtp"] <= -1.0, path
            assert _independent_true_peak_dbtp(audio) <= -0.9, path
            as_played[rendition["name"]] = lufs
        assert abs(as_played["mp3-128k"] - as_played["opus-48k-mono"]) <= 0.5, (source["path"], as_played)


def test_bad_corpus_every_file_has_a_verdict_and_nothing_rejected_is_published(puresound_env, corpus):
    out = puresound_env / "out"
    result = run_cli("podcast", str(corpus / "bad"), "--output", str(out))
    assert result.exit_code == 0, result.output
    batch = batch_report(out, "podcast")
    by_name = {Path(s["path"]).name: s for s in batch["sources"]}
    assert set(by_name) == {p.name for p in (corpus / "bad").iterdir()}
    for name, source in by_name.items():
        assert source["verdict"] in ("published", "rejected"), (name, source["reason"])
        if source["verdict"] == "rejected":
            assert source["failed_rules"] and name in source["reason"]
            folder = next((out / "podcast").glob(f"{Path(name).stem}-*"))
            assert [p.name for p in folder.iterdir()] == ["report.json"]
    assert set(by_name["truncated_half.wav"]["failed_rules"]) == {"declared_duration", "decode_errors"}


def _task_run_states(flow_run_id: str, timeout_s: float = 30.0) -> dict[str, list[str]]:
    """Task run name prefix -> state names, once every task run's state has reached the server.

    Task run states arrive through events, asynchronously: poll until none is missing.
    """
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if all(run.state is not None for run in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.split(" ", 1)[0], []).append(run.state.name)  # "validate tuxi.ogg"
    return states


def test_second_run_does_no_audio_work_and_writes_nothing_new(puresound_env, monkeypatch):
    import flows.presets
    from flows.runner import batch_task_runner

    kinds = []  # records the runner each batch asked for; builds it unchanged
    monkeypatch.setattr(flows.presets, "batch_task_runner", lambda kind, *a, **k: kinds.append(kind)
                        or batch_task_runner(kind, *a, **k))
    src = puresound_env / "in"
    shutil.copytree(EXAMPLES, src)
    (src / "notes.wav").write_text("not audio")  # rejected by a validation rule
    write_wav(src / "tone-85dbfs.wav", sine(-85, 10, 48000), 48000, subtype="PCM_24")  # by a plan rule
    out = puresound_env / "out"
    verdicts = []
    for _ in range(2):
        assert run_cli("podcast", str(src), "--output", str(out), "--workers", "2").exit_code == 0
        verdicts.append({Path(s["path"]).name: (s["verdict"], s["failed_rules"], s["reason"])
                         for s in batch_report(out, "podcast")["sources"]})
        if len(verdicts) == 1:
            first = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp3")}
    assert verdicts[0]["notes.wav"][:2] == ("rejected", ["decodable"])
    assert verdicts[0]["tone-85dbfs.wav"][:2] == ("rejected", ["loudness_measurable"])
    assert verdicts[1] == verdicts[0]
    states = _task_run_states(batch_report(out, "podcast")["flow_run_id"])
    for name in ("inspect", "plan", "render"):
        assert states[name] and set(states[name]) == {"Cached"}, (name, states[name])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp3")} == first
    # Nothing to render, rejected files included: no worker processes are started for the second run.
    assert kinds == ["process", "thread"]
    # A render removed from the work area: worker processes again, and the file is rendered again.
    next((puresound_env / "state" / "renders").rglob("*.opus")).unlink()
    assert run_cli("podcast", str(src), "--output", str(out), "--workers", "2").exit_code == 0
    assert kinds == ["process", "thread", "process"]
    states = _task_run_states(batch_report(out, "podcast")["flow_run_id"])
    assert "Completed" in states["render"], states["render"]


def test_another_work_area_renders_into_itself_not_from_the_first(puresound_env, monkeypatch, tmp_path):
    # Both runs share Prefect's result storage (the session's), whose cache keys hold no paths.
    source = str(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac")
    assert run_cli("voice", source, "--output", str(puresound_env / "out")).exit_code == 0
    first = list((puresound_env / "state" / "renders").rglob("*.opus"))
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "other-state"))
    assert run_cli("voice", source, "--output", str(tmp_path / "out2")).exit_code == 0
    second = list((tmp_path / "other-state" / "renders").rglob("*.opus"))
    assert len(first) == len(second) == 1
    first[0].unlink()  # the first area no longer holds anything the second depends on
    published = next((tmp_path / "out2").rglob("*.opus"))
    assert published.read_bytes() == second[0].read_bytes()


def test_rendition_failing_verification_fails_the_run_and_names_the_file(puresound_env, monkeypatch):
    # A noise floor under -100 dBFS cannot be met by noise: verification fails after rendering.
    add_user_preset(monkeypatch, puresound_env / "presets", "strict",
                    "loudness: {target_lufs: -16, tolerance_lu: 1, ceiling_dbtp: -1, noise_floor_max_dbfs: -100}\n"
                    "renditions:\n  - name: mp3\n    encoder: {codec: mp3, bitrate_kbps: 128, sample_rate_hz: 44100}\n")
    src = puresound_env / "in"
    src.mkdir()
    write_wav(src / "hiss.wav", pink_noise(4, 44100, level_dbfs=-20), 44100)
    out = puresound_env / "out"
    result = run_cli("strict", str(src), "--output", str(out))
    assert result.exit_code == 1
    source = batch_report(out, "strict")["sources"][0]
    assert source["verdict"] == "failed" and "noise floor" in source["reason"] and "hiss" in source["reason"]
    assert not list((out / "strict").glob("hiss-*/*.mp3"))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(batch_report(out, "strict")["flow_run_id"])
    assert flow_run.state.is_failed() and "hiss.wav" in flow_run.state.message


def test_lineage_from_rendition_back_to_source_and_forward(puresound_env):
    out = puresound_env / "out"
    assert run_cli("voice", str(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac"), "--output", str(out)).exit_code == 0
    rendition = next(out.rglob("*.opus"))
    back = json.loads(runner.invoke(app, ["lineage", "--json", str(rendition)]).output)
    assert back["matched"] == "rendition"
    assert back["source"]["locations"] == [(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac").resolve().as_uri()]
    forward = json.loads(runner.invoke(app, ["lineage", "--json", str(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac")]).output)
    assert forward["matched"] == "source"
    assert [(r["preset"], r["rendition"]) for r in forward["renditions"]] == [("voice", "opus-32k-mono")]
    assert forward["renditions"][0]["flow_run_id"] == batch_report(out, "voice")["flow_run_id"]
    # The orchestrator recorded the same lineage as an asset materialisation event.
    source_uri = (EXAMPLES / "en-US_espeak-ng_news-bulletin.flac").resolve().as_uri()
    event = _wait_for_materialization(rendition.resolve().as_uri())
    assert source_uri in [r.id for r in event.related]
    # Lineage never calls a rendition published where its object is gone or holds other bytes.
    assert forward["renditions"][0]["object"] == "present"
    rendition.write_bytes(rendition.read_bytes() + b"\0")
    changed = json.loads(runner.invoke(app, ["lineage", "--json", str(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac")]).output)
    assert changed["renditions"][0]["object"] == "changed"
    rendition.unlink()
    shown = runner.invoke(app, ["lineage", str(EXAMPLES / "en-US_espeak-ng_news-bulletin.flac")]).output
    assert "published, object missing" in shown


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


def test_a_run_can_be_followed_logs_artifacts_and_report_html(puresound_env, corpus):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    src = puresound_env / "in"
    src.mkdir()
    (src / "tuxi.ogg").write_bytes((EXAMPLES / "tuxtype__tuxi.ogg").read_bytes())
    (src / "cut.wav").write_bytes((corpus / "bad" / "truncated_half.wav").read_bytes())
    out = puresound_env / "out"
    result = run_cli("podcast", str(src), "--output", str(out))
    assert result.exit_code == 0, result.output
    batch = batch_report(out, "podcast")
    page = (out / "podcast" / "report.html").read_text()
    assert page.count("<svg") == 1  # the published file's plot; the cut one was rejected before analysis
    assert "WAV data chunk declares" in page  # the reason with its measured values
    listed = runner.invoke(app, ["report", str(out)])
    assert listed.exit_code == 0 and (out / "podcast" / "report.html").resolve().as_uri() in listed.output
    flow_run_id = batch["flow_run_id"]
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:  # logs reach the API asynchronously
            logs = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]
            done = {m.split(":")[0] for m in logs if ": rejected in" in m or ": published in" in m}
            if done >= {"cut.wav", "tuxi.ogg"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        task_names = {run.name for run in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
    assert any(m.startswith("tuxi.ogg: published") and "LUFS" in m for m in logs), logs
    assert any(m.startswith("cut.wav: rejected") and "WAV data chunk declares" in m for m in logs), logs
    assert {"podcast-summary", "podcast-report", "podcast-lineage"} <= {a.key for a in artifacts}
    lineage = next(a for a in artifacts if a.key == "podcast-lineage").data
    assert "mp3-128k" in lineage and batch["sources"][1]["renditions"][0]["sha256"][:16] in lineage
    assert {"process tuxi.ogg", "process cut.wav", "inspect tuxi.ogg", "inspect cut.wav",
            "plan tuxi.ogg", "render tuxi.ogg"} <= task_names


def test_a_missing_source_fails_the_run_in_one_line_and_the_run_is_named_after_it(puresound_env):
    from flows.presets import RunRequest, preset_flow
    from puresound_core.presets import BUILTIN_PRESETS

    flow_fn = preset_flow(BUILTIN_PRESETS["voice"])
    state = flow_fn(request=RunRequest(sources=[str(puresound_env / "gone")]), return_state=True)
    assert state.is_failed() and state.message.startswith("cannot list the sources: ")
    assert "\n" not in state.message and "gone" in state.message
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name.startswith("voice gone ")
