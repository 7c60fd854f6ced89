"""Streaming processing: trim, down-mix, high-pass, gain, resampling, true-peak limiter.

Every stage is a small object with ``process(block) -> block`` and ``flush() -> block`` so a
whole chain runs block by block in bounded memory; every stage accepts blocks of any
length, including 0 and 1 samples. :func:`process_blocks` runs the chain a
:class:`ProcessingPlan` describes, in this order:

trim -> down-mix -> high-pass -> gain -> resample -> true-peak limiter

The down-mix follows ITU-R BS.775-3 (:func:`puresound_core.channels.downmix_matrix`). The
limiter runs last, at the delivery rate, so the true peak it controls is the one the
rendition will have before encoding. It acts only when the plan says the gain would push
the true peak over the ceiling, and :class:`ProcessingStats` reports what it did; nothing
else in the chain is dynamic. When the limiter runs, the gain is applied inside it (gain,
high-pass and resampling are linear, so the order does not change the result): any finite
gain, however large, then gives finite samples under the ceiling.
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

from .channels import DownmixMode, channel_names, downmix_matrix
from .errors import InvalidAudioError
from .true_peak import oversampled_envelope

_ENVELOPE_HISTORY = 11   # samples of context the 12-tap interpolator needs
_INTERPOLATOR_REACH = 6  # the envelope at n covers reconstructed peaks in [n - 6, n]
_TINY = float(np.finfo(np.float64).tiny)   # smallest limiting gain: keeps log10 finite
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
        Channels of the rendition; a source with other channels is down-mixed (``downmix``),
        a mono source is duplicated into stereo.
    trim_start_samples, trim_end_samples : int
        Samples (at the source rate) cut from the start and the end (leading / trailing
        silence found by analysis).
    source_layout : str or None
        FFmpeg channel layout name of the source (``ProbeResult.channel_layout``, e.g.
        ``"5.1(side)"``); ``None`` or an unspecified layout (``"6 channels"``) assumes the
        default layout for the channel count (:func:`puresound_core.channels.channel_names`).
    downmix : {"bs775", "legacy"}
        ``"bs775"``: ITU-R BS.775-3 down-mix (:func:`puresound_core.channels.downmix_matrix`).
        ``"legacy"``: the pre-BS.775 behaviour (mono = mean of all channels, stereo =
        channel 0 duplicated); only for presets that ask for it.

    References
    ----------
    ITU-R BS.775-3 (down-mix); ITU-R BS.1770-4 Annex 2 (true peak).
    """

    model_config = ConfigDict(frozen=True)

    gain_db: float = Field(default=0.0, allow_inf_nan=False)
    ceiling_dbtp: float | None = None
    limiter_lookahead_ms: float = Field(default=5.0, gt=0, le=50)
    limiter_release_ms: float = Field(default=80.0, gt=0, le=2000)
    highpass_hz: float | None = Field(default=None, gt=0)
    output_sample_rate_hz: int = Field(gt=0)
    output_channels: int = Field(ge=1, le=2)
    trim_start_samples: int = Field(default=0, ge=0)
    trim_end_samples: int = Field(default=0, ge=0)
    source_layout: str | None = None
    downmix: DownmixMode = "bs775"


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
        Largest gain reduction (positive dB; 0 when inactive); always finite.
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


def _db_to_gain(gain_db: float, *, what: str) -> float:
    """``10 ** (gain_db / 20)``; ValueError naming ``what`` when it is not a finite float."""
    try:
        gain = 10.0 ** (gain_db / 20.0)
    except OverflowError as err:
        raise ValueError(f"{what} {gain_db} dB: 10^(gain/20) overflows float64") from err
    if not math.isfinite(gain):
        raise ValueError(f"{what} {gain_db} dB is not a finite gain")
    return gain


