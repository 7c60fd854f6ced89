"""Preset flows: one Prefect flow per preset (a batch over files / prefixes) and one ingestion flow per preset.

The per-file pipeline is :func:`flows.pipeline.process_source`; this module runs it over a
batch. Files run in parallel up to ``workers``; a file rejected by a rule is an expected
outcome (recorded with its rules and values); an unexpected error on one file does not stop
the others, and the flow run then ends Failed naming those files. SIGTERM stops a run
cleanly: no new file starts, running renders stop at their next block (their ``.part``
files removed), the batch report is written and the lineage run row is closed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from datetime import UTC, datetime
from pathlib import Path

import av
from prefect import flow, get_run_logger
from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

import puresound_core
from flows.dynamic import PART_PREFIX, entry_name
from flows.fanout import fan_out_wanted, part_deployment_exists, part_flow_name, run_parts
from flows.models import BatchReport, RunRequest, SourceOutcome, SourceRef, lineage_markdown, summary_rows
from flows.pipeline import process_source
from flows.recovery import close_orphaned_runs
from flows.runner import batch_task_runner, worker_environment
from flows.sources import already_published, largest_first, list_sources, needs_no_audio_work
from puresound.report_html import render_report_html
from puresound.resources import resources
from puresound_core.audio import FFMPEG_VERSION
from puresound_core.cancel import Cancelled, clear_stop, request_stop, stop_reason, stop_requested
from puresound_core.errors import PureSoundError
from puresound_core.presets import Preset

__all__ = ["BatchReport", "RunRequest", "SourceOutcome", "SourceRef", "ingest_flow", "part_flow", "preset_flow",
           "run_batch", "summary_rows"]

#: ``fn(done, total, outcome)``, called as each file finishes (the CLI's progress bar).
ProgressCallback = Callable[[int, int, SourceOutcome], None]


class _StopOnSigterm:
    """While active (main thread only), SIGTERM asks the batch to stop instead of killing it mid-write."""

    def __init__(self):
        self._previous = None
        self.active = threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.active:
            self._previous = signal.signal(signal.SIGTERM, lambda *_: request_stop("SIGTERM"))
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


def _collect(futures: dict, preset: Preset, on_progress: ProgressCallback | None,
             progress_id) -> dict[str, SourceOutcome]:
    """Each file's outcome as it finishes; an error or a stop is that file's outcome, never the batch's."""
    logger = get_run_logger()
    outcomes: dict[str, SourceOutcome] = {}
    finished = threading.Event()
    watcher = threading.Thread(target=_cancel_queued_on_stop, args=(list(futures), finished), daemon=True,
                               name="puresound-stop-watcher")
    watcher.start()
    try:
        for done, future in enumerate(as_completed(list(futures)), start=1):
            ref = futures[future]
            outcomes[ref.uri] = _outcome(future, ref, logger)
            update_progress_artifact(progress_id, progress=100.0 * done / max(len(futures), 1),
                                     description=f"{preset.name}: {done} of {len(futures)} files")
            if on_progress is not None:
                on_progress(done, len(futures), outcomes[ref.uri])
    finally:
        finished.set()
    return outcomes


def _cancel_queued_on_stop(futures: list, finished: threading.Event, poll_s: float = 0.5) -> None:
    """On a stop, cancel every file's future that is not done (Dask workers never see the stop flag).

    A queued file then never starts. A file already running is not interrupted here: in a
    worker process it stops at its next block (the stop flag reaches it); a running Dask
    future is only released on this side, and its worker finishes it unseen.
    """
    while not finished.wait(poll_s):
        if stop_requested():
            for future in futures:
                wrapped = getattr(future, "wrapped_future", None)
                if wrapped is not None and not wrapped.done():
                    wrapped.cancel()  # a file already running goes on to its end (or its next block)
            return


def _outcome(future, ref: SourceRef, logger) -> SourceOutcome:
    """The file's outcome from its future: its result, or its error or stop as a ``failed`` verdict."""
    try:
        return future.result()
    except (Cancelled, CancelledError) as err:  # a worker knows only that a stop was asked; this process knows why
        reason = f"stopped: {stop_reason()}" if stop_reason() else f"stopped: {err or 'cancelled'}"
        return SourceOutcome(path=ref.display, verdict="failed", reason=reason)
    except Exception as err:  # noqa: BLE001 - one bad file never sinks the batch
        logger.warning("%s: failed: %s: %s", ref.name, type(err).__name__, err)
        return SourceOutcome(path=ref.display, verdict="failed", reason=f"{type(err).__name__}: {err}")


