"""Preset flows: one Prefect flow per preset (a batch over files / prefixes) and one ingestion flow per preset.

For every input file: fingerprint -> validate -> analyse -> render + encode each rendition
-> verify -> store -> record lineage. Files run in parallel up to ``workers``; a file
rejected by validation is an expected outcome (recorded with its rules, skipped); an
unexpected error on one file does not stop the others, and the flow run then ends Failed
naming those files.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import av
from prefect import flow, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

import puresound_core
from puresound_core.audio import FFMPEG_VERSION
from puresound_core.lineage import LineageStore
from puresound_core.presets import Preset
from puresound_core.storage import list_local_files, sha256_file
from puresound_core.storage.local import NON_AUDIO_SUFFIXES
from puresound.settings import PureSoundSettings, open_storage
from flows.dynamic import entry_name
from tasks.audio import CODE_VERSION, analyze, fingerprint, render_cached, validate
from tasks.publish import fetch_source, record_lineage, store_rendition_as_asset, store_report

Verdict = Literal["published", "rejected", "failed"]

#: In-process hook the CLI sets to drive its progress bar: ``fn(done, total, outcome)``.
progress_listener = None


class RenditionSummary(BaseModel):
    """One rendition in a source's outcome."""

    name: str
    uri: str | None
    sha256: str | None
    size_bytes: int | None
    codec: dict
    integrated_lufs: float | None
    true_peak_dbtp: float | None
    verified: bool
    attempts: int
    retry_reason: str | None
    limiter_active: bool
    max_gain_reduction_db: float
    failed_checks: list[str]


class SourceOutcome(BaseModel):
    """What happened to one input file."""

    path: str
    sha256: str | None = None
    verdict: Verdict
    reason: str = ""
    failed_rules: list[str] = []
    integrated_lufs_in: float | None = None
    true_peak_dbtp_in: float | None = None
    content_class: str | None = None
    renditions: list[RenditionSummary] = []
    warnings: list[str] = []
    seconds: float = 0.0


class BatchReport(BaseModel):
    """Every input of a run with its verdict and reason."""

    preset: str
    preset_version: str
    flow_run_id: str | None
    started_at: str
    finished_at: str
    counts: dict[str, int]
    sources: list[SourceOutcome]
    skipped: list[str] = []


class SourceRef(BaseModel):
    """One input: a local file or an S3 object.

    Attributes
    ----------
    uri : str
        ``file:///...`` or ``s3://bucket/key``.
    path : str or None
        Local path of a file source.
    size_bytes : int
    etag : str or None
        S3 ETag, or ``"{size}-{mtime_ns}"`` for a local file: what lets a re-run skip a known
        source without reading it.
    problem : str or None
        Why the (untrusted) key is refused; such a source is rejected without a download.
    """

    uri: str
    path: str | None = None
    size_bytes: int = 0
    etag: str | None = None
    problem: str | None = None

    @property
    def display(self) -> str:
        """str: the local path, or the URI."""
        return self.path or self.uri

    @property
    def name(self) -> str:
        """str: last path segment."""
        return self.display.rstrip("/").rsplit("/", 1)[-1]


def list_sources(locations: list[str]) -> list[SourceRef]:
    """Inputs from local files / folders and ``s3://bucket/prefix`` locations.

    Parameters
    ----------
    locations : list of str

    Returns
    -------
    list of SourceRef
        S3 keys that fail :func:`untrusted_key_problem` are listed with their ``problem``.

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
    local = [loc for loc in locations if not loc.startswith("s3://")]
    for path in list_local_files(local):
        stat = Path(path).stat()
        refs.append(SourceRef(uri=Path(path).resolve().as_uri(), path=path, size_bytes=stat.st_size,
                              etag=f"{stat.st_size}-{stat.st_mtime_ns}"))
    for loc in (loc for loc in locations if loc.startswith("s3://")):
        bucket, prefix = parse_s3_uri(loc)
        storage = S3Storage(f"s3://{bucket}", client=s3_client())
        for obj in storage.list_objects(prefix):
            if obj.key.endswith("/") or Path(obj.key).suffix.lower() in NON_AUDIO_SUFFIXES:
                continue
            refs.append(SourceRef(uri=obj.uri, size_bytes=obj.size_bytes, etag=obj.etag,
                                  problem=untrusted_key_problem(obj.key)))
    return list({r.uri: r for r in refs}.values())


def _stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:80] or "source"


def _room_tone_warnings(preset: Preset, analysis) -> list[str]:
    if preset.room_tone is None:
        return []
    content = analysis.content
    warnings = []
    for label, measured, (low, high) in (("head", content.leading_silence_s, preset.room_tone.head_s),
                                         ("tail", content.trailing_silence_s, preset.room_tone.tail_s)):
        if not low <= measured <= high:
            warnings.append(f"{label} room tone {measured:.2f} s outside {low:g}-{high:g} s")
    return warnings


_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


def _content_lock(key: str) -> threading.Lock:
    """One lock per content + preset in this process (threads of a batch share the work area)."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


