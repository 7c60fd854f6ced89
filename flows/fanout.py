"""Fan-out: a large batch split into child flow runs on the work pool, so every worker on every machine takes a share.

A run started from a deployment (nightly ingestion, the UI, the S3 bridge) with at least
``PURESOUND_FANOUT_MIN_FILES`` files submits its files, ``PURESOUND_FANOUT_FILES_PER_RUN`` at a
time, as flow runs of the preset's ``part-{preset}/part`` deployment (``run_deployment``, as
subflows of the batch). Any worker polling the pool takes them; the batch run waits, then
aggregates the children's reports (each child writes ``{preset}/runs/{child id}.json`` to the
output location, which every machine reaches) into one batch report.

Idempotency: each child has the key ``{batch run id}:{preset fingerprint}:{digest of its
sources}``, so a retried batch run finds the children it already submitted instead of
submitting them twice. A child that dies before writing its report (``Crashed``: Prefect's
zombie automation marks a run whose heartbeats stop, see :func:`flows.recovery.zombie_automation`;
or ``Failed`` because its worker died under it) is rescheduled up to
``PURESOUND_FANOUT_CRASH_RETRIES`` times; its renditions are deterministic and published
atomically, so finished ones are not written or recorded twice. A stop of the batch run
(SIGTERM) cancels the children not yet finished.

With one worker whose ``--limit`` is 1, the batch run holds the only slot and its children
never start: after ``PURESOUND_FANOUT_START_TIMEOUT_S`` with no child taken, the batch
cancels them and processes the files itself. Start workers with ``--limit 2`` or more
(``puresound doctor`` warns).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Cancelling, Scheduled

from flows.models import BatchReport, SourceOutcome, SourceRef
from puresound_core.cancel import stop_requested
from puresound_core.presets import Preset

#: Deployment name of every preset's part flow (``part-{preset}/part``).
PART = "part"
#: Seconds between two looks at the children's states.
POLL_S = 2.0


def part_flow_name(preset_name: str) -> str:
    """Flow name of a preset's part flow (the child of a fanned-out batch)."""
    return f"part-{preset_name}"


def part_deployment(preset_name: str) -> str:
    """``flow/deployment`` name of a preset's part deployment."""
    return f"{part_flow_name(preset_name)}/{PART}"


def chunks(refs: list[SourceRef], files_per_run: int) -> list[list[SourceRef]]:
    """Split a batch in order into runs of ``files_per_run`` files (the last may be shorter).

    Parameters
    ----------
    refs : list of SourceRef
    files_per_run : int
        At least 1.

    Returns
    -------
    list of list of SourceRef
    """
    if files_per_run < 1:
        raise ValueError(f"files_per_run must be at least 1, got {files_per_run}")
    return [refs[i:i + files_per_run] for i in range(0, len(refs), files_per_run)]


def idempotency_key(parent_flow_run_id: str, preset: Preset, refs: list[SourceRef]) -> str:
    """Key of one child run: the same batch run submitting the same sources gets the same child.

    Parameters
    ----------
    parent_flow_run_id : str
    preset : Preset
    refs : list of SourceRef

    Returns
    -------
    str
    """
    digest = hashlib.sha256("\n".join(r.uri for r in refs).encode()).hexdigest()[:20]
    return f"{parent_flow_run_id}:{preset.fingerprint}:{digest}"


def fan_out_wanted(settings, files: int) -> bool:
    """Whether this run fans out: ``fanout=auto``, started from a deployment, enough files.

    Parameters
    ----------
    settings : PureSoundSettings
    files : int
        Files to process (after the nightly skip).

    Returns
    -------
    bool
    """
    return settings.fanout == "auto" and deployment.id is not None and files >= settings.fanout_min_files


#: How long the batch keeps looking for its children while the Prefect API does not answer.
API_OUTAGE_S = 600.0


@dataclass
class _Child:
    refs: list[SourceRef]
    flow_run_id: UUID
    reschedules: int = 0
    pending_state: UUID | None = None  # the Pending state being timed, and since when (monotonic)
    pending_since: float = 0.0
    outcomes: dict[str, SourceOutcome] = field(default_factory=dict)


