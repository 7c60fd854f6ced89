"""What a batch reports: per-source outcomes, the batch report, inputs and the run request form."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import unquote_to_bytes, urlparse

from pydantic import BaseModel, Field

from puresound_core.loudness import LoudnessSeries

Verdict = Literal["published", "rejected", "failed"]


class RenditionSummary(BaseModel):
    """One rendition in a source's outcome (loudness as played: dual-mono for mono renditions).

    ``series`` is its momentary / short-term loudness over time, measured on the encoded file.
    """

    name: str
    uri: str | None
    sha256: str | None
    size_bytes: int | None
    codec: dict
    integrated_lufs: float | None
    single_channel_lufs: float | None = None
    true_peak_dbtp: float | None
    verified: bool
    attempts: int
    retry_reason: str | None
    limiter_active: bool
    max_gain_reduction_db: float
    failed_checks: list[str]
    series: LoudnessSeries | None = None


class SourceOutcome(BaseModel):
    """What happened to one input file (``series_in``: the source's loudness over time)."""

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
    series_in: LoudnessSeries | None = None


class BatchReport(BaseModel):
    """Every input of a run with its verdict and reason.

    ``loudness_target`` is the preset's :class:`~puresound_core.render.LoudnessTarget`
    (target, tolerance, ceiling...) as JSON; ``stopped`` says why a run stopped early.

    ``skipped`` lists sources left out without being read: already published (nightly
    ingestion) or inside the output folder / work area.
    """

    preset: str
    preset_version: str
    flow_run_id: str | None
    started_at: str
    finished_at: str
    counts: dict[str, int]
    sources: list[SourceOutcome]
    skipped: list[str] = []
    stopped: str | None = None
    loudness_target: dict = {}


def display_name(path: str) -> str:
    """A path as text that can always be printed and stored.

    Parameters
    ----------
    path : str
        As the OS names it; bytes that are not UTF-8 arrive as surrogate escapes
        (:func:`os.fsdecode`).

    Returns
    -------
    str
        Valid UTF-8; each undecodable byte written as ``\\xNN`` (``caf\\xe9.wav``).
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class SourceRef(BaseModel):
    """One input: a local file or an S3 object.

    Attributes
    ----------
    uri : str
        ``file:///...`` (percent-encoded bytes, so any file name round-trips) or ``s3://bucket/key``.
    path : str or None
        Display form of a local file's path (see :func:`display_name`); open
        :attr:`local_path`, not this.
    size_bytes : int
    etag : str or None
        S3 ETag, or ``"{size}-{mtime_ns}"`` for a local file: what lets a re-run skip a known
        source without reading it.
    problem : str or None
        Why the (untrusted) key or link is refused; such a source is rejected without being read.
    problem_rule : str
        The rule named for ``problem`` (``unsafe_key``, ``symlink``).
    """

    uri: str
    path: str | None = None
    size_bytes: int = 0
    etag: str | None = None
    problem: str | None = None
    problem_rule: str = "unsafe_key"

    @property
    def local_path(self) -> str | None:
        """str or None: the local file's path exactly as the OS names it (``None`` for S3)."""
        if not self.uri.startswith("file://"):
            return None
        return os.fsdecode(unquote_to_bytes(urlparse(self.uri).path))

    @property
    def display(self) -> str:
        """str: the local path, or the URI."""
        return self.path or self.uri

    @property
    def name(self) -> str:
        """str: last path segment."""
        return self.display.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def local(cls, path: str, *, problem: str | None = None) -> SourceRef:
        """A local file (``path`` as the OS names it; the file is only stat-ed).

        Parameters
        ----------
        path : str
        problem : str, optional
            Rejected without reading (rule ``symlink``).
        """
        absolute = Path(os.path.abspath(path))
        stat = absolute.lstat() if problem else absolute.stat()
        return cls(uri=absolute.as_uri(), path=display_name(str(path)), size_bytes=stat.st_size,
                   etag=f"{stat.st_size}-{stat.st_mtime_ns}", problem=problem, problem_rule="symlink")


class RunRequest(BaseModel):
    """What to process and where the renditions go."""

    sources: list[str] = Field(
        min_length=1, title="Sources",
        description="Audio files or folders on the machine that runs the flow (absolute paths; folders are "
                    "searched recursively), or s3://bucket/prefix locations. Every file gets a verdict.")
    output_dir: str | None = Field(
        default=None, title="Output",
        description="Absolute folder or s3://bucket/prefix for the renditions, report.json and report.html; "
                    "empty: the worker's PURESOUND_OUTPUT_DIR")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def summary_rows(outcomes: list[SourceOutcome]) -> list[dict]:
    """Rows of the summary table artifact and the CLI table (the reason in full, with its values)."""
    rows = []
    for o in outcomes:
        rows.append({
            "file": Path(o.path).name, "verdict": o.verdict, "reason": o.reason[:600],
            "LUFS in": _fmt(o.integrated_lufs_in), "dBTP in": _fmt(o.true_peak_dbtp_in),
            "LUFS out": ", ".join(_fmt(r.integrated_lufs) for r in o.renditions),
            "dBTP out": ", ".join(_fmt(r.true_peak_dbtp) for r in o.renditions),
            "renditions": ", ".join(r.name for r in o.renditions if r.uri),
            "sizes kB": ", ".join(f"{r.size_bytes / 1000:.0f}" for r in o.renditions if r.size_bytes),
        })
    return rows


def lineage_markdown(report: BatchReport) -> str:
    """The run's lineage as a markdown artifact: source -> renditions with URI, SHA-256 and loudness.

    Parameters
    ----------
    report : BatchReport

    Returns
    -------
    str
        One section per source with published renditions; a line per rejected / failed file.
    """
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# {report.preset} v{report.preset_version}: lineage of run {report.flow_run_id or 'local'}", ""]
    for source in report.sources:
        name = cell(Path(source.path).name)
        if source.verdict != "published":
            lines.append(f"- **{name}** ({source.verdict}): {cell(source.reason[:300])}")
            continue
        lines += ["", f"## {name}", f"source sha256 `{source.sha256}`", "",
                  "| rendition | URI | SHA-256 | LUFS (as played) | dBTP |", "| --- | --- | --- | --- | --- |"]
        for r in source.renditions:
            lufs = "" if r.integrated_lufs is None else f"{r.integrated_lufs:.2f}"
            peak = "" if r.true_peak_dbtp is None else f"{r.true_peak_dbtp:.2f}"
            lines.append(f"| {cell(r.name)} | {cell(r.uri or '')} | `{(r.sha256 or '')[:16]}` | {lufs} | {peak} |")
    return "\n".join(lines) + "\n"
