"""Recovery from a lost worker: Prefect marks its flow run Crashed, lineage closes the run's row.

* :func:`zombie_automation` is the automation of Prefect's "detect zombie flows" guide: a flow
  run that stops sending heartbeats (its process or machine died) is marked ``Crashed`` once
  ``within`` passes without one. Deployment runs send a heartbeat every
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (Prefect's default 180, at least 30), set
  where they run: on the workers. ``puresound setup --heartbeat-s N`` creates the automation
  once per server with ``within`` = 3 N (:func:`zombie_window_s`): a window shorter than the
  workers' heartbeat period would crash healthy runs, so the default N is Prefect's 180
  (detection within 9 minutes); with ``N=30`` on every worker, within 90 s.
* :func:`close_orphaned_runs` runs at the start of every batch: lineage run rows still
  ``running`` whose flow run has ended (``Crashed``, or any final state) are closed with
  that state, so lineage never shows a dead run as running.

A crashed run is then retried (``prefect flow-run retry``, or by its batch run for a part of
a fanned-out batch); renditions are deterministic and published atomically, so what the
crashed run finished is neither written nor recorded twice, and its ``.part`` / attempt
files in the work area are replaced by the retry's.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from puresound_core.lineage import LineageStore

#: Name of the automation :func:`ensure_zombie_automation` creates.
ZOMBIE_AUTOMATION = "puresound: crash flow runs without heartbeats"
#: Prefect's default ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, seconds.
DEFAULT_HEARTBEAT_S = 180
#: Heartbeats a run may miss before it is marked Crashed.
MISSED_HEARTBEATS = 3


def zombie_window_s(heartbeat_s: float) -> float:
    """Seconds without a heartbeat after which a run is Crashed: :data:`MISSED_HEARTBEATS` periods."""
    return MISSED_HEARTBEATS * heartbeat_s


def zombie_automation(within_s: float) -> Automation:
    """The automation that marks a flow run ``Crashed`` when its heartbeats stop.

    Parameters
    ----------
    within_s : float
        Seconds after the last heartbeat with no heartbeat and no final state.

    Returns
    -------
    prefect.automations.Automation
        Not yet created on the server (see :func:`ensure_zombie_automation`).

    Notes
    -----
    Source: Prefect 3 documentation, "How to detect and respond to zombie flows"
    (https://docs.prefect.io/v3/advanced/detect-zombie-flows).
    """
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"A flow run with no heartbeat for {within_s:g} s (its worker or process died) is Crashed, "
                    "so it can be retried. Created by `puresound setup`.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {within_s:g} s: its worker or process died")],
    )


def ensure_zombie_automation(within_s: float) -> tuple[UUID, float, bool]:
    """Create :func:`zombie_automation` on the server unless one of that name exists.

    Parameters
    ----------
    within_s : float
        For a new automation (:func:`zombie_window_s` of the workers' heartbeat period).

    Returns
    -------
    (uuid.UUID, float, bool)
        The automation's id, its window in seconds, and True when this call created it.
    """
    existing = read_zombie_automation()
    if existing is not None:
        return existing.id, existing.trigger.within.total_seconds(), False
    return zombie_automation(within_s).create().id, within_s, True


def read_zombie_automation() -> Automation | None:
    """The automation :func:`ensure_zombie_automation` made on this server, or ``None``."""
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    return existing[0] if existing else None


def close_orphaned_runs(lineage: LineageStore, *, current_flow_run_id: str = "", current_run_id: int | None = None
                        ) -> int:
    """Close lineage run rows whose flow run has ended without closing them (its process died).

    Parameters
    ----------
    lineage : LineageStore
    current_flow_run_id : str
        The flow run calling this. Its own older rows still ``running`` are of an attempt
        that crashed (the run was rescheduled and is running again here): closed ``crashed``.
    current_run_id : int, optional
        This attempt's row, left open.

    Returns
    -------
    int
        Rows closed. Rows of flow runs this server does not know (another server, a
        temporary server of ``puresound run``) are left alone.
    """
    rows = {}
    closed = 0
    for run_id, flow_run_id in lineage.open_runs():
        if flow_run_id == current_flow_run_id:
            if run_id != current_run_id:
                closed += lineage.close_runs([run_id], "crashed")
            continue
        try:
            rows.setdefault(UUID(flow_run_id), []).append(run_id)
        except ValueError:
            continue
    if not rows:
        return closed
    ids = list(rows)
    runs = []
    with get_client(sync_client=True) as client:
        for start in range(0, len(ids), 200):  # the API returns at most `limit` runs (default 200)
            chunk = ids[start:start + 200]
            runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                          limit=len(chunk))
    for run in runs:
        if run.state is not None and run.state.is_final():
            closed += lineage.close_runs(rows[run.id], run.state.type.value.lower())
    return closed