def part_deployment_exists(preset: Preset) -> bool:
    """True when the server has the preset's part deployment (registered by ``prefect deploy`` / ``serve``)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(part_deployment(preset.name))
        except ObjectNotFound:
            return False
    return True


def run_parts(preset: Preset, refs: list[SourceRef], output: str, *, files_per_run: int, crash_retries: int,
              read_report: Callable[[str], bytes | None], start_timeout_s: float = 600.0,
              pending_timeout_s: float = 180.0,
              on_done: Callable[[SourceRef, SourceOutcome], None] | None = None,
              poll_s: float = POLL_S) -> tuple[dict[str, SourceOutcome], list[SourceRef]]:
    """Submit the batch's files as child runs of the part deployment and wait for all of them.

    Parameters
    ----------
    preset : Preset
    refs : list of SourceRef
    output : str
        Output location passed to every child (a shared folder or ``s3://``).
    files_per_run : int
    crash_retries : int
        Reschedules of a child that ends ``Crashed`` or ``Failed`` without having written its report.
    read_report : callable
        ``fn(key) -> bytes | None`` on the output storage (reads ``{preset}/runs/{id}.json``).
    start_timeout_s : float
        When no child has been taken by a worker this long after submission (no free slot: one
        worker with ``--limit 1`` is busy with this very run), the children are cancelled and
        their files handed back to the caller to process itself.
    pending_timeout_s : float
        A child ``Pending`` this long (claimed by a worker that died before starting it) is
        rescheduled, within ``crash_retries``.
    on_done : callable, optional
        ``fn(ref, outcome)`` as each file's outcome is known.
    poll_s : float
        Seconds between looks at the children's states.

    Returns
    -------
    outcomes : dict of str to SourceOutcome
        Outcomes by URI. A child that ended without a report (died beyond its retries,
        cancelled) gives its sources a ``failed`` outcome naming the child run.
    handed_back : list of SourceRef
        Files of children no worker took within ``start_timeout_s`` (cancelled): the caller's.
    """
    logger = get_run_logger()
    parent = str(flow_run.id)
    children: dict[UUID, _Child] = {}
    for part in chunks(refs, files_per_run):
        run = run_deployment(part_deployment(preset.name), timeout=0, as_subflow=True,
                             idempotency_key=idempotency_key(parent, preset, part),
                             parameters={"sources": [r.uri for r in part], "output_dir": output,
                                         "parent_flow_run_id": parent},
                             tags=["puresound", f"preset:{preset.name}", f"batch:{parent}"])
        children[run.id] = _Child(refs=part, flow_run_id=run.id)
    logger.info("%d files in %d child runs of %s", len(refs), len(children), part_deployment(preset.name))
    outcomes: dict[str, SourceOutcome] = {}
    handed_back: list[SourceRef] = []
    pending = dict(children)
    pause = threading.Event()
    api_down_since: float | None = None
    start_deadline = time.monotonic() + start_timeout_s
    taken = False  # has any worker taken any child?
    with get_client(sync_client=True) as client:
        while pending:
            if stop_requested():
                _stop_children(client, pending, outcomes, on_done,
                               lambda run_id: read_report(f"{preset.name}/runs/{run_id}.json"))
                break
            try:
                runs = _read(client, pending)
            except (httpx.HTTPError, PrefectHTTPStatusError) as err:  # the API is down or busy: look again
                if api_down_since is None:
                    api_down_since = time.monotonic()
                if time.monotonic() - api_down_since > API_OUTAGE_S:
                    raise
                logger.warning("cannot read the child runs (%s: %s); trying again", type(err).__name__, err)
                pause.wait(poll_s)
                continue
            api_down_since = None
            for missing in set(pending) - {r.id for r in runs}:  # deleted from the server
                _finish(pending.pop(missing), outcomes, on_done, f"failed: child run {missing} was deleted")
            taken = taken or any(r.run_count > 0 or (r.state is not None and r.state.type != StateType.SCHEDULED)
                                 for r in runs)
            if not taken and time.monotonic() > start_deadline:
                # Only children still Scheduled now are taken back (one claimed since the last look runs).
                cancelled = 0
                for run in _read(client, pending):
                    if run.state is not None and run.state.type == StateType.SCHEDULED:
                        client.set_flow_run_state(run.id, Cancelled(
                            message="no worker took it: its batch run processes these files"), force=True)
                        handed_back.extend(pending.pop(run.id).refs)
                        cancelled += 1
                    else:
                        taken = True
                if cancelled:
                    logger.warning("no worker took %d child runs in %g s (no free slot?): this run processes their "
                                   "%d files itself", cancelled, start_timeout_s, len(handed_back))
                if not pending:
                    break
                runs = [r for r in runs if r.id in pending]
            for run in runs:
                if run.id not in pending:
                    continue
                child = pending[run.id]
                if run.state is not None and run.state.type == StateType.PENDING:
                    # Claimed by a worker that died before starting it: no heartbeat ever, so no zombie
                    # automation; it would stay Pending forever.
                    if child.pending_state != run.state.id:
                        child.pending_state, child.pending_since = run.state.id, time.monotonic()
                    elif time.monotonic() - child.pending_since > pending_timeout_s:
                        now = client.read_flow_run(run.id).state
                        if now is None or now.id != run.state.id:  # it moved on since the look: not stuck
                            continue
                        if child.reschedules < crash_retries:
                            child.reschedules += 1
                            logger.warning("child run %s Pending for over %g s (its worker died?); rescheduled",
                                           run.name, pending_timeout_s)
                            client.set_flow_run_state(run.id, Scheduled(message="rescheduled by its batch run: "
                                                                                "stuck Pending"), force=True)
                        else:
                            client.set_flow_run_state(run.id, Cancelled(message="stuck Pending"), force=True)
                            _finish(child, outcomes, on_done, f"failed: child run {run.name} ({run.id}) stayed "
                                                              f"Pending past its retries")
                            del pending[run.id]
                    continue
                if run.state is None or not run.state.is_final():
                    continue
                data = read_report(f"{preset.name}/runs/{run.id}.json")
                report = BatchReport.model_validate_json(data) if data else None
                # Died before reporting: Crashed (zombie automation), or Failed under a worker that died.
                # A run that wrote its report before dying has its outcomes: they are used as they are.
                died = report is None and run.state.type in (StateType.CRASHED, StateType.FAILED)
                if died and child.reschedules < crash_retries:  # its process or worker died before it reported
                    child.reschedules += 1
                    logger.warning("child run %s ended %s without a report (%s); rescheduled (%d of %d)", run.name,
                                   run.state.type.value, run.state.message, child.reschedules, crash_retries)
                    client.set_flow_run_state(run.id, Scheduled(message="rescheduled by its batch run: it died"),
                                              force=True)
                    continue
                if report is not None:
                    child.outcomes = {o.path: o for o in report.sources}
                reason = (f"failed: child run {run.name} ({run.id}) ended {run.state.type.value}"
                          f"{': ' + run.state.message if run.state.message else ''} without reporting this file")
                _finish(child, outcomes, on_done, reason)
                del pending[run.id]
            if pending:
                pause.wait(poll_s)
    return outcomes, handed_back


def _read(client, pending: dict) -> list:
    """The pending children's flow runs, as the server has them now."""
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(pending))),
                                 limit=len(pending))


