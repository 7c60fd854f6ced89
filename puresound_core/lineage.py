"""Lineage: where every output came from, in SQLModel tables (SQLite by default, PostgreSQL by URL).

Tables
------
sources            one row per distinct content (sha256), with its probe
source_locations   every URI a content was seen at (size, ETag / version id when known)
analyses           analysis report of a content, per code version
runs               one per Prefect flow run: preset name / version / fingerprint, versions,
                   the worker and machine it ran on
renditions         every published (or failed) rendition: uri, sha256, codec settings,
                   measured values, verdict, the run and source it came from

The schema is versioned by Alembic (revisions in ``lineage_migrations/``): :func:`migrate`
runs when a store opens, under a lock every process and machine sees, so a database made by an
older release is upgraded in place and two workers starting at once do not race. Every insert
is ``INSERT ... ON CONFLICT``: concurrent workers never duplicate a row (one row per rendition
content at a URI) nor fail on one another's.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Index, UniqueConstraint, event, inspect, text, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, Session, SQLModel, create_engine, select


def _now() -> datetime:
    return datetime.now(UTC)


class SourceRow(SQLModel, table=True):
    """A distinct source content."""

    __tablename__ = "sources"
    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(index=True, unique=True, max_length=64)
    size_bytes: int
    probe_json: str
    first_seen_at: datetime = Field(default_factory=_now)


class SourceLocationRow(SQLModel, table=True):
    """A URI a source content was seen at."""

    __tablename__ = "source_locations"
    __table_args__ = (UniqueConstraint("uri", "sha256"),)
    id: int | None = Field(default=None, primary_key=True)
    uri: str = Field(index=True)
    sha256: str = Field(index=True, max_length=64)
    size_bytes: int
    etag: str | None = None
    version_id: str | None = None
    seen_at: datetime = Field(default_factory=_now)


class AnalysisRow(SQLModel, table=True):
    """An analysis of a source content by one code version."""

    __tablename__ = "analyses"
    __table_args__ = (UniqueConstraint("source_sha256", "code_version"),)
    id: int | None = Field(default=None, primary_key=True)
    source_sha256: str = Field(index=True, max_length=64)
    code_version: str
    report_json: str
    created_at: datetime = Field(default_factory=_now)


class RunRow(SQLModel, table=True):
    """One flow run of a preset."""

    __tablename__ = "runs"
    id: int | None = Field(default=None, primary_key=True)
    flow_run_id: str = Field(index=True)
    preset_name: str
    preset_version: str
    preset_fingerprint: str
    package_version: str
    pyav_version: str
    ffmpeg_version: str
    started_at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None
    status: str = "running"
    worker: str | None = None


class RenditionRow(SQLModel, table=True):
    """One rendition of one source by one run."""

    __tablename__ = "renditions"
    __table_args__ = (Index("uq_renditions_uri_sha256", "uri", "sha256", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    source_sha256: str = Field(index=True, max_length=64)
    run_id: int = Field(foreign_key="runs.id", index=True)
    preset_name: str = Field(index=True)
    preset_version: str
    rendition_name: str
    uri: str = Field(index=True)
    sha256: str = Field(index=True, max_length=64)
    size_bytes: int
    codec_json: str
    integrated_lufs: float | None = None
    true_peak_dbtp: float | None = None
    lra_lu: float | None = None
    verdict: str
    attempts: int = 1
    created_at: datetime = Field(default_factory=_now)


MIGRATIONS_DIR = Path(__file__).with_name("lineage_migrations")

#: Key of the PostgreSQL advisory lock that serialises migrations across processes and machines.
_MIGRATION_LOCK_KEY = 0x50534C4E  # "PSLN"


#: The newest revision in ``lineage_migrations`` (a test holds it equal to Alembic's head). A
#: database already there is opened without loading Alembic (~0.3 s of every run's start).
HEAD_REVISION = "0003"


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Newest schema revision this code knows (the last Alembic revision in ``lineage_migrations``)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


@contextmanager
def _migration_lock(engine):
    """Hold the lock that lets one process at a time migrate this database.

    PostgreSQL: a transaction-scoped advisory lock (every machine sees it). SQLite: ``flock`` on a
    file beside the database (SQLite is one machine's by design).
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            yield connection
        elif connection.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            with open(f"{engine.url.database}.migrate-lock", "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield connection
        else:
            yield connection


def migrate(engine) -> str:
    """Bring a database to the newest schema revision (Alembic, under a cross-process lock).

    A database made before Alembic (hand-rolled ``schema_version`` table at version 1) is
    stamped at revision ``0001``, which creates the same tables, and upgraded from there.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine

    Returns
    -------
    str
        The schema revision after migrating (:func:`head_revision`).
    """
    if _current_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with _migration_lock(engine) as connection:
        config = _alembic_config(connection)
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and "schema_version" in tables:
            legacy = {row[0] for row in connection.execute(text("SELECT version FROM schema_version"))}
            if legacy != {1}:
                raise RuntimeError(f"lineage database {engine.url!r}: unknown legacy schema versions {sorted(legacy)}")
            command.stamp(config, "0001")
        command.upgrade(config, "head")
        return MigrationContext.configure(connection).get_current_revision()


def _current_revision(engine) -> str | None:
    """The database's Alembic revision, or None when it has none (new, legacy or unreadable)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no such table: migrate() finds out what the database is
        return None


def _insert(connection_or_session, table, values: dict, *, conflict: list[str], update: dict | None = None) -> bool:
    """``INSERT ... ON CONFLICT (conflict) DO NOTHING`` (or ``DO UPDATE SET update``) on SQLite or PostgreSQL.

    Concurrent writers (worker processes, machines) never fail on, or duplicate, a row another
    wrote first.

    Returns
    -------
    bool
        True when this call inserted (or updated) a row (``RETURNING``: ``rowcount`` is not
        reliable on every driver).
    """
    dialect = connection_or_session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"lineage on {dialect}: only SQLite and PostgreSQL are supported")
    statement = insert(table).values(**values)
    if update:
        statement = statement.on_conflict_do_update(index_elements=conflict, set_=update)
    else:
        statement = statement.on_conflict_do_nothing(index_elements=conflict)
    return connection_or_session.execute(statement.returning(table.c.id)).first() is not None


class LineageChain(BaseModel):
    """Lineage around one source or rendition.

    Attributes
    ----------
    query : str
    source : dict or None
        The source row (sha256, size, probe) and its locations.
    renditions : list of dict
        Every rendition of that source, with its run (preset, version, flow run id).
    matched : {"source", "rendition", "none"}
        What the query matched.
    """

    model_config = ConfigDict(frozen=True)

    query: str
    matched: str
    source: dict[str, Any] | None
    renditions: list[dict[str, Any]]


class LineageStore:
    """Read and write lineage rows.

    Parameters
    ----------
    database_url : str
        SQLAlchemy URL, e.g. ``sqlite:///lineage.sqlite`` or ``postgresql+psycopg://...``
        (PostgreSQL when several workers or machines share one lineage).

    Attributes
    ----------
    engine : sqlalchemy.engine.Engine
    schema_version : str
        Alembic revision of the database after opening (:func:`migrate`).
    """

    def __init__(self, database_url: str):
        if database_url.startswith("sqlite"):
            self.engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})
        else:  # a server: connections of a long-lived worker may have been closed by it
            self.engine = create_engine(database_url, pool_pre_ping=True)
        if database_url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()
        self.schema_version = migrate(self.engine)

    def record_source(self, *, sha256: str, uri: str, size_bytes: int, probe: dict,
                      etag: str | None = None, version_id: str | None = None) -> None:
        """Insert a source content (once) and the location it was seen at (once per URI; seen again: updated)."""
        now = _now()
        with Session(self.engine) as session:
            _insert(session, SourceRow.__table__, {"sha256": sha256, "size_bytes": size_bytes,
                                                   "probe_json": json.dumps(probe), "first_seen_at": now},
                    conflict=["sha256"])
            values = {"uri": uri, "sha256": sha256, "size_bytes": size_bytes, "etag": etag,
                      "version_id": version_id, "seen_at": now}
            _insert(session, SourceLocationRow.__table__, values, conflict=["uri", "sha256"],
                    update={"seen_at": now, **({"etag": etag} if etag else {}),
                            **({"version_id": version_id} if version_id else {})})
            session.commit()

    def record_analysis(self, *, sha256: str, code_version: str, report: dict) -> None:
        """Insert the analysis of a content by a code version (once)."""
        with Session(self.engine) as session:
            _insert(session, AnalysisRow.__table__, {"source_sha256": sha256, "code_version": code_version,
                                                     "report_json": json.dumps(report), "created_at": _now()},
                    conflict=["source_sha256", "code_version"])
            session.commit()

    def start_run(self, **fields: Any) -> int:
        """Insert a run row; returns its id."""
        with Session(self.engine) as session:
            row = RunRow(**fields)
            session.add(row)
            session.commit()
            return int(row.id)

    def finish_run(self, run_id: int, status: str) -> None:
        """Set a run's end time and status."""
        with Session(self.engine) as session:
            row = session.get(RunRow, run_id)
            row.finished_at, row.status = _now(), status
            session.add(row)
            session.commit()

    def open_runs(self) -> list[tuple[int, str]]:
        """``(run id, flow run id)`` of every run row still ``running``."""
        with Session(self.engine) as session:
            return [(row.id, row.flow_run_id) for row in
                    session.exec(select(RunRow).where(RunRow.status == "running")).all()]

    def close_runs(self, run_ids: Iterable[int], status: str) -> int:
        """Close run rows whose flow run ended without closing them (its process died).

        Parameters
        ----------
        run_ids : iterable of int
        status : str
            E.g. ``"crashed"``.

        Returns
        -------
        int
            Rows closed (rows no longer ``running`` are left alone).
        """
        ids = list(run_ids)
        if not ids:
            return 0
        with Session(self.engine) as session:
            result = session.exec(update(RunRow).where(RunRow.id.in_(ids), RunRow.status == "running")
                                   .values(status=status, finished_at=_now()))
            session.commit()
            return result.rowcount

    def record_rendition(self, **fields: Any) -> bool:
        """Insert a rendition row, unless the same content is already recorded at the same URI.

        A re-run that republishes identical bytes keeps the lineage of the run that made them
        (renditions are deterministic, so this is the common case). A published row whose URI
        now holds other bytes is marked ``superseded``: lineage never calls a content published
        at a URI that no longer holds it.

        Returns
        -------
        bool
            True when this call inserted the row.
        """
        with Session(self.engine) as session:
            inserted = _insert(session, RenditionRow.__table__, {"attempts": 1, "created_at": _now(), **fields},
                               conflict=["uri", "sha256"])
            if fields.get("verdict") == "published":
                session.exec(update(RenditionRow).where(
                    RenditionRow.uri == fields["uri"], RenditionRow.sha256 != fields["sha256"],
                    RenditionRow.verdict == "published").values(verdict="superseded"))
            session.commit()
            return inserted

    def known_location(self, *, uri: str, etag: str | None) -> str | None:
        """SHA-256 of the content last seen at ``uri`` with this ETag (or size+mtime), if any."""
        if etag is None:
            return None
        with Session(self.engine) as session:
            row = session.exec(select(SourceLocationRow).where(
                SourceLocationRow.uri == uri, SourceLocationRow.etag == etag)).first()
            return row.sha256 if row else None

    def published(self, *, sha256: str, preset_name: str, preset_version: str) -> bool:
        """True when a run of this preset version published this content."""
        with Session(self.engine) as session:
            return session.exec(select(RenditionRow).where(
                RenditionRow.source_sha256 == sha256, RenditionRow.preset_name == preset_name,
                RenditionRow.preset_version == preset_version, RenditionRow.verdict == "published")).first() is not None

    def chain(self, query: str) -> LineageChain:
        """Lineage around a sha256 or URI, in both directions.

        Parameters
        ----------
        query : str
            SHA-256 of a source or rendition, or a ``file://`` / ``s3://`` URI.

        Returns
        -------
        LineageChain
        """
        with Session(self.engine) as session:
            matched = "none"
            source_sha = None
            if session.exec(select(SourceRow).where(SourceRow.sha256 == query)).first() is not None:
                matched, source_sha = "source", query
            else:
                location = session.exec(select(SourceLocationRow).where(SourceLocationRow.uri == query)).first()
                if location is not None:
                    matched, source_sha = "source", location.sha256
                else:
                    rendition = session.exec(select(RenditionRow).where(
                        (RenditionRow.sha256 == query) | (RenditionRow.uri == query))).first()
                    if rendition is not None:
                        matched, source_sha = "rendition", rendition.source_sha256
            if source_sha is None:
                return LineageChain(query=query, matched="none", source=None, renditions=[])
            source = session.exec(select(SourceRow).where(SourceRow.sha256 == source_sha)).first()
            locations = session.exec(select(SourceLocationRow).where(SourceLocationRow.sha256 == source_sha)).all()
            rows = session.exec(select(RenditionRow, RunRow).join(RunRow, RenditionRow.run_id == RunRow.id)
                                .where(RenditionRow.source_sha256 == source_sha)
                                .order_by(RenditionRow.created_at)).all()
            renditions = [{
                "rendition": r.rendition_name, "uri": r.uri, "sha256": r.sha256, "size_bytes": r.size_bytes,
                "verdict": r.verdict, "integrated_lufs": r.integrated_lufs, "true_peak_dbtp": r.true_peak_dbtp,
                "preset": r.preset_name, "preset_version": r.preset_version, "flow_run_id": run.flow_run_id,
                "package_version": run.package_version, "ffmpeg_version": run.ffmpeg_version,
                "created_at": r.created_at.isoformat(), "matched": r.sha256 == query or r.uri == query,
            } for r, run in rows]
            return LineageChain(query=query, matched=matched, renditions=renditions, source={
                "sha256": source.sha256, "size_bytes": source.size_bytes, "probe": json.loads(source.probe_json),
                "locations": [loc.uri for loc in locations]} if source else None)
