"""The per-file pipeline, in one place: fingerprint -> inspect (validate + analyse in one
decode) -> plan -> render -> verify -> store -> record lineage.

Every verdict that can be known before rendering is given before rendering: validation
rules (decoded in an isolated child process, which also measures loudness and content), then
:func:`puresound_core.policy.source_rules` (``lossless_source``, ``source_format``) and
:func:`~puresound_core.policy.plan_rules` (``loudness_measurable``, ``gain_max``,
``max_gain_reduction``). A
source's renditions are published only as a complete, verified set.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.utilities.annotations import quote

from flows.models import RenditionSummary, SourceOutcome, SourceRef, display_name
from flows.runner import content_lock
from puresound_core.cancel import check_stop
from puresound_core.policy import plan_rules, room_tone_warnings, source_rules
from puresound_core.presets import Preset
from puresound_core.storage import sha256_file
from tasks.audio import CODE_VERSION, TransientInspectionError, fingerprint, inspect, plan, render_cached
from tasks.publish import fetch_source, record_lineage, store_rendition_as_asset, store_report


def readable_alias(path: str, work_dir: str) -> str:
    """A path every tool can carry for a local file whose name is not valid UTF-8.

    Reports, task parameters and JSON need text; such a file is reached through a symbolic
    link in the work area named by its display form (``bad\\xff.wav``), which also names it in
    every message. Other paths are returned unchanged.

    Parameters
    ----------
    path : str
        As the OS names it.
    work_dir : str

    Returns
    -------
    str
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    folder = Path(work_dir) / "aliases" / hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    alias = folder / display_name(os.path.basename(path))
    if not alias.is_symlink():
        tmp = folder / f".{alias.name}.{os.getpid()}.{threading.get_ident()}"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.abspath(path), tmp)
        os.replace(tmp, alias)
    return str(alias)


def _rejected(source: SourceRef, sha256: str | None, rules, started: float, analysis=None) -> SourceOutcome:
    loudness = analysis.loudness if analysis is not None else None
    return SourceOutcome(path=source.display, sha256=sha256, verdict="rejected",
                         failed_rules=[r.rule for r in rules], reason="; ".join(r.message for r in rules),
                         seconds=time.perf_counter() - started,
                         integrated_lufs_in=loudness.integrated_lufs if loudness else None,
                         true_peak_dbtp_in=loudness.true_peak_dbtp if loudness else None,
                         series_in=analysis.series if analysis is not None else None)


def _log_outcome(outcome: SourceOutcome) -> None:
    logger = get_run_logger()
    name = Path(outcome.path).name
    if outcome.verdict == "published":
        loud = ", ".join(f"{r.name} {r.integrated_lufs:.1f} LUFS / {r.true_peak_dbtp:.1f} dBTP"
                         + (f" ({r.attempts} attempts)" if r.attempts > 1 else "")
                         for r in outcome.renditions if r.integrated_lufs is not None)
        level_in = "" if outcome.integrated_lufs_in is None else f"{outcome.integrated_lufs_in:.1f} LUFS in -> "
        logger.info("%s: published in %.1f s: %s%s", name, outcome.seconds, level_in, loud or "renditions stored")
    else:
        logger.info("%s: %s in %.1f s: %s", name, outcome.verdict, outcome.seconds, outcome.reason)
    for warning in outcome.warnings:
        logger.info("%s: %s", name, warning)


