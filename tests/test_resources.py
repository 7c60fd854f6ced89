"""Run resources are built once per process and configuration, and rebuilt when the configuration changes."""

from __future__ import annotations

from puresound.resources import resources


def test_the_same_configuration_shares_clients_and_a_changed_one_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "a"))
    first = resources()
    assert resources() is first
    assert first.storage(str(tmp_path / "out")) is first.storage(str(tmp_path / "out"))
    url = f"sqlite:///{tmp_path / 'lineage.sqlite'}"
    assert first.lineage(url) is first.lineage(url)
    monkeypatch.setenv("PURESOUND_STATE_DIR", str(tmp_path / "b"))
    second = resources()
    assert second is not first
    assert second.settings.state_dir == tmp_path / "b"
