"""Shared helpers for the hand-run benchmarks: pin to one core, make long test files."""

from __future__ import annotations

import os

# One core: BLAS, numba and FFmpeg threads off before numpy / av are imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from puresound_core.audio import EncoderSettings, decode, encode_blocks  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tuxtype__tuxi.ogg"
WORK = Path(__file__).resolve().parent / "_work"


def pin_one_core() -> None:
    """Restrict this process to one CPU, where the OS allows it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def long_programme(duration_s: float, *, sample_rate_hz: int, codec: str, name: str) -> Path:
    """A stereo file of real music looped to ``duration_s``, written once and reused.

    The music is ``examples/tuxtype__tuxi.ogg`` (public domain), resampled and looped,
    streamed to the encoder block by block so memory stays flat.
    """
    import soxr

    WORK.mkdir(parents=True, exist_ok=True)
    settings = EncoderSettings(codec=codec, sample_rate_hz=sample_rate_hz, channels=2,
                               bitrate_kbps=None if codec in ("wav", "flac") else 192)
    path = WORK / f"{name}.{settings.extension}"
    if path.exists():
        return path
    music, rate = decode(EXAMPLE)
    if rate != sample_rate_hz:
        music = soxr.resample(music.T, rate, sample_rate_hz, quality="HQ").T.astype(np.float32)
    total = int(duration_s * sample_rate_hz)

    def blocks():
        done = 0
        while done < total:
            take = min(music.shape[1], total - done)
            yield music[:, :take]
            done += take

    encode_blocks(blocks(), path, settings=settings)
    return path