def _stop_children(client, pending: dict, outcomes: dict[str, SourceOutcome], on_done,
                   read_report: Callable[[UUID], bytes | None]) -> None:
    """The batch was stopped: cancel its children (a running one through ``Cancelling``, so its worker kills it).

    A child that finished since the last look keeps its report's outcomes.
    """
    for run in _read(client, pending):
        child = pending[run.id]
        state = run.state.type if run.state is not None else StateType.SCHEDULED
        if state in (StateType.SCHEDULED, StateType.PENDING):
            client.set_flow_run_state(run.id, Cancelled(message="its batch run was stopped"), force=True)
        elif not run.state.is_final():
            client.set_flow_run_state(run.id, Cancelling(message="its batch run was stopped"), force=True)
        elif (data := read_report(run.id)) is not None:
            child.outcomes = {o.path: o for o in BatchReport.model_validate_json(data).sources}
        _finish(child, outcomes, on_done, "stopped: the batch run was stopped before this file ran")
    for child in pending.values():  # deleted from the server
        if not any(ref.uri in outcomes for ref in child.refs):
            _finish(child, outcomes, on_done, "stopped: the batch run was stopped before this file ran")


def _finish(child: _Child, outcomes: dict[str, SourceOutcome], on_done, reason: str) -> None:
    for ref in child.refs:
        outcome = child.outcomes.get(ref.display) or SourceOutcome(path=ref.display, verdict="failed", reason=reason)
        outcomes[ref.uri] = outcome
        if on_done is not None:
            on_done(ref, outcome)
