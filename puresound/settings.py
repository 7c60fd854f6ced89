"""The one settings class (``PURESOUND_*`` environment variables), read at the edge."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PureSoundSettings(BaseSettings):
    """Pure Sound settings; every field can be set as ``PURESOUND_<FIELD>``.

    Attributes
    ----------
    output_dir : str
        Where renditions and reports are published (``PURESOUND_OUTPUT_DIR``): a local folder
        or ``s3://bucket/prefix`` (text, not a path: a path would fold ``s3://`` into ``s3:/``).
    state_dir : Path
        Work area: content-addressed renders that cached task results point to, and the
        default SQLite lineage database.
    database_url : str or None
        SQLAlchemy URL of the lineage database (``PURESOUND_DATABASE_URL``), e.g.
        ``postgresql+psycopg://user@host/puresound``; default SQLite in ``state_dir``.
    presets_dir : Path or None
        Folder of user YAML presets (``PURESOUND_PRESETS_DIR``).
    workers : int
        Files processed at once (``PURESOUND_WORKERS``); default the number of cores.
    task_runner : {"process", "thread", "dask"}
        Where a batch's files run (``PURESOUND_TASK_RUNNER``): worker processes (every core;
        the default), threads of the flow's process, or a Dask cluster (``prefect-dask``,
        extra ``dask``: ``pip install -e '.[dask]'``).
    dask_address : str or None
        Scheduler of an existing Dask cluster for ``task_runner=dask``
        (``PURESOUND_DASK_ADDRESS``, e.g. ``tcp://scheduler:8786``), whose workers may be on
        other machines; unset, each run starts a local cluster of ``workers`` processes.
    fanout : {"auto", "off"}
        ``auto``: a run started from a deployment with at least ``fanout_min_files`` files
        splits them into child flow runs of ``fanout_files_per_run`` files, submitted to the
        work pool as the preset's ``part`` deployment, so every worker on every machine takes
        a share (:mod:`flows.fanout`). ``off``: every file runs in the run that listed it.
    fanout_min_files, fanout_files_per_run : int
        See ``fanout``.
    fanout_crash_retries : int
        Times a crashed child run (its worker or process died) is rescheduled.
    fanout_pending_timeout_s : float
        A child run ``Pending`` this long (claimed by a worker that died before starting it)
        is rescheduled, within ``fanout_crash_retries``.
    fanout_start_timeout_s : float
        When no worker has taken any child run this long (no free slot), the batch run
        cancels them and processes their files itself.
    follow_symlinks : bool
        Read symbolic links inside input folders that lead outside them.
    server_startup_timeout_s : float
        How long ``puresound run`` waits for its temporary Prefect server.
    s3_endpoint_url, s3_region : str or None
        S3 endpoint (``PURESOUND_S3_ENDPOINT_URL``) and region; credentials always come from
        the standard AWS chain and are never logged or written to reports.
    s3_sse, s3_kms_key_id : str or None
        Server-side encryption of written objects.
    s3_max_attempts : int
        Attempts per S3 request (botocore standard retries: backoff with jitter).
    aws_credentials_block : str or None
        Name of a Prefect ``AwsCredentials`` block (extra ``aws``: ``pip install -e '.[aws]'``);
        when unset, credentials come from the standard AWS chain.
    encode_concurrency_limit : str or None
        Name of a Prefect global concurrency limit (``prefect gcl create NAME --limit N``)
        that caps renders across all runs; none by default (no per-task API round trip).
    nightly_cron, timezone, nightly_source_root : str
        Schedule and source of the nightly ingestion deployments.
    """

    model_config = SettingsConfigDict(env_prefix="PURESOUND_", extra="ignore")

    output_dir: str = Field(default="puresound-out", description="Published renditions and reports (folder or s3://)")
    state_dir: Path = Field(default=Path.home() / ".puresound", description="Render cache and default lineage DB")
    database_url: str | None = Field(default=None, description="Lineage database URL (SQLAlchemy)")
    presets_dir: Path | None = Field(default=None, description="Folder of user YAML presets")
    workers: int = Field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 32)), ge=1, le=32,
                         description="Files processed at once (default: the number of cores)")
    task_runner: Literal["process", "thread", "dask"] = Field(
        default="process", description="Run a batch's files in worker processes (every core), in threads, "
                                       "or on a Dask cluster (extra `dask`)")
    dask_address: str | None = Field(
        default=None, description="Scheduler of an existing Dask cluster (tcp://host:8786) for task_runner=dask; "
                                  "a local cluster of `workers` processes when unset")
    fanout: Literal["auto", "off"] = Field(
        default="auto", description="Split a deployment run's files into child runs on the work pool")
    fanout_min_files: int = Field(default=4, ge=2, description="Fewest files a run fans out")
    fanout_files_per_run: int = Field(default=2, ge=1, le=1000, description="Files per child run")
    fanout_crash_retries: int = Field(default=1, ge=0, le=10, description="Reschedules of a crashed child run")
    fanout_pending_timeout_s: float = Field(default=180.0, gt=0, description="A child run Pending this long "
                                                                             "(its worker died) is rescheduled")
    fanout_start_timeout_s: float = Field(default=600.0, gt=0, description="With no child run taken by a worker "
                                                                           "this long, the batch runs the files")
    server_startup_timeout_s: float = Field(default=180.0, gt=0, le=3600,
                                            description="Wait for the temporary Prefect server of `puresound run` "
                                                        "(no PREFECT_API_URL) to start")
    follow_symlinks: bool = Field(default=False, description="Read symbolic links in input folders that lead "
                                                             "outside them (off: such links are rejected unread)")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, Ceph...); AWS when unset")
    s3_region: str | None = Field(default=None, description="S3 region; the AWS chain's when unset")
    s3_sse: Literal["AES256", "aws:kms"] | None = Field(default=None, description="Server-side encryption of outputs")
    s3_kms_key_id: str | None = Field(default=None, description="KMS key for s3_sse='aws:kms'")
    s3_max_attempts: int = Field(default=10, ge=1, le=50, description="Attempts per S3 request (retries with jitter)")
    aws_credentials_block: str | None = Field(
        default=None, description="Name of a Prefect AwsCredentials block (prefect-aws) to take S3/SQS credentials from")
    encode_concurrency_limit: str | None = Field(
        default=None, description="Name of a Prefect global concurrency limit every render holds a slot of")
    nightly_cron: str = Field(default="0 2 * * *", description="Cron of the nightly ingestion deployments")
    timezone: str = Field(default="UTC", description="IANA timezone of the nightly cron")
    nightly_source_root: str = Field(default="incoming", description="Nightly source: {root}/{preset} "
                                                                      "(a folder or s3://bucket/prefix)")

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @property
    def lineage_url(self) -> str:
        """str: ``database_url``, or SQLite at ``state_dir/lineage.sqlite``."""
        if self.database_url:
            return self.database_url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.state_dir / 'lineage.sqlite').resolve()}"


def open_storage(target: str, settings: PureSoundSettings | None = None):
    """The Storage for an output location: ``s3://bucket/prefix`` or a local folder.

    Parameters
    ----------
    target : str
    settings : PureSoundSettings, optional

    Returns
    -------
    puresound_core.storage.Storage
    """
    from puresound_core.storage import LocalStorage
    from puresound_core.storage.s3 import S3Storage

    if target.startswith("s3://"):
        settings = settings or PureSoundSettings()
        return S3Storage(target, client=s3_client(settings), sse=settings.s3_sse, kms_key_id=settings.s3_kms_key_id)
    return LocalStorage(target)


def aws_session(settings: PureSoundSettings | None = None):
    """The boto3 session of the configured Prefect ``AwsCredentials`` block, or ``None`` (standard chain).

    Raises
    ------
    StorageError
        When a block is configured but prefect-aws is not installed or the block cannot be loaded.
    """
    from puresound_core.errors import StorageError

    settings = settings or PureSoundSettings()
    if not settings.aws_credentials_block:
        return None
    try:
        from prefect_aws import AwsCredentials
    except ImportError as err:
        raise StorageError("PURESOUND_AWS_CREDENTIALS_BLOCK is set but prefect-aws is not installed "
                           "(pip install -e '.[aws]')") from err
    try:
        return AwsCredentials.load(settings.aws_credentials_block).get_boto3_session()
    except ValueError as err:
        raise StorageError(f"AwsCredentials block {settings.aws_credentials_block!r} cannot be loaded: {err}") from err


def s3_client(settings: PureSoundSettings | None = None):
    """A boto3 S3 client configured from settings (endpoint, region, retries, credentials)."""
    from puresound_core.storage.s3 import make_s3_client

    settings = settings or PureSoundSettings()
    return make_s3_client(endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                          max_attempts=settings.s3_max_attempts, session=aws_session(settings))


def sqs_client(settings: PureSoundSettings | None = None):
    """A boto3 SQS client configured like :func:`s3_client`."""
    from puresound_core.storage.s3 import make_sqs_client

    settings = settings or PureSoundSettings()
    return make_sqs_client(endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                           max_attempts=settings.s3_max_attempts, session=aws_session(settings))