class _Progress:
    """``on_done(ref, outcome)`` of a fanned-out batch: the progress artifact and the caller's callback."""

    def __init__(self, preset: Preset, total: int, on_progress: ProgressCallback | None, progress_id):
        self.preset, self.total, self.on_progress, self.progress_id, self.done = preset, total, on_progress, progress_id, 0

    def __call__(self, ref: SourceRef, outcome: SourceOutcome) -> None:
        self.done += 1
        update_progress_artifact(self.progress_id, progress=100.0 * self.done / max(self.total, 1),
                                 description=f"{self.preset.name}: {self.done} of {self.total} files")
        if self.on_progress is not None:
            self.on_progress(self.done, self.total, outcome)


def run_batch(preset: Preset, sources: list[str], output_dir: str | None = None, *,
              skip_published: bool = False, on_progress: ProgressCallback | None = None, workers: int | None = None,
              part_of: str | None = None):
    """Body of every preset flow (see module docstring); call it inside a flow run.

    Parameters
    ----------
    preset : Preset
    sources : list of str
        Local files / folders and ``s3://bucket/prefix`` locations.
    output_dir : str, optional
        Local folder or ``s3://bucket/prefix``; default ``PURESOUND_OUTPUT_DIR``. Files inside
        it (and inside the work area) are never taken as sources.
    skip_published : bool
        Nightly ingestion: leave out sources that lineage shows as published by this preset
        version, recognised by URI + ETag (S3) or URI + size + mtime (local) without reading
        them; a local file seen under another name is recognised by its SHA-256.
    on_progress : callable, optional
        ``fn(done, total, outcome)`` after each file.
    workers : int, optional
        Files at once; default ``PURESOUND_WORKERS`` (the number of cores). With
        ``PURESOUND_TASK_RUNNER=process`` (the default) they run in worker processes
        (:mod:`flows.runner`).
    part_of : str, optional
        Flow run id of the batch this run is a part of (:mod:`flows.fanout`): it writes only
        its own ``runs/{id}.json`` report, no "latest" report or keyed artifacts, and never
        fans out again.

    Returns
    -------
    prefect.State
        Completed, or Failed naming the files that failed (or that the run was stopped);
        either carries the :class:`BatchReport` as its data.
    """
    logger = get_run_logger()
    shared = resources()
    settings = shared.settings
    output = str(output_dir or settings.output_dir)
    if not output.startswith("s3://"):
        output = str(Path(output).resolve())
    work_dir = str(settings.state_dir.resolve())
    database_url = settings.lineage_url
    lineage = shared.lineage(database_url)
    exclude = [work_dir] + ([output] if not output.startswith("s3://") else [])
    try:
        refs, excluded = list_sources(sources, exclude=exclude, follow_symlinks=settings.follow_symlinks)
    except (FileNotFoundError, PermissionError, PureSoundError) as err:
        logger.error("cannot list the sources: %s", err)  # one line, no traceback: the input is wrong
        return Failed(message=f"cannot list the sources: {err}")
    if part_of is not None:  # exactly the files the batch gave this part (an S3 key is also a prefix of others)
        wanted = set(sources)
        refs = [r for r in refs if r.uri in wanted]
    if excluded:
        logger.info("%d files inside the output folder or work area were not taken as sources", len(excluded))
    skipped: list[SourceRef] = []
    if skip_published:
        todo = []
        for ref in refs:
            (skipped if already_published(lineage, ref, preset) else todo).append(ref)
        refs = todo
    logger.info("%s v%s: %d files to process, %d skipped", preset.name, preset.version, len(refs),
                len(skipped) + len(excluded))
    started_at = datetime.now(UTC).isoformat()
    run_id = lineage.start_run(
        flow_run_id=str(flow_run.id or "local"), preset_name=preset.name, preset_version=preset.version,
        preset_fingerprint=preset.fingerprint, package_version=puresound_core.__version__,
        pyav_version=av.__version__, ffmpeg_version=FFMPEG_VERSION,
        worker=f"{os.environ.get('PREFECT__WORKER_NAME') or 'no worker'}@{socket.gethostname()}")
    try:
        close_orphaned_runs(lineage, current_flow_run_id=str(flow_run.id or ""), current_run_id=run_id)
    except Exception as err:  # noqa: BLE001 - housekeeping of earlier runs never fails this one
        logger.warning("could not close lineage rows of earlier runs: %s: %s", type(err).__name__, err)
    outcomes: dict[str, SourceOutcome] = {}
    status = "failed"
    clear_stop()
    try:
        with _StopOnSigterm():
            progress_id = create_progress_artifact(progress=0.0, description=f"{preset.name}: 0 of {len(refs)} files")
            here = refs
            if part_of is None and fan_out_wanted(settings, len(refs)) and part_deployment_exists(preset):
                parted, here = run_parts(
                    preset, refs, output, files_per_run=settings.fanout_files_per_run,
                    crash_retries=settings.fanout_crash_retries, read_report=shared.storage(output).get_bytes,
                    start_timeout_s=settings.fanout_start_timeout_s,
                    pending_timeout_s=settings.fanout_pending_timeout_s,
                    on_done=_Progress(preset, len(refs), on_progress, progress_id))
                outcomes.update(parted)
            if here and not stop_requested():
                kind = settings.task_runner
                if kind == "process" and all(needs_no_audio_work(lineage, ref, preset, work_dir) for ref in here):
                    # Cache lookups and copies only: starting worker processes would cost more than the work.
                    kind = "thread"
                    logger.info("every file is rendered or rejected already: threads, no worker processes")
                runner = batch_task_runner(kind, workers or settings.workers, len(here),
                                           dask_address=settings.dask_address)
                with worker_environment(runner), runner:
                    futures = {runner.submit(process_source, {"source": ref, "preset": preset, "output_dir": output,
                                                              "work_dir": work_dir, "database_url": database_url,
                                                              "run_id": run_id}): ref for ref in largest_first(here)}
                    outcomes.update(_collect(futures, preset, on_progress, progress_id))
            for ref in here:  # handed back by the fan-out, then a stop came before they could run
                outcomes.setdefault(ref.uri, SourceOutcome(path=ref.display, verdict="failed",
                                                           reason=f"stopped: {stop_reason() or 'stop requested'}"))
        stopped = "SIGTERM: files not finished were abandoned" if stop_requested() else None
        ordered = [outcomes[r.uri] for r in refs]
        counts = {v: sum(o.verdict == v for o in ordered) for v in ("published", "rejected", "failed")}
        counts["skipped"] = len(skipped) + len(excluded)
        counts["new"] = len(refs)
        report = BatchReport(preset=preset.name, preset_version=preset.version, flow_run_id=str(flow_run.id or ""),
                             started_at=started_at, finished_at=datetime.now(UTC).isoformat(), counts=counts,
                             sources=ordered, skipped=[r.uri for r in skipped] + excluded, stopped=stopped,
                             loudness_target=preset.loudness.model_dump(mode="json"))
        storage = shared.storage(output)
        payload = report.model_dump_json(indent=2).encode()
        page = render_report_html(report.model_dump(mode="json"), plot_cache_dir=Path(work_dir) / "plots").encode()
        html = storage.put_bytes(page, f"{preset.name}/runs/{report.flow_run_id or 'local'}.html")
        storage.put_bytes(payload, f"{preset.name}/runs/{report.flow_run_id or 'local'}.json")
        if part_of is None:  # a part's report is its batch's to aggregate, not the preset's latest
            storage.put_bytes(payload, f"{preset.name}/report.json")
            html = storage.put_bytes(page, f"{preset.name}/report.html")
        create_table_artifact(table=summary_rows(ordered), key=None if part_of else f"{preset.name}-summary",
                              description=(f"{preset.name} v{preset.version}: {counts['new']} new, "
                                           f"{counts['skipped']} skipped, {counts['published']} published, "
                                           f"{counts['rejected']} rejected, {counts['failed']} failed"))
        create_link_artifact(link=html.uri, link_text=f"{preset.name} report.html",
                             key=None if part_of else f"{preset.name}-report",
                             description="Loudness over time of every source and rendition, verdicts and reasons")
        create_markdown_artifact(markdown=lineage_markdown(report),
                                 key=None if part_of else f"{preset.name}-lineage",
                                 description="Where every published rendition came from")
        logger.info("report: %s", html.uri)
        failed = [Path(o.path).name for o in ordered if o.verdict == "failed"]
        status = "cancelled" if stopped else ("failed" if failed else "completed")
        logger.info("%s: %d published, %d rejected, %d failed, %d skipped", preset.name, counts["published"],
                    counts["rejected"], counts["failed"], counts["skipped"])
    finally:
        lineage.finish_run(run_id, status)
        clear_stop()
    if stopped:
        return Failed(message=f"stopped by {stopped}; {counts['published']} published", data=report)
    if failed:
        return Failed(message=f"{len(failed)} of {len(refs)} files failed: {', '.join(failed)}", data=report)
    return Completed(message=f"{counts['published']} published, {counts['rejected']} rejected, "
                             f"{counts['skipped']} skipped", data=report)


