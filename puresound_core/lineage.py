"""Lineage: where every output came from, in SQLModel tables (SQLite by default, PostgreSQL by URL).

Tables
------
sources            one row per distinct content (sha256), with its probe
source_locations   every URI a content was seen at (size, ETag / version id when known)
analyses           analysis report of a content, per code version
runs               one per Prefect flow run: preset name / version / fingerprint, versions
renditions         every published (or failed) rendition: uri, sha256, codec settings,
                   measured values, verdict, the run and source it came from

The schema is versioned: :func:`migrate` applies numbered migrations in order and records
them in ``schema_version``, so a database made by an older release is upgraded in place.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import UniqueConstraint, event, text
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


class RenditionRow(SQLModel, table=True):
    """One rendition of one source by one run."""

    __tablename__ = "renditions"
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


class SchemaVersionRow(SQLModel, table=True):
    """Applied migrations."""

    __tablename__ = "schema_version"
    version: int = Field(primary_key=True)
    applied_at: datetime = Field(default_factory=_now)


def _migration_1(connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[
        SourceRow.__table__, SourceLocationRow.__table__, AnalysisRow.__table__, RunRow.__table__,
        RenditionRow.__table__])


#: Ordered schema migrations: (version, function(connection)).
MIGRATIONS = [(1, _migration_1)]


def migrate(engine) -> int:
    """Bring a database to the newest schema version.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine

    Returns
    -------
    int
        The schema version after migrating.
    """
    SQLModel.metadata.create_all(engine, tables=[SchemaVersionRow.__table__])
    with engine.begin() as connection:
        applied = {row[0] for row in connection.execute(text("SELECT version FROM schema_version"))}
        for version, step in MIGRATIONS:
            if version not in applied:
                step(connection)
                connection.execute(text("INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)"),
                                   {"v": version, "t": _now()})
    return MIGRATIONS[-1][0]


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
        SQLAlchemy URL, e.g. ``sqlite:///lineage.sqlite`` or ``postgresql+psycopg://...``.
    """

    def __init__(self, database_url: str):
        connect_args = {"check_same_thread": False, "timeout": 30} if database_url.startswith("sqlite") else {}
        self.engine = create_engine(database_url, connect_args=connect_args)
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
        """Insert a source content (once) and the location it was seen at (once per URI)."""
        with Session(self.engine) as session:
            if session.exec(select(SourceRow).where(SourceRow.sha256 == sha256)).first() is None:
                session.add(SourceRow(sha256=sha256, size_bytes=size_bytes, probe_json=json.dumps(probe)))
            location = session.exec(select(SourceLocationRow).where(
                SourceLocationRow.uri == uri, SourceLocationRow.sha256 == sha256)).first()
            if location is None:
                session.add(SourceLocationRow(uri=uri, sha256=sha256, size_bytes=size_bytes, etag=etag,
                                              version_id=version_id))
            else:
                location.seen_at, location.etag = _now(), etag or location.etag
                session.add(location)
            session.commit()

    def record_analysis(self, *, sha256: str, code_version: str, report: dict) -> None:
        """Insert the analysis of a content by a code version (once)."""
        with Session(self.engine) as session:
            exists = session.exec(select(AnalysisRow).where(
                AnalysisRow.source_sha256 == sha256, AnalysisRow.code_version == code_version)).first()
            if exists is None:
                session.add(AnalysisRow(source_sha256=sha256, code_version=code_version,
                                        report_json=json.dumps(report)))
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

    def record_rendition(self, **fields: Any) -> None:
        """Insert a rendition row, unless the same content is already recorded at the same URI.

        A re-run that republishes identical bytes keeps the lineage of the run that made them.
        """
        with Session(self.engine) as session:
            exists = session.exec(select(RenditionRow).where(
                RenditionRow.uri == fields["uri"], RenditionRow.sha256 == fields["sha256"])).first()
            if exists is None:
                session.add(RenditionRow(**fields))
                session.commit()

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
