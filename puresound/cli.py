"""``puresound`` command line (typer + rich).

``puresound analyze PATHS... [--json]`` validates and analyses files or folders with the
domain engine (:mod:`puresound_core`): loudness (BS.1770-4), LRA (EBU Tech 3342), true peak,
content class. A rejected file is an expected outcome with its rules, never a crash.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from puresound_core.analysis import analyze_file
from puresound_core.errors import PureSoundError
from puresound_core.validation import validate_file

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Pure Sound: loudness-compliant audio renditions, by preset.")
console = Console()

_SKIP_SUFFIXES = {".md", ".txt", ".tsv", ".json", ".yaml", ".yml"}


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files named directly, plus every non-hidden file under named folders (sorted).

    Parameters
    ----------
    paths : list of Path

    Returns
    -------
    list of Path

    Raises
    ------
    typer.BadParameter
        If a path does not exist.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()
                                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                                and p.suffix.lower() not in _SKIP_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise typer.BadParameter(f"{path}: no such file or folder")
    return files


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 2)


def _analyze_one(path: Path) -> dict:
    validation = validate_file(path)
    row = {"path": str(path), "valid": validation.passed, "failed_rules": validation.failed_rules,
           "reasons": [r.message for r in validation.failures], "integrated_lufs": None,
           "true_peak_dbtp": None, "lra_lu": None, "sample_peak_dbfs": None, "content_class": None}
    if not validation.passed:
        return row
    try:
        report = analyze_file(path)
    except PureSoundError as err:  # decodable at validation, failing now: report, never crash
        row.update(valid=False, failed_rules=[getattr(err, "rule", None) or "analysis"], reasons=[str(err)])
        return row
    loudness, content = report.loudness, report.content
    row.update(integrated_lufs=_finite(loudness.integrated_lufs), true_peak_dbtp=_finite(loudness.true_peak_dbtp),
               lra_lu=_finite(loudness.lra_lu), sample_peak_dbfs=_finite(loudness.sample_peak_dbfs),
               content_class=content.content_class, bandwidth_hz=round(content.bandwidth_hz),
               duration_s=round(loudness.duration_s, 3), sample_rate_hz=loudness.sample_rate_hz,
               channels=loudness.channels)
    return row


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="Audio files or folders (searched recursively).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array, one object per file.")] = False,
) -> None:
    """Validate and analyse audio: loudness, true peak, LRA, content class."""
    files = expand_inputs(paths)
    rows = [_analyze_one(p) for p in files]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} files")
    for column in ("file", "verdict", "LUFS", "dBTP", "LRA LU", "class", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(Path(row["path"]).name, "ok" if row["valid"] else "rejected",
                      *(("-" if row[k] is None else f"{row[k]:.1f}") for k in ("integrated_lufs", "true_peak_dbtp", "lra_lu")),
                      row["content_class"] or "-", "; ".join(row["failed_rules"]) or "")
    console.print(table)


@app.callback()
def main() -> None:
    """Pure Sound command line."""


if __name__ == "__main__":
    app()