class _LocalCallback:
    """A callback that stays in this process.

    Prefect pickles the flow (and so its function's closure) into each task worker process;
    a progress callback holding a console cannot be pickled and is not needed there, so the
    copy a worker gets does nothing.
    """

    def __init__(self, fn: ProgressCallback | None):
        self.fn = fn

    def __call__(self, done: int, total: int, outcome: SourceOutcome) -> None:
        if self.fn is not None:
            self.fn(done, total, outcome)

    def __reduce__(self):
        return (_LocalCallback, (None,))


#: Names Prefect generates for runs nobody named (``generate_slug(2)``: "witty-okapi").
_GENERATED_NAME = re.compile(r"^[a-z]+-[a-z]+$")


def _run_namer(preset: Preset, first_source):
    """``flow_run_name`` callable: a name typed in the UI is kept; otherwise preset, first source and date."""
    def name() -> str:
        current = flow_run.name
        if current and not _GENERATED_NAME.match(current):
            return current
        try:
            source = first_source(flow_run.parameters)
        except (KeyError, IndexError, TypeError, AttributeError):
            source = "?"
        label = source.rstrip("/").rsplit("/", 1)[-1] or source
        return f"{preset.name} {label} {datetime.now(UTC):%Y-%m-%d %H:%M}"
    return name