def _window_means(values: np.ndarray, length: int) -> np.ndarray:
    """Mean of every ``length`` consecutive values, for positive values of any dynamic range.

    A running sum (or a difference of cumulative sums) carries rounding error relative to
    everything summed before, which swamps windows of tiny values after large ones (a gain
    of 1e-15 after gains of 1.0 came out as 0 or negative). Here each window is the suffix of
    one ``length``-aligned chunk plus the prefix of the next, so a window's error is relative
    to its own values only.

    Parameters
    ----------
    values : np.ndarray [shape=(n,)], float64
    length : int > 0

    Returns
    -------
    np.ndarray [shape=(max(n - length + 1, 0),)], float64
    """
    n = values.size
    count = n - length + 1
    if count <= 0:
        return np.zeros(0)
    chunks = -(-n // length)
    padded = np.zeros(chunks * length)
    padded[:n] = values
    grid = padded.reshape(chunks, length)
    prefix = np.cumsum(grid, axis=1).ravel()
    suffix = np.cumsum(grid[:, ::-1], axis=1)[:, ::-1].ravel()
    start = np.arange(count)
    end = start + length - 1
    # A window starting on a chunk boundary is that whole chunk (its suffix from the start).
    sums = suffix[start] + np.where(start % length != 0, prefix[end], 0.0)
    return sums / length


class TruePeakLimiter:
    """Look-ahead limiter that keeps the 4x-oversampled peak under a ceiling.

    The required gain at each sample is ``ceiling / peak`` where ``peak`` includes the
    BS.1770-4 Annex 2 interpolated values; a running minimum over the look-ahead window,
    an instant-attack / exponential-release follower and a moving average of the look-ahead
    length turn it into a smooth gain that is never above the required gain where a peak
    is. Output is delayed internally and re-aligned: ``flush`` returns the tail so the
    output has exactly as many samples as the input. Blocks of any length are accepted,
    including empty ones.

    Parameters
    ----------
    ceiling_dbtp : float
    sample_rate_hz : int
    channels : int
    lookahead_ms, release_ms : float
    gain_db : float
        Make-up gain applied together with the limiting gain: the output is
        ``block * 10 ** (gain_db / 20) * limiter_gain``, computed in float64, so a gain that
        would overflow float32 on its own (a click in digital silence normalised to a
        loudness target) still gives finite output under the ceiling. Default 0.

    Attributes
    ----------
    min_gain : float
        Smallest limiting gain so far (excluding ``gain_db``), in (0, 1]: never 0, so
        ``-20 log10(min_gain)`` is finite.
    samples_out, samples_limited : int

    Raises
    ------
    ValueError
        If ``10 ** (gain_db / 20)`` overflows (``gain_db`` above ~6000 dB) or is not finite.

    References
    ----------
    ITU-R BS.1770-4 Annex 2 (peak detection); D. Giannoulis, M. Massberg, J. D. Reiss,
    "Digital dynamic range compressor design - a tutorial and analysis", JAES 60(6), 2012
    (peak detector with instant attack / smooth release).
    """

    def __init__(self, *, ceiling_dbtp: float, sample_rate_hz: int, channels: int,
                 lookahead_ms: float = 5.0, release_ms: float = 80.0, gain_db: float = 0.0):
        self.gain = _db_to_gain(gain_db, what="limiter gain_db")
        # The required limiting gain is ceiling / (gain * peak): fold the gain into the ceiling
        # in the dB domain so neither overflows (exponent clamped to float64's normal range).
        exponent = (ceiling_dbtp - LIMITER_MARGIN_DB - gain_db) / 20.0
        self.ceiling = 10.0 ** min(max(exponent, -307.0), 308.0)
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
        block : np.ndarray [shape=(channels, n)], float32, n >= 0

        Returns
        -------
        np.ndarray [shape=(channels, m)], float32
            ``m`` may be 0 (the look-ahead is still filling, or ``n`` is 0).
        """
        channels = self._queue.shape[0]
        if block.shape[1] == 0:
            return np.zeros((channels, 0), dtype=np.float32)
        block = block.astype(np.float32, copy=False)
        joined = np.concatenate([self._history, block], axis=1)
        self._history = joined[:, -_ENVELOPE_HISTORY:]
        peak = oversampled_envelope(joined).max(axis=0).astype(np.float64)
        # ceiling / 0 = inf -> 1 (nothing to limit); never 0, which would be an infinite reduction.
        with np.errstate(divide="ignore", over="ignore"):
            required = np.clip(self.ceiling / peak, _TINY, 1.0)
        self._required = np.concatenate([self._required, required])
        self._queue = np.concatenate([self._queue, block], axis=1)
        ready = self._queue.shape[1] - self.delay
        if ready <= 0:
            return np.zeros((channels, 0), dtype=np.float32)
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
        gain = _window_means(boxed_in, self.lookahead)
        self._box_tail = boxed_in[boxed_in.size - (self.lookahead - 1):]
        out = (self._queue[:, :ready] * (gain * self.gain)).astype(np.float32)
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

    @property
    def max_gain_reduction_db(self) -> float:
        """float: largest gain reduction so far in dB (>= 0, finite)."""
        return -20.0 * math.log10(self.min_gain) if self.min_gain < 1.0 else 0.0


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
        The source at ``sample_rate_hz``; blocks may have any length, including 0. Total
        length is needed only for the end trim, which is applied by holding back
        ``plan.trim_end_samples``.
    sample_rate_hz : int
        Source rate.
    plan : ProcessingPlan
    stats_out : list, optional
        When given, a :class:`ProcessingStats` is appended once the stream is exhausted.

    Yields
    ------
    np.ndarray [shape=(plan.output_channels, n)], float32
        At ``plan.output_sample_rate_hz``; ``n >= 1``. With resampling, ``n`` sums to
        ``floor(N * out_rate / in_rate + 1/2)`` for ``N`` source samples after the trim
        (soxr's streaming output; exactly ``N`` without resampling).

    Raises
    ------
    InvalidAudioError
        If a block's channel count differs from the first block's or from
        ``plan.source_layout`` (rule ``channel_layout``), or a gain without a limiter drives
        samples past float32's range (rule ``finite_samples``).
    ValueError
        If ``plan.gain_db`` is too large for float64 (above ~6000 dB).

    References
    ----------
    soxr (VHQ) for resampling; ITU-R BS.775-3 for the down-mix; ITU-R BS.1770-4 Annex 2 for
    the limiter's peak detector.
    """
    out_channels = plan.output_channels
    sos = None
    zi = None
    resampler = None
    limiter = None
    if plan.output_sample_rate_hz != sample_rate_hz:
        resampler = _Resampler(sample_rate_hz, plan.output_sample_rate_hz, out_channels)
    if plan.ceiling_dbtp is not None:
        # The limiter applies the gain itself (in float64, folded into its ceiling).
        limiter = TruePeakLimiter(ceiling_dbtp=plan.ceiling_dbtp, sample_rate_hz=plan.output_sample_rate_hz,
                                  channels=out_channels, lookahead_ms=plan.limiter_lookahead_ms,
                                  release_ms=plan.limiter_release_ms, gain_db=plan.gain_db)
        gain = 1.0
    else:
        gain = _db_to_gain(plan.gain_db, what="processing plan gain_db")
    if plan.highpass_hz is not None:
        sos = highpass_sos(plan.highpass_hz, sample_rate_hz=sample_rate_hz)
        zi = np.zeros((sos.shape[0], out_channels, 2))

    samples_in = 0
    samples_out = 0
    to_skip = plan.trim_start_samples
    held = None  # the last trim_end_samples, held back until we know they are the end
    in_channels: int | None = None
    matrix: np.ndarray | None = None  # None: the source is already in the output layout

    def check_channels(block: np.ndarray) -> None:
        nonlocal in_channels, matrix
        if in_channels is None:
            in_channels = block.shape[0]
            names = channel_names(in_channels, plan.source_layout)
            if in_channels != out_channels:
                matrix = downmix_matrix(names, out_channels, mode=plan.downmix)
        elif block.shape[0] != in_channels:
            raise InvalidAudioError(
                f"processing: rule 'channel_layout' failed: block has {block.shape[0]} channels, "
                f"the stream started with {in_channels}", rule="channel_layout")

    def tail_stages(x: np.ndarray) -> np.ndarray:
        nonlocal zi
        if matrix is not None:
            x = matrix @ x  # BS.775-3 down-mix (or legacy); (out, in) @ (in, n)
        if sos is not None:
            x, zi = scipy.signal.sosfilt(sos, x, axis=1, zi=zi)
        if gain != 1.0:
            with np.errstate(over="ignore"):
                x = (x * gain).astype(np.float32)
            if gain > 1.0 and not np.isfinite(x).all():
                raise InvalidAudioError(
                    f"processing: rule 'finite_samples' failed: gain {plan.gain_db:.1f} dB without a "
                    "limiter ceiling drives samples past float32 range", rule="finite_samples")
        x = x.astype(np.float32, copy=False)
        if resampler is not None:
            x = resampler.process(x)
        if limiter is not None:
            x = limiter.process(x)
        return x

    for block in blocks:
        check_channels(block)
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
            max_gain_reduction_db=limiter.max_gain_reduction_db if limiter else 0.0,
        ))
