"""A real Prefect server for the flow tests (prefect_test_harness: temporary SQLite server)."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    results = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def puresound_env(tmp_path, monkeypatch, prefect_server):
    """Fresh output folder, render cache and lineage database for one test."""
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("PURESOUND_DATABASE_URL", raising=False)
    monkeypatch.delenv("PURESOUND_PRESETS_DIR", raising=False)
    return tmp_path