@task(name="process-source", task_run_name="process {source.name}")
def process_source(source: SourceRef, preset: Preset, output_dir: str, work_dir: str, database_url: str,
                   run_id: int) -> SourceOutcome:
    """One input through the preset: the per-file pipeline, each step a task.

    Parameters
    ----------
    source : SourceRef
    preset : Preset
    output_dir : str
        Local folder or ``s3://bucket/prefix``.
    work_dir : str
        Work area (render cache, downloaded sources).
    database_url : str
        Lineage database.
    run_id : int
        Lineage run row.

    Returns
    -------
    SourceOutcome
        ``rejected`` with the failed rules and their values, ``published``, or ``failed``
        (a rendition missed verification; nothing of that source is published).

    Raises
    ------
    Cancelled
        When the run was asked to stop (SIGTERM) before or during this file.
    """
    started = time.perf_counter()
    get_run_logger().info("%s: started", source.name)
    check_stop()
    if source.problem is not None:
        rule = source.problem_rule
        outcome = SourceOutcome(path=source.display, verdict="rejected", failed_rules=[rule],
                                reason=f"{source.display}: rule '{rule}' failed: {source.problem}")
        _log_outcome(outcome)
        return outcome
    if source.local_path is None:
        path, sha256 = fetch_source(source.uri, work_dir)
    else:
        path = readable_alias(source.local_path, work_dir)
        sha256 = fingerprint(path)
    folder = preset.output_folder(source.name, sha256)
    try:
        inspection = inspect(path, sha256, preset.validation)
    except TransientInspectionError as err:  # rejected for this run, not cached: a later run tries again
        inspection = err.inspection
    validation = inspection.validation
    source_row = {"sha256": sha256, "uri": source.uri, "size_bytes": Path(path).stat().st_size, "etag": source.etag,
                  "probe": validation.probe.model_dump(mode="json") if validation.probe else {}}
    report = {"source": {"uri": source.uri, "sha256": sha256}, "preset": preset.name,
              "preset_version": preset.version, "code_version": CODE_VERSION,
              "validation": validation.model_dump(mode="json")}

    def finish_rejected(rules, analysis=None) -> SourceOutcome:
        outcome = _rejected(source, sha256, rules, started, analysis)
        extra = {"analysis": analysis.model_dump(mode="json")} if analysis is not None else {}
        store_report(quote({**report, **extra, "outcome": outcome.model_dump(mode="json")}),
                     f"{folder}/report.json", output_dir)
        record_lineage(database_url, source=source_row, analysis=quote(extra.get("analysis")), renditions=[],
                       run_id=run_id, code_version=CODE_VERSION)
        _log_outcome(outcome)
        return outcome

    if not validation.passed:
        return finish_rejected(validation.failures)

    # Identical inputs in one batch render once: the second waits, then finds the cached render.
    with content_lock(work_dir, f"{sha256}:{preset.fingerprint}"):
        analysis = inspection.analysis
        problems = source_rules(preset, validation.probe)
        if problems:
            return finish_rejected(problems, analysis)
        plans = plan(path, sha256, preset, quote(analysis))
        problems = plan_rules(preset, plans)
        if problems:
            return finish_rejected(problems, analysis)
        results = render_cached(path, sha256, preset, quote(analysis), work_dir, quote(plans))
        verified = all(r.verification.passed for r in results)
        summaries: list[RenditionSummary] = []
        lineage_rows: list[dict] = []
        for rendition, result in zip(preset.renditions, results, strict=True):
            stored = None
            if verified:  # publish a source's renditions only as a complete, compliant set
                key = f"{folder}/{rendition.name}.{rendition.encoder.extension}"
                stored = store_rendition_as_asset(result.path, key, output_dir, sha256_file(result.path),
                                                  source.uri, sha256)
            loudness = result.verification.loudness
            summaries.append(RenditionSummary(
                name=rendition.name, uri=stored.uri if stored else None, sha256=stored.sha256 if stored else None,
                size_bytes=stored.size_bytes if stored else None, codec=result.settings.model_dump(mode="json"),
                integrated_lufs=loudness.integrated_lufs, single_channel_lufs=result.verification.single_channel_lufs,
                true_peak_dbtp=loudness.true_peak_dbtp, verified=result.verification.passed,
                attempts=result.attempts, retry_reason=result.retry_reason,
                limiter_active=result.processing.limiter_active,
                max_gain_reduction_db=result.processing.max_gain_reduction_db,
                failed_checks=[c.message for c in result.verification.failures],
                series=result.verification.series))
            if stored is not None:
                lineage_rows.append({
                    "source_sha256": sha256, "preset_name": preset.name, "preset_version": preset.version,
                    "rendition_name": rendition.name, "uri": stored.uri, "sha256": stored.sha256,
                    "size_bytes": stored.size_bytes, "codec_json": result.settings.model_dump_json(),
                    "integrated_lufs": loudness.integrated_lufs, "true_peak_dbtp": loudness.true_peak_dbtp,
                    "lra_lu": loudness.lra_lu, "verdict": "published", "attempts": result.attempts})
        failed_checks = [m for s in summaries for m in s.failed_checks]
        outcome = SourceOutcome(
            path=source.display, sha256=sha256, verdict="published" if verified else "failed",
            reason="" if verified else f"{source.name}: not published: " + "; ".join(failed_checks),
            integrated_lufs_in=analysis.loudness.integrated_lufs, true_peak_dbtp_in=analysis.loudness.true_peak_dbtp,
            content_class=analysis.content.content_class, renditions=summaries, series_in=analysis.series,
            warnings=room_tone_warnings(preset, analysis) + [f"{s.name}: {s.retry_reason}" for s in summaries
                                                             if s.retry_reason])
        store_report(quote({**report, "analysis": analysis.model_dump(mode="json"),
                            "plans": [p.model_dump(mode="json") for p in plans],
                            "renditions": [r.model_dump(mode="json") for r in results],
                            "outcome": outcome.model_dump(mode="json")}), f"{folder}/report.json", output_dir)
        record_lineage(database_url, source=source_row, analysis=quote(analysis.model_dump(mode="json")),
                       renditions=lineage_rows, run_id=run_id, code_version=CODE_VERSION)
        outcome = outcome.model_copy(update={"seconds": time.perf_counter() - started})
        _log_outcome(outcome)
        return outcome