@task(name="process-source")
def process_source(source: SourceRef, preset: Preset, output_dir: str, work_dir: str, database_url: str,
                   run_id: int) -> SourceOutcome:
    """One input through the preset: the per-file pipeline, each step a task."""
    started = time.perf_counter()
    if source.problem is not None:
        return SourceOutcome(path=source.display, verdict="rejected", failed_rules=["unsafe_key"],
                             reason=f"{source.uri!r}: rule 'unsafe_key' failed: {source.problem}")
    if source.path is None:
        path, sha256 = fetch_source(source.uri, work_dir)
    else:
        path, sha256 = source.path, fingerprint(source.path)
    folder = f"{preset.name}/{preset.output_naming.format(stem=_stem(source.name), sha8=sha256[:8])}"
    src_uri = source.uri
    validation = validate(path, sha256, preset.validation)
    source_row = {"sha256": sha256, "uri": src_uri, "size_bytes": Path(path).stat().st_size, "etag": source.etag,
                  "probe": validation.probe.model_dump(mode="json") if validation.probe else {}}
    report = {"source": {"uri": src_uri, "sha256": sha256}, "preset": preset.name,
              "preset_version": preset.version, "code_version": CODE_VERSION,
              "validation": validation.model_dump(mode="json")}
    if not validation.passed:
        outcome = SourceOutcome(path=source.display, sha256=sha256, verdict="rejected",
                                failed_rules=validation.failed_rules,
                                reason="; ".join(r.message for r in validation.failures))
        store_report({**report, "outcome": outcome.model_dump(mode="json")}, f"{folder}/report.json", output_dir)
        record_lineage(database_url, source=source_row, analysis=None, renditions=[], run_id=run_id,
                       code_version=CODE_VERSION)
        return outcome.model_copy(update={"seconds": time.perf_counter() - started})

    # Identical inputs in one batch render once: the second waits, then finds the cached render.
    with _content_lock(f"{sha256}:{preset.fingerprint}"):
        analysis = analyze(path, sha256)
        results = [render_cached(path, sha256, preset, rendition, analysis, work_dir) for rendition in preset.renditions]
        verified = all(r.verification.passed for r in results)
        summaries: list[RenditionSummary] = []
        lineage_rows: list[dict] = []
        for rendition, result in zip(preset.renditions, results, strict=True):
            stored = None
            if verified:  # publish a source's renditions only as a complete, compliant set
                key = f"{folder}/{rendition.name}.{rendition.encoder.extension}"
                stored = store_rendition_as_asset(result.path, key, output_dir, sha256_file(result.path),
                                                  src_uri, sha256)
            loudness = result.verification.loudness
            summaries.append(RenditionSummary(
                name=rendition.name, uri=stored.uri if stored else None, sha256=stored.sha256 if stored else None,
                size_bytes=stored.size_bytes if stored else None, codec=result.settings.model_dump(mode="json"),
                integrated_lufs=loudness.integrated_lufs, true_peak_dbtp=loudness.true_peak_dbtp,
                verified=result.verification.passed, attempts=result.attempts, retry_reason=result.retry_reason,
                limiter_active=result.processing.limiter_active,
                max_gain_reduction_db=result.processing.max_gain_reduction_db,
                failed_checks=[c.message for c in result.verification.failures]))
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
            reason="" if verified else "not published: " + "; ".join(failed_checks),
            integrated_lufs_in=analysis.loudness.integrated_lufs, true_peak_dbtp_in=analysis.loudness.true_peak_dbtp,
            content_class=analysis.content.content_class, renditions=summaries,
            warnings=_room_tone_warnings(preset, analysis) + [s.retry_reason for s in summaries if s.retry_reason])
        store_report({**report, "analysis": analysis.model_dump(mode="json"),
                      "renditions": [r.model_dump(mode="json") for r in results],
                      "outcome": outcome.model_dump(mode="json")}, f"{folder}/report.json", output_dir)
        record_lineage(database_url, source=source_row, analysis=analysis.model_dump(mode="json"),
                       renditions=lineage_rows, run_id=run_id, code_version=CODE_VERSION)
        return outcome.model_copy(update={"seconds": time.perf_counter() - started})


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def summary_rows(outcomes: list[SourceOutcome]) -> list[dict]:
    """Rows of the summary table artifact and the CLI table."""
    rows = []
    for o in outcomes:
        rows.append({
            "file": Path(o.path).name, "verdict": o.verdict,
            "reason": ", ".join(o.failed_rules) if o.verdict == "rejected" else o.reason[:300],
            "LUFS in": _fmt(o.integrated_lufs_in), "dBTP in": _fmt(o.true_peak_dbtp_in),
            "LUFS out": ", ".join(_fmt(r.integrated_lufs) for r in o.renditions),
            "dBTP out": ", ".join(_fmt(r.true_peak_dbtp) for r in o.renditions),
            "renditions": ", ".join(r.name for r in o.renditions if r.uri),
            "sizes kB": ", ".join(f"{r.size_bytes / 1000:.0f}" for r in o.renditions if r.size_bytes),
        })
    return rows


