"""What the flow tests share: run the CLI in-process, read a batch report, add a user preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puresound.cli import app

runner = CliRunner()


def run_cli(*args: str):
    """``puresound run ARGS...`` in this process (exceptions propagate)."""
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


def batch_report(out: Path, preset: str) -> dict:
    """The batch ``report.json`` a run wrote for ``preset`` under ``out``."""
    return json.loads((out / preset / "report.json").read_text())


def add_user_preset(monkeypatch: pytest.MonkeyPatch, folder: Path, name: str, body: str) -> None:
    """Write ``{name}.yaml`` (``name`` and ``version: '1'`` plus ``body``) and point PURESOUND_PRESETS_DIR at it."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(f"name: {name}\nversion: '1'\n{body}")
    monkeypatch.setenv("PURESOUND_PRESETS_DIR", str(folder))
