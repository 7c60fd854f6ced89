"""Shared fixtures: seeded synthetic signals written to tmp_path, and the shared corpus."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def sine(level_dbfs: float, duration_s: float, sample_rate_hz: int, *, freq_hz: float = 1000.0,
         channels: int = 2, phase_rad: float = 0.0) -> np.ndarray:
    """A sine of peak level ``level_dbfs`` as (channels, samples) float32 (pedalboard-style)."""
    n = int(round(duration_s * sample_rate_hz))
    t = np.arange(n) / sample_rate_hz
    wave = 10 ** (level_dbfs / 20) * np.sin(2 * np.pi * freq_hz * t + phase_rad)
    return np.tile(wave, (channels, 1)).astype(np.float32)


def pink_noise(duration_s: float, sample_rate_hz: int, *, channels: int = 2, level_dbfs: float = -20.0,
               seed: int = 0) -> np.ndarray:
    """Seeded pink (1/f power, 20 Hz up) noise with RMS ``level_dbfs``, as (channels, samples) float32."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sample_rate_hz))
    spectrum = np.fft.rfft(rng.standard_normal((channels, n)), axis=1)
    freqs = np.fft.rfftfreq(n, 1 / sample_rate_hz)
    spectrum[:, 1:] /= np.sqrt(freqs[1:])
    spectrum[:, freqs < 20.0] = 0  # audio band only: no sub-sonic drift
    noise = np.fft.irfft(spectrum, n=n, axis=1)
    noise *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(noise**2))
    return noise.astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sample_rate_hz: int, subtype: str = "PCM_16",
              fmt: str = "WAV") -> Path:
    sf.write(str(path), audio.T, sample_rate_hz, subtype=subtype, format=fmt)
    return path


#: The corpus' one long file (34 min, 63 % of its audio): tests take its first 90 s instead;
#: ``benchmarks/bench_corpus_podcast.py`` and ``bench_peers.py`` run it whole.
LONGFORM = Path("speech") / "es-MX_Allison__all-prompts_longform.ogg"
LONGFORM_CUT_S = 90


def _first_seconds(source: Path, target: Path, seconds: float) -> None:
    """The first ``seconds`` of an Ogg file by stream copy: same codec, rate and headers, no re-encoding."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = inp.streams.audio[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue  # the demuxer's flush packet
            if packet.pts is not None and packet.pts * stream.time_base >= seconds:
                break
            packet.stream = copy
            out.mux(packet)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The shared corpus, copied, with its 34-minute speech file cut to its first 90 s (same Vorbis 8 kHz mono).

    The long file alone took a third of the suite's time; every format, rate and channel
    layout of the corpus is still here.
    """
    import shutil

    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS} (it sits beside the repository as ../shared/corpus)")
    copy = tmp_path_factory.mktemp("corpus")
    for path in sorted(CORPUS.rglob("*")):
        relative = path.relative_to(CORPUS)
        if path.is_dir() or relative == LONGFORM:
            continue
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy / relative)
    cut = copy / LONGFORM.with_name(f"{LONGFORM.stem}_first{LONGFORM_CUT_S}s.ogg")
    _first_seconds(CORPUS / LONGFORM, cut, LONGFORM_CUT_S)
    from puresound_core.audio import probe

    assert LONGFORM_CUT_S <= probe(cut).declared_duration_s <= LONGFORM_CUT_S + 1, probe(cut)  # the cut did cut
    return copy


def db(value: float) -> float:
    return 20 * math.log10(value)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (prefect_test_harness: temporary SQLite server) for the session."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

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


@pytest.fixture(scope="module")
def prefect_server_on_postgres():
    """API URL of ``prefect server start`` on Debian's PostgreSQL for one test module, or None where not installed.

    As in production: the harness server is SQLite, which under a loaded machine logs
    ``database is locked``. Its folder is made with ``tempfile`` (PostgreSQL runs as user
    ``postgres``, which cannot enter pytest's private tmp folders).
    """
    import shutil
    import signal
    import subprocess
    import tempfile

    from tests import servers

    if servers.debian_postgres_bin() is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="puresound-pg-prefect-"))
    folder.chmod(0o755)
    postgres = server = None
    try:
        try:
            sock, postgres = servers.start_postgres(folder / "pg")
            url, server = servers.start_prefect_server(sock, folder)
        except (OSError, subprocess.SubprocessError, RuntimeError, TimeoutError) as err:
            warnings.warn(f"the Prefect server on Debian's PostgreSQL did not start ({err}): the SQLite harness "
                          "server is used instead", stacklevel=1)
            url = None
        yield url
    finally:
        if server is not None:
            servers.stop(server)
        if postgres is not None:
            servers.stop(postgres, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def prefect_api_on_postgres(prefect_server, prefect_server_on_postgres):
    """This test's Prefect API: the PostgreSQL-backed server when Debian's PostgreSQL is installed, else the harness."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if prefect_server_on_postgres is None:
        warnings.warn("Debian's PostgreSQL (pg_trgm) is not installed: this test uses the SQLite harness server",
                      stacklevel=1)
        yield PREFECT_API_URL.value()
        return
    with temporary_settings({PREFECT_API_URL: prefect_server_on_postgres}):
        yield prefect_server_on_postgres


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (``pgserver``: its binaries from PyPI, a Unix socket)."""
    import shutil
    import tempfile

    pgserver = pytest.importorskip("pgserver")
    # Not under pytest's temporary root: as root, pgserver opens its folders to the server's own
    # user, and every pytest session that starts meanwhile closes that root again (mode 0o700),
    # which stops the server of a session still running.
    folder = Path(tempfile.mkdtemp(prefix="puresound-pgserver-"))
    try:
        server = pgserver.get_server(folder / "pgdata", cleanup_mode="stop")
        yield server
        server.cleanup()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """SQLAlchemy URL (psycopg 3) of a fresh, empty database on :func:`postgres_server`."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:50]
    postgres_server.psql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};")
    base = postgres_server.get_uri(name)
    return base.replace("postgresql://", "postgresql+psycopg://", 1)