def run_batch(preset: Preset, sources: list[str], output_dir: str | None = None, *,
              skip_published: bool = False):
    """Body of every preset flow (see module docstring); call it inside a flow run.

    Parameters
    ----------
    preset : Preset
    sources : list of str
        Local files / folders and ``s3://bucket/prefix`` locations.
    output_dir : str, optional
        Local folder or ``s3://bucket/prefix``; default ``PURESOUND_OUTPUT_DIR``.
    skip_published : bool
        Nightly ingestion: leave out sources that lineage shows as published by this preset
        version, recognised by URI + ETag (S3) or URI + size + mtime (local) without reading
        them; a local file seen under another name is recognised by its SHA-256.

    Returns
    -------
    prefect.State
        Completed, or Failed naming the files that failed; either carries the
        :class:`BatchReport` as its data.
    """
    settings = PureSoundSettings()
    output = str(output_dir or settings.output_dir)
    if not output.startswith("s3://"):
        output = str(Path(output).resolve())
    work_dir = str(settings.state_dir.resolve())
    database_url = settings.lineage_url
    lineage = LineageStore(database_url)
    refs = list_sources(sources)
    skipped: list[SourceRef] = []
    if skip_published:
        todo = []
        for ref in refs:
            (skipped if _already_published(lineage, ref, preset) else todo).append(ref)
        refs = todo
    started_at = datetime.now(UTC).isoformat()
    run_id = lineage.start_run(
        flow_run_id=str(flow_run.id or "local"), preset_name=preset.name, preset_version=preset.version,
        preset_fingerprint=preset.fingerprint, package_version=puresound_core.__version__,
        pyav_version=av.__version__, ffmpeg_version=FFMPEG_VERSION)
    progress_id = create_progress_artifact(progress=0.0, description=f"{preset.name}: 0 of {len(refs)} files")
    futures = {process_source.submit(ref, preset, output, work_dir, database_url, run_id): ref for ref in refs}
    outcomes: dict[str, SourceOutcome] = {}
    for done, future in enumerate(as_completed(list(futures)), start=1):
        ref = futures[future]
        try:
            outcomes[ref.uri] = future.result()
        except Exception as err:  # one bad file never sinks the batch
            outcomes[ref.uri] = SourceOutcome(path=ref.display, verdict="failed", reason=f"{type(err).__name__}: {err}")
        update_progress_artifact(progress_id, progress=100.0 * done / max(len(refs), 1),
                                 description=f"{preset.name}: {done} of {len(refs)} files")
        if progress_listener is not None:
            progress_listener(done, len(refs), outcomes[ref.uri])
    ordered = [outcomes[r.uri] for r in refs]
    counts = {v: sum(o.verdict == v for o in ordered) for v in ("published", "rejected", "failed")}
    counts["skipped"] = len(skipped)
    counts["new"] = len(refs)
    report = BatchReport(preset=preset.name, preset_version=preset.version, flow_run_id=str(flow_run.id or ""),
                         started_at=started_at, finished_at=datetime.now(UTC).isoformat(), counts=counts,
                         sources=ordered, skipped=[r.uri for r in skipped])
    storage = open_storage(output, settings)
    payload = report.model_dump_json(indent=2).encode()
    storage.put_bytes(payload, f"{preset.name}/report.json")
    storage.put_bytes(payload, f"{preset.name}/runs/{report.flow_run_id or 'local'}.json")
    create_table_artifact(table=summary_rows(ordered), key=f"{preset.name}-summary",
                          description=(f"{preset.name} v{preset.version}: {counts['new']} new, "
                                       f"{counts['skipped']} skipped, {counts['published']} published, "
                                       f"{counts['rejected']} rejected, {counts['failed']} failed"))
    failed = [Path(o.path).name for o in ordered if o.verdict == "failed"]
    lineage.finish_run(run_id, "failed" if failed else "completed")
    if failed:
        return Failed(message=f"{len(failed)} of {len(refs)} files failed: {', '.join(failed)}", data=report)
    return Completed(message=f"{counts['published']} published, {counts['rejected']} rejected, "
                             f"{counts['skipped']} skipped", data=report)


