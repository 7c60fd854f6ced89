"""``puresound doctor``: the settings a production install depends on, checked and explained.

Each check reads, never changes anything (``puresound setup`` creates what is missing), and
never prints a secret: database passwords are masked and S3 credentials are named by where
they come from, not shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from puresound.settings import PureSoundSettings

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report.

    Attributes
    ----------
    name : str
    status : {"ok", "warn", "fail", "skip"}
        ``fail``: a run would fail; ``warn``: runs work but something is lost or serialised
        (per-machine state, no crash detection); ``skip``: not used by this configuration.
    detail : str
    """

    name: str
    status: Status
    detail: str


def masked_url(url: str) -> str:
    """A database URL with its password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _prefect(checks: list[Check], pool: str, settings: PureSoundSettings) -> int:
    """Prefect API, work pool and workers, deployments, automation, concurrency limit; returns online workers."""
    import prefect
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from flows.fanout import part_deployment
    from flows.recovery import ZOMBIE_AUTOMATION

    url = PREFECT_API_URL.value()
    if not url:
        checks.append(Check("Prefect API", "warn", "PREFECT_API_URL is not set: `puresound run` starts a temporary "
                                                   "server per run; deployments and workers need a real one"))
        return 0
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
        if error is not None:
            checks.append(Check("Prefect API", "fail", f"{url} is not reachable: {error}"))
            return 0
        checks.append(Check("Prefect API", "ok", f"{url}, server {client.api_version()}, client {prefect.__version__}"))
        online = 0
        try:
            work_pool = client.read_work_pool(pool)
        except ObjectNotFound:
            checks.append(Check("work pool", "fail", f"no work pool {pool!r}: `puresound setup --pool {pool}`"))
        else:
            workers = client.read_workers_for_work_pool(pool)
            online = sum(w.status.value == "ONLINE" for w in workers)
            names = ", ".join(f"{w.name} ({w.status.value.lower()})" for w in workers) or "none"
            status: Status = "ok" if online >= 2 else "warn"
            hint = "" if online >= 2 else (
                "; a fanned-out batch holds one slot while its parts need others: run 2+ workers or "
                "`prefect worker start --limit 2` or more")
            checks.append(Check("work pool", status, f"{pool} ({work_pool.type}), {online} online worker(s): "
                                                     f"{names}{hint}"))
        missing = []
        from puresound_core.presets import load_presets

        for name in load_presets(settings.presets_dir):
            try:
                client.read_deployment_by_name(part_deployment(name))
            except ObjectNotFound:
                missing.append(name)
        checks.append(Check("part deployments", "warn" if missing else "ok",
                            f"missing for {', '.join(missing)}: batches of these presets run on one worker "
                            "(`prefect deploy --all` or `puresound serve`)" if missing else
                            "every preset can fan out to the work pool"))
        automations = client.read_automations_by_name(ZOMBIE_AUTOMATION)
        heartbeat = prefect.settings.get_current_settings().flows.heartbeat_frequency
        if not automations:
            checks.append(Check("crash detection", "warn", "no zombie automation: a run whose worker dies stays "
                                                           "Running (`puresound setup`)"))
        else:
            within = automations[0].trigger.within.total_seconds()
            if heartbeat and heartbeat * 2 > within:
                checks.append(Check("crash detection", "fail", f"runs here send a heartbeat every {heartbeat} s but "
                                                               f"are Crashed after {within:g} s without one: healthy "
                                                               "runs would be crashed and run twice"))
            else:
                checks.append(Check("crash detection", "ok", f"a run without a heartbeat for {within:g} s is "
                                                             f"Crashed; heartbeats here every {heartbeat} s"))
        limit_name = settings.encode_concurrency_limit
        if limit_name:
            try:
                limit = client.read_global_concurrency_limit_by_name(limit_name)
                checks.append(Check("concurrency limit", "ok", f"{limit_name}: {limit.limit} slots"
                                                               f"{'' if limit.active else ' (inactive)'}"))
            except ObjectNotFound:
                checks.append(Check("concurrency limit", "fail", f"PURESOUND_ENCODE_CONCURRENCY_LIMIT names "
                                                                 f"{limit_name!r}, which does not exist: "
                                                                 f"`prefect gcl create {limit_name} --limit N`"))
        else:
            checks.append(Check("concurrency limit", "skip", "none named (PURESOUND_ENCODE_CONCURRENCY_LIMIT)"))
    return online


def _lineage(checks: list[Check], settings: PureSoundSettings, online_workers: int) -> None:
    from sqlalchemy import create_engine

    from puresound_core.lineage import head_revision

    url = settings.lineage_url
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            from alembic.runtime.migration import MigrationContext

            revision = MigrationContext.configure(connection).get_current_revision()
    except Exception as err:  # noqa: BLE001 - any driver error is the finding
        checks.append(Check("lineage database", "fail", f"{masked_url(url)}: cannot connect: "
                                                        f"{type(err).__name__}: {str(err).splitlines()[0]}"))
        return
    finally:
        engine.dispose()
    head = head_revision()
    state = ("up to date" if revision == head else
             "empty (created at the first run)" if revision is None else
             f"revision {revision}, code expects {head} (migrated at the next run)")
    if engine.dialect.name == "sqlite" and online_workers > 1:
        checks.append(Check("lineage database", "warn", f"{masked_url(url)}: SQLite with {online_workers} workers "
                                                        f"online: each machine keeps its own lineage, so the nightly "
                                                        f"skip depends on which worker runs; set "
                                                        f"PURESOUND_DATABASE_URL=postgresql+psycopg://... ({state})"))
    else:
        checks.append(Check("lineage database", "ok", f"{masked_url(url)} ({engine.dialect.name}, {state})"))


def _state(checks: list[Check], settings: PureSoundSettings, online_workers: int) -> None:
    output = str(settings.output_dir)
    shared = output.startswith("s3://")
    status: Status = "ok" if shared or online_workers < 2 else "warn"
    checks.append(Check("output location", status, f"{output}" + (
        "" if status == "ok" else ": a local folder; with several machines it must be the same shared folder on "
                                  "each (a batch reads its parts' reports from it), or use s3://")))
    checks.append(Check("work area", "ok", f"{settings.state_dir.resolve()} (render cache: per machine unless "
                                           "this folder is shared)"))


def _s3(checks: list[Check], settings: PureSoundSettings) -> None:
    uses_s3 = (str(settings.output_dir).startswith("s3://") or settings.nightly_source_root.startswith("s3://")
               or settings.s3_endpoint_url or settings.aws_credentials_block)
    if not uses_s3:
        checks.append(Check("S3 credentials", "skip", "no S3 location configured"))
        return
    from puresound.settings import aws_session

    try:
        import boto3

        session = aws_session(settings) or boto3.Session(region_name=settings.s3_region)
        credentials = session.get_credentials()
    except Exception as err:  # noqa: BLE001 - the finding
        checks.append(Check("S3 credentials", "fail", f"cannot resolve: {type(err).__name__}: {err}"))
        return
    if credentials is None:
        checks.append(Check("S3 credentials", "fail", "none found in the AWS chain (environment, ~/.aws, "
                                                      "instance role) or PURESOUND_AWS_CREDENTIALS_BLOCK"))
    else:
        source = "Prefect AwsCredentials block" if settings.aws_credentials_block else credentials.method
        checks.append(Check("S3 credentials", "ok", f"resolved from {source} (not shown); endpoint "
                                                    f"{settings.s3_endpoint_url or 'AWS'}"))


def _task_runner(checks: list[Check], settings: PureSoundSettings) -> None:
    """Where a run's files go; for Dask, that prefect-dask is installed and the scheduler's workers can decode."""
    kind = settings.task_runner
    if kind != "dask":
        where = "worker processes" if kind == "process" else "threads of the flow's process"
        checks.append(Check("task runner", "ok", f"{kind}: {settings.workers} files at once in {where}"))
        return
    try:
        import distributed
        import prefect_dask  # noqa: F401 - only its presence is checked
    except ImportError as err:
        checks.append(Check("task runner", "fail", f"dask: prefect-dask is not installed ({err}): "
                                                   "pip install 'puresound[dask]'"))
        return
    if not settings.dask_address:
        checks.append(Check("task runner", "ok", f"dask: a local cluster of {settings.workers} worker processes "
                                                 "per run (PURESOUND_DASK_ADDRESS unset)"))
        return
    try:
        client = distributed.Client(settings.dask_address, timeout=5, set_as_default=False)
    except Exception as err:  # noqa: BLE001 - unreachable or malformed address: a finding
        checks.append(Check("task runner", "fail", f"dask: scheduler {settings.dask_address} does not answer: "
                                                   f"{type(err).__name__}: {err}"))
        return
    try:
        with client:
            daemonic = client.run(_is_daemonic)
    except Exception as err:  # noqa: BLE001 - a worker could not run the check (this package missing there, say)
        checks.append(Check("task runner", "fail", f"dask: scheduler {settings.dask_address} answers, but a worker "
                                                   f"failed the check: {type(err).__name__}: {err}"))
        return
    bad = sorted(address for address, flag in daemonic.items() if flag)
    if not daemonic:
        checks.append(Check("task runner", "warn", f"dask: scheduler {settings.dask_address} has no workers: "
                                                   "runs wait until one joins"))
    elif bad:
        checks.append(Check("task runner", "fail", f"dask: {len(bad)} of {len(daemonic)} workers are daemonic "
                                                   f"({', '.join(bad)}) and cannot start the decode child: start "
                                                   "them with DASK_DISTRIBUTED__WORKER__DAEMON=False"))
    else:
        checks.append(Check("task runner", "ok", f"dask: scheduler {settings.dask_address}, "
                                                 f"{len(daemonic)} worker(s)"))


def _is_daemonic() -> bool:  # pragma: no cover - runs on each Dask worker
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


def run_checks(*, pool: str, settings: PureSoundSettings | None = None) -> list[Check]:
    """Every check, in order: Prefect, work pool and workers, deployments, recovery, task runner, lineage, state, S3.

    Parameters
    ----------
    pool : str
        Work pool the deployments use.
    settings : PureSoundSettings, optional

    Returns
    -------
    list of Check
    """
    settings = settings or PureSoundSettings()
    checks: list[Check] = []
    online = 0
    try:
        online = _prefect(checks, pool, settings)
    except Exception as err:  # noqa: BLE001 - a broken API is a finding, not a crash of the doctor
        checks.append(Check("Prefect API", "fail", f"{type(err).__name__}: {err}"))
    _task_runner(checks, settings)
    _lineage(checks, settings, online)
    _state(checks, settings, online)
    _s3(checks, settings)
    return checks
