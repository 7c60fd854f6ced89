"""Streaming processing: trim, down-mix, high-pass, gain, resampling, true-peak limiter.

Every stage is a small object with ``process(block) -> block`` and ``flush() -> block`` so a
whole chain runs block by block in bounded memory. :func:`process_blocks` runs the chain a
:class:`ProcessingPlan` describes, in this order:

trim -> down-mix -> high-pass -> gain -> resample -> true-peak limiter

The limiter runs last, at the delivery rate, so the true peak it controls is the one the
rendition will have before encoding. It acts only when the plan says the gain would push
the true peak over the ceiling, and :class:`ProcessingStats` reports what it did; nothing
else in the chain is dynamic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numba
import numpy as np
import scipy.ndimage
import scipy.signal
import soxr
from pydantic import BaseModel, ConfigDict, Field

from .true_peak import oversampled_envelope

_ENVELOPE_HISTORY = 11   # samples of context the 12-tap interpolator needs
_INTERPOLATOR_REACH = 6  # the envelope at n covers reconstructed peaks in [n - 6, n]
#: The limiter aims this far under its ceiling: gain changes inside the interpolator's
#: 12-sample window move the reconstructed peak by up to ~0.002 dB.
LIMITER_MARGIN_DB = 0.05


class ProcessingPlan(BaseModel):
    """What to do to a programme on its way to one rendition.

    Attributes
    ----------
    gain_db : float
        Linear gain (dB) applied after the high-pass.
    ceiling_dbtp : float or None
        True-peak ceiling of the limiter; ``None`` disables it.
    limiter_lookahead_ms, limiter_release_ms : float
        Look-ahead (= attack ramp) and release time constant of the limiter.
    highpass_hz : float or None
        2nd-order Butterworth high-pass corner; ``None`` for none.
    output_sample_rate_hz : int
        Resampled with soxr (VHQ) when it differs from the source rate.
    output_channels : {1, 2}
        1 down-mixes by averaging channels; 2 from a mono source duplicates it.
    trim_start_samples, trim_end_samples : int
        Samples (at the source rate) cut from the start and the end (leading / trailing
        silence found by analysis).
    """

    model_config = ConfigDict(frozen=True)

    gain_db: float = 0.0
    ceiling_dbtp: float | None = None
    limiter_lookahead_ms: float = Field(default=5.0, gt=0, le=50)
    limiter_release_ms: float = Field(default=80.0, gt=0, le=2000)
    highpass_hz: float | None = Field(default=None, gt=0)
    output_sample_rate_hz: int = Field(gt=0)
    output_channels: int = Field(ge=1, le=2)
    trim_start_samples: int = Field(default=0, ge=0)
    trim_end_samples: int = Field(default=0, ge=0)


class ProcessingStats(BaseModel):
    """What the chain did.

    Attributes
    ----------
    samples_in, samples_out : int
        Per channel, at the source and output rates.
    limiter_active : bool
        True when the limiter reduced gain anywhere.
    limited_ratio : float
        Share of output samples with any gain reduction.
    max_gain_reduction_db : float
        Largest gain reduction (positive dB; 0 when inactive).
    """

    model_config = ConfigDict(frozen=True)

    samples_in: int
    samples_out: int
    limiter_active: bool
    limited_ratio: float
    max_gain_reduction_db: float


@numba.njit(cache=True)
def _release(gain_floor: np.ndarray, previous: float, coefficient: float) -> np.ndarray:  # pragma: no cover
    """Instant attack, one-pole release: follow drops at once, recover exponentially."""
    out = np.empty_like(gain_floor)
    state = previous
    for i in range(gain_floor.size):
        target = gain_floor[i]
        if target < state:
            state = target
        else:
            state = state + (1.0 - coefficient) * (target - state)
        out[i] = state
    return out


class TruePeakLimiter:
    """Look-ahead limiter that keeps the 4x-oversampled peak under a ceiling.

    The required gain at each sample is ``ceiling / peak`` where ``peak`` includes the
    BS.1770-4 Annex 2 interpolated values; a running minimum over the look-ahead window,
    an instant-attack / exponential-release follower and a moving average of the look-ahead
    length turn it into a smooth gain that is never above the required gain where a peak
    is. Output is delayed internally and re-aligned: ``flush`` returns the tail so the
    output has exactly as many samples as the input.

    Parameters
    ----------
    ceiling_dbtp : float
    sample_rate_hz : int
    channels : int
    lookahead_ms, release_ms : float

    References
    ----------
    ITU-R BS.1770-4 Annex 2 (peak detection); D. Giannoulis, M. Massberg, J. D. Reiss,
    "Digital dynamic range compressor design - a tutorial and analysis", JAES 60(6), 2012
    (peak detector with instant attack / smooth release).
    """

    def __init__(self, *, ceiling_dbtp: float, sample_rate_hz: int, channels: int,
                 lookahead_ms: float = 5.0, release_ms: float = 80.0):
        self.ceiling = 10.0 ** ((ceiling_dbtp - LIMITER_MARGIN_DB) / 20.0)
        self.lookahead = max(1, round(lookahead_ms * 1e-3 * sample_rate_hz))
        self._release_coefficient = math.exp(-1.0 / (release_ms * 1e-3 * sample_rate_hz))
        # Output m needs the required gain of envelope indices up to m + lookahead + reach.
        self.delay = self.lookahead + _INTERPOLATOR_REACH
        self._history = np.zeros((channels, _ENVELOPE_HISTORY), dtype=np.float32)
        self._queue = np.zeros((channels, 0), dtype=np.float32)
        self._required = np.zeros(0, dtype=np.float64)
        self._state = 1.0
        self._box_tail: np.ndarray | None = None  # last lookahead - 1 follower values
        self.samples_out = 0
        self.samples_limited = 0
        self.min_gain = 1.0

    def process(self, block: np.ndarray) -> np.ndarray:
        """Limit the next block; returns the samples that are ready (delayed by the look-ahead).

        Parameters
        ----------
        block : np.ndarray [shape=(channels, n)], float32

        Returns
        -------
        np.ndarray [shape=(channels, m)], float32
        """
        joined = np.concatenate([self._history, block], axis=1)
        self._history = joined[:, -_ENVELOPE_HISTORY:]
        peak = oversampled_envelope(joined).max(axis=0).astype(np.float64)
        required = np.minimum(1.0, self.ceiling / np.maximum(peak, 1e-12))
        self._required = np.concatenate([self._required, required])
        self._queue = np.concatenate([self._queue, block], axis=1)
        ready = self._queue.shape[1] - self.delay
        if ready <= 0:
            return np.zeros((block.shape[0], 0), dtype=np.float32)
        # The gain at m is the mean of follower values k in [m - lookahead + 1, m]; a peak seen at
        # envelope index i sits in [i - reach, i], so every such k must look at indices up to
        # k + lookahead + reach - 1: floor[k] = min(required[k .. k + delay]).
        span = self.delay + 1
        floor = scipy.ndimage.minimum_filter1d(self._required, size=span, origin=-(span // 2),
                                               mode="nearest")[:ready]
        followed = _release(floor, self._state, self._release_coefficient)
        self._state = float(followed[-1])
        if self._box_tail is None:
            # Before the stream, pad with the first follower value: it is under every required
            # gain of the first lookahead + reach samples, which is all the padding can affect.
            self._box_tail = np.full(self.lookahead - 1, followed[0])
        boxed_in = np.concatenate([self._box_tail, followed])
        csum = np.concatenate([[0.0], np.cumsum(boxed_in)])
        gain = (csum[self.lookahead:] - csum[:-self.lookahead]) / self.lookahead
        self._box_tail = boxed_in[boxed_in.size - (self.lookahead - 1):]
        out = (self._queue[:, :ready] * gain.astype(np.float32)).astype(np.float32)
        self._queue = self._queue[:, ready:]
        self._required = self._required[ready:]
        self.samples_out += ready
        limited = gain < 1.0 - 1e-9
        self.samples_limited += int(limited.sum())
        self.min_gain = min(self.min_gain, float(gain.min()))
        return out

    def flush(self) -> np.ndarray:
        """Release the samples still held for look-ahead.

        Returns
        -------
        np.ndarray [shape=(channels, delay or fewer)], float32
        """
        pending = self._queue.shape[1]
        if pending == 0:
            return self._queue
        out = self.process(np.zeros((self._queue.shape[0], self.delay), dtype=np.float32))
        return out[:, :pending]


class _Resampler:
    """soxr streaming resampler on (channels, n) blocks."""

    def __init__(self, in_rate: int, out_rate: int, channels: int):
        self._channels = channels
        self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality="VHQ")

    def process(self, block: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._stream.resample_chunk(np.ascontiguousarray(block.T)).T)

    def flush(self) -> np.ndarray:
        empty = np.zeros((0, self._channels), dtype=np.float32)
        return np.ascontiguousarray(self._stream.resample_chunk(empty, last=True).T)


def highpass_sos(cutoff_hz: float, *, sample_rate_hz: int, order: int = 2) -> np.ndarray:
    """Butterworth high-pass as second-order sections.

    Parameters
    ----------
    cutoff_hz : float, 0 < cutoff_hz < sample_rate_hz / 2
    sample_rate_hz : int
    order : int
        2 gives 12 dB/octave.

    Returns
    -------
    np.ndarray [shape=(ceil(order / 2), 6)]
    """
    return scipy.signal.butter(order, cutoff_hz, btype="highpass", fs=sample_rate_hz, output="sos")


def process_blocks(
    blocks: Iterable[np.ndarray],
    *,
    sample_rate_hz: int,
    plan: ProcessingPlan,
    stats_out: list | None = None,
) -> Iterator[np.ndarray]:
    """Run a :class:`ProcessingPlan` over a block stream.

    Parameters
    ----------
    blocks : iterable of np.ndarray [shape=(channels, n)], float32
        The source at ``sample_rate_hz``; total length is needed only for the end trim,
        which is applied by holding back ``plan.trim_end_samples``.
    sample_rate_hz : int
        Source rate.
    plan : ProcessingPlan
    stats_out : list, optional
        When given, a :class:`ProcessingStats` is appended once the stream is exhausted.

    Yields
    ------
    np.ndarray [shape=(plan.output_channels, n)], float32
        At ``plan.output_sample_rate_hz``.

    References
    ----------
    soxr (VHQ) for resampling; ITU-R BS.1770-4 Annex 2 for the limiter's peak detector.
    """
    gain = 10.0 ** (plan.gain_db / 20.0)
    sos = None
    zi = None
    resampler = None
    limiter = None
    if plan.output_sample_rate_hz != sample_rate_hz:
        resampler = _Resampler(sample_rate_hz, plan.output_sample_rate_hz, plan.output_channels)
    if plan.ceiling_dbtp is not None:
        limiter = TruePeakLimiter(ceiling_dbtp=plan.ceiling_dbtp, sample_rate_hz=plan.output_sample_rate_hz,
                                  channels=plan.output_channels, lookahead_ms=plan.limiter_lookahead_ms,
                                  release_ms=plan.limiter_release_ms)
    if plan.highpass_hz is not None:
        sos = highpass_sos(plan.highpass_hz, sample_rate_hz=sample_rate_hz)
        zi = np.zeros((sos.shape[0], plan.output_channels, 2))

    samples_in = 0
    samples_out = 0
    to_skip = plan.trim_start_samples
    held = None  # the last trim_end_samples, held back until we know they are the end

    def tail_stages(x: np.ndarray) -> np.ndarray:
        nonlocal zi
        if x.shape[0] != plan.output_channels:
            x = x.mean(axis=0, keepdims=True) if plan.output_channels == 1 else np.repeat(x[:1], 2, axis=0)
        if sos is not None:
            x, zi = scipy.signal.sosfilt(sos, x, axis=1, zi=zi)
        x = (x * gain).astype(np.float32, copy=False)
        if resampler is not None:
            x = resampler.process(x)
        if limiter is not None:
            x = limiter.process(x)
        return x

    for block in blocks:
        samples_in += block.shape[1]
        if to_skip:
            cut = min(to_skip, block.shape[1])
            block = block[:, cut:]
            to_skip -= cut
        if plan.trim_end_samples:
            held = block if held is None else np.concatenate([held, block], axis=1)
            release = held.shape[1] - plan.trim_end_samples
            if release <= 0:
                continue
            block, held = held[:, :release], held[:, release:]
        if block.shape[1] == 0:
            continue
        out = tail_stages(block)
        samples_out += out.shape[1]
        if out.shape[1]:
            yield out

    tail = []
    if resampler is not None:
        flushed = resampler.flush()
        if flushed.shape[1]:
            tail.append(limiter.process(flushed) if limiter is not None else flushed)
    if limiter is not None:
        tail.append(limiter.flush())
    for out in tail:
        samples_out += out.shape[1]
        if out.shape[1]:
            yield out
    if stats_out is not None:
        limited = limiter.samples_limited if limiter else 0
        stats_out.append(ProcessingStats(
            samples_in=samples_in, samples_out=samples_out,
            limiter_active=limited > 0,
            limited_ratio=limited / samples_out if samples_out else 0.0,
            max_gain_reduction_db=(-20.0 * math.log10(limiter.min_gain)) if limiter and limiter.min_gain < 1 else 0.0,
        ))