def _already_published(lineage: LineageStore, ref: SourceRef, preset: Preset) -> bool:
    """Known source at this URI with this ETag / size+mtime (or, locally, this content) and published."""
    sha256 = lineage.known_location(uri=ref.uri, etag=ref.etag)
    if sha256 is None and ref.path is not None:
        sha256 = sha256_file(ref.path)  # in doubt: local bytes are cheap to hash, no download involved
    return sha256 is not None and lineage.published(sha256=sha256, preset_name=preset.name,
                                                    preset_version=preset.version)


def _importable_as(fn, name: str) -> None:
    """Make a flow function importable as ``flows.dynamic.<name>`` (what deployments record)."""
    fn.__module__, fn.__name__, fn.__qualname__ = "flows.dynamic", name, name


class RunRequest(BaseModel):
    """What to process: the parameters of a preset flow (a form in the Prefect UI)."""

    sources: list[str] = Field(min_length=1, description="Files, folders or s3://bucket/prefix locations")
    output_dir: str | None = Field(default=None, description="Local folder or s3://bucket/prefix; "
                                                             "default PURESOUND_OUTPUT_DIR")


def preset_flow(preset: Preset, *, workers: int = 2):
    """The Prefect flow of one preset, named after it.

    Parameters
    ----------
    preset : Preset
    workers : int
        Files processed at once (thread pool).

    Returns
    -------
    prefect.Flow
        One parameter, ``request: RunRequest``.
    """
    def body(request: RunRequest):
        return run_batch(preset, request.sources, request.output_dir)

    body.__doc__ = f"{preset.description} ({preset.standard})"
    _importable_as(body, entry_name(preset.name))
    return flow(name=preset.name, flow_run_name=f"{preset.name}-v{preset.version}",
                task_runner=ThreadPoolTaskRunner(max_workers=workers), description=body.__doc__)(body)


def ingest_flow(preset: Preset, *, workers: int = 2):
    """The nightly ingestion flow of one preset, ``ingest-{preset}``.

    Lists ``source`` (a local folder or ``s3://bucket/prefix``), skips what lineage shows as
    published by this preset version without downloading it, processes the rest.

    Parameters
    ----------
    preset : Preset
    workers : int

    Returns
    -------
    prefect.Flow
        Parameters ``source: str`` and ``output_dir: str | None``.
    """
    def body(source: str, output_dir: str | None = None):
        return run_batch(preset, [source], output_dir, skip_published=True)

    body.__doc__ = f"Nightly ingestion for {preset.name}: new sources only."
    _importable_as(body, entry_name(preset.name, ingest=True))
    return flow(name=f"ingest-{preset.name}", flow_run_name=f"ingest-{preset.name}-v{preset.version}",
                task_runner=ThreadPoolTaskRunner(max_workers=workers), description=body.__doc__)(body)