def _first_request_source(parameters: dict) -> str:
    request = parameters["request"]
    return (request.sources if isinstance(request, RunRequest) else request["sources"])[0]


def _importable_as(fn, name: str) -> None:
    """Make a flow function importable as ``flows.dynamic.<name>`` (what deployments record)."""
    fn.__module__, fn.__name__, fn.__qualname__ = "flows.dynamic", name, name


def preset_flow(preset: Preset, *, workers: int | None = None, on_progress: ProgressCallback | None = None):
    """The Prefect flow of one preset, named after it.

    Parameters
    ----------
    preset : Preset
    workers : int, optional
        Files processed at once; default ``PURESOUND_WORKERS`` read when the run starts.
    on_progress : callable, optional
        ``fn(done, total, outcome)`` after each file (the CLI's progress bar).

    Returns
    -------
    prefect.Flow
        One parameter, ``request: RunRequest``.
    """
    progress = _LocalCallback(on_progress)

    def body(request: RunRequest):
        return run_batch(preset, request.sources, request.output_dir, on_progress=progress, workers=workers)

    body.__doc__ = f"{preset.description} {preset.summary()}. Follows: {preset.standard}."
    _importable_as(body, entry_name(preset.name))
    return flow(name=preset.name, flow_run_name=_run_namer(preset, _first_request_source),
                description=body.__doc__)(body)


def ingest_flow(preset: Preset, *, workers: int | None = None):
    """The nightly ingestion flow of one preset, ``ingest-{preset}``.

    Lists ``source`` (a local folder or ``s3://bucket/prefix``), skips what lineage shows as
    published by this preset version without downloading it, processes the rest.

    Parameters
    ----------
    preset : Preset
    workers : int, optional
        As :func:`preset_flow`.

    Returns
    -------
    prefect.Flow
        Parameters ``source: str`` and ``output_dir: str | None``.
    """
    def body(source: str, output_dir: str | None = None):
        return run_batch(preset, [source], output_dir, skip_published=True, workers=workers)

    body.__doc__ = f"Nightly ingestion for {preset.name} (new sources only): {preset.summary()}."
    _importable_as(body, entry_name(preset.name, ingest=True))
    return flow(name=f"ingest-{preset.name}", flow_run_name=_run_namer(preset, lambda p: p["source"]),
                description=body.__doc__)(body)


def part_flow(preset: Preset):
    """The part flow of one preset, ``part-{preset}``: some files of a fanned-out batch (:mod:`flows.fanout`).

    Parameters
    ----------
    preset : Preset

    Returns
    -------
    prefect.Flow
        Parameters ``sources: list[str]`` (``file://`` or ``s3://`` URIs), ``output_dir: str``
        and ``parent_flow_run_id: str``.
    """
    def body(sources: list[str], output_dir: str, parent_flow_run_id: str):
        return run_batch(preset, sources, output_dir, part_of=parent_flow_run_id)

    body.__doc__ = f"Some files of a {preset.name} batch, run on any worker of the pool: {preset.summary()}."
    _importable_as(body, PART_PREFIX + entry_name(preset.name))
    return flow(name=part_flow_name(preset.name), flow_run_name=_run_namer(preset, lambda p: p["sources"][0]),
                description=body.__doc__)(body)
