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
    loss_model : LimiterLossModel, optional
        Fed every input block (ungained) with its peak envelope
        (:mod:`puresound_core.limiter_loss`).

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
                 lookahead_ms: float = 5.0, release_ms: float = 80.0, gain_db: float = 0.0, loss_model=None):
        self.gain = _db_to_gain(gain_db, what="limiter gain_db")
        self._loss_model = loss_model
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
        import scipy.ndimage  # imported when a limiter is built, not at import: a cached re-run builds none

        self._minimum_filter1d = scipy.ndimage.minimum_filter1d
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
        if self._loss_model is not None:
            self._loss_model.process(block, peak=peak)
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
        floor = self._minimum_filter1d(self._required, size=span, origin=-(span // 2),
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
    import scipy.signal  # imported on use, not at import: a cached re-run never filters

    return scipy.signal.butter(order, cutoff_hz, btype="highpass", fs=sample_rate_hz, output="sos")


class ProcessingChain:
    """The chain a :class:`ProcessingPlan` describes, fed block by block (push form).

    One decoded block stream can feed several chains (one per rendition) in the same pass;
    :func:`process_blocks` is the same chain in pull form.

    Parameters
    ----------
    sample_rate_hz : int
        Source rate.
    plan : ProcessingPlan
    loss_model : LimiterLossModel, optional
        Fed with what the limiter sees (the ungained, resampled signal and its peak
        envelope), so a later attempt can predict the limiter's loudness loss at another
        gain or ceiling without another pass (:mod:`puresound_core.limiter_loss`).

    Raises
    ------
    ValueError
        If ``plan.gain_db`` is too large for float64 (above ~6000 dB).

    References
    ----------
    soxr (VHQ) for resampling; ITU-R BS.775-3 for the down-mix; ITU-R BS.1770-4 Annex 2 for
    the limiter's peak detector.
    """

    def __init__(self, *, sample_rate_hz: int, plan: ProcessingPlan, loss_model=None):
        self.plan = plan
        self._out_channels = plan.output_channels
        import scipy.signal  # imported when a meter or chain is built, not at import: a cached re-run builds none

        self._sosfilt = scipy.signal.sosfilt
        self._sos = None
        self._zi = None
        self._resampler = None
        self._limiter = None
        if plan.output_sample_rate_hz != sample_rate_hz:
            self._resampler = _Resampler(sample_rate_hz, plan.output_sample_rate_hz, self._out_channels)
        if plan.ceiling_dbtp is not None:
            # The limiter applies the gain itself (in float64, folded into its ceiling).
            self._limiter = TruePeakLimiter(ceiling_dbtp=plan.ceiling_dbtp, sample_rate_hz=plan.output_sample_rate_hz,
                                            channels=self._out_channels, lookahead_ms=plan.limiter_lookahead_ms,
                                            release_ms=plan.limiter_release_ms, gain_db=plan.gain_db,
                                            loss_model=loss_model)
            self._gain = 1.0
        else:
            self._gain = _db_to_gain(plan.gain_db, what="processing plan gain_db")
        if plan.highpass_hz is not None:
            self._sos = highpass_sos(plan.highpass_hz, sample_rate_hz=sample_rate_hz)
            self._zi = np.zeros((self._sos.shape[0], self._out_channels, 2))
        self.samples_in = 0
        self.samples_out = 0
        self._to_skip = plan.trim_start_samples
        self._held: np.ndarray | None = None  # the last trim_end_samples, held back until known to be the end
        self._in_channels: int | None = None
        self._matrix: np.ndarray | None = None  # None: the source is already in the output layout
        self._flushed = False

    def _check_channels(self, block: np.ndarray) -> None:
        if self._in_channels is None:
            self._in_channels = block.shape[0]
            names = channel_names(self._in_channels, self.plan.source_layout)
            if self._in_channels != self._out_channels:
                self._matrix = downmix_matrix(names, self._out_channels, mode=self.plan.downmix)
        elif block.shape[0] != self._in_channels:
            raise InvalidAudioError(
                f"processing: rule 'channel_layout' failed: block has {block.shape[0]} channels, "
                f"the stream started with {self._in_channels}", rule="channel_layout")

    def _tail_stages(self, x: np.ndarray) -> np.ndarray:
        if self._matrix is not None:
            x = self._matrix @ x  # BS.775-3 down-mix (or legacy); (out, in) @ (in, n)
        if self._sos is not None:
            x, self._zi = self._sosfilt(self._sos, x, axis=1, zi=self._zi)
        if self._gain != 1.0:
            with np.errstate(over="ignore"):
                x = (x * self._gain).astype(np.float32)
            if self._gain > 1.0 and not np.isfinite(x).all():
                raise InvalidAudioError(
                    f"processing: rule 'finite_samples' failed: gain {self.plan.gain_db:.1f} dB without a "
                    "limiter ceiling drives samples past float32 range", rule="finite_samples")
        x = x.astype(np.float32, copy=False)
        if self._resampler is not None:
            x = self._resampler.process(x)
        if self._limiter is not None:
            x = self._limiter.process(x)
        return x

    def process(self, block: np.ndarray) -> np.ndarray:
        """Process the next source block.

        Parameters
        ----------
        block : np.ndarray [shape=(channels, n)], float32, n >= 0

        Returns
        -------
        np.ndarray [shape=(plan.output_channels, m)], float32
            What is ready; ``m`` may be 0 (trim, resampler or limiter look-ahead holding back).

        Raises
        ------
        InvalidAudioError
            If the block's channel count differs from the first block's or from
            ``plan.source_layout`` (rule ``channel_layout``), or a gain without a limiter
            drives samples past float32's range (rule ``finite_samples``).
        """
        self._check_channels(block)
        self.samples_in += block.shape[1]
        if self._to_skip:
            cut = min(self._to_skip, block.shape[1])
            block = block[:, cut:]
            self._to_skip -= cut
        if self.plan.trim_end_samples:
            held = block if self._held is None else np.concatenate([self._held, block], axis=1)
            release = held.shape[1] - self.plan.trim_end_samples
            if release <= 0:
                self._held = held
                return np.zeros((self._out_channels, 0), dtype=np.float32)
            block, self._held = held[:, :release], held[:, release:]
        if block.shape[1] == 0:
            return np.zeros((self._out_channels, 0), dtype=np.float32)
        out = self._tail_stages(block)
        self.samples_out += out.shape[1]
        return out

    def flush(self) -> np.ndarray:
        """End of the source: release what the resampler and limiter still hold.

        Returns
        -------
        np.ndarray [shape=(plan.output_channels, m)], float32
        """
        if self._flushed:
            return np.zeros((self._out_channels, 0), dtype=np.float32)
        self._flushed = True
        tail = []
        if self._resampler is not None:
            flushed = self._resampler.flush()
            if flushed.shape[1]:
                tail.append(self._limiter.process(flushed) if self._limiter is not None else flushed)
        if self._limiter is not None:
            tail.append(self._limiter.flush())
        out = np.concatenate(tail, axis=1) if tail else np.zeros((self._out_channels, 0), dtype=np.float32)
        self.samples_out += out.shape[1]
        return out

    def stats(self) -> ProcessingStats:
        """What the chain did so far (complete after :meth:`flush`).

        Returns
        -------
        ProcessingStats
        """
        limiter = self._limiter
        limited = limiter.samples_limited if limiter else 0
        return ProcessingStats(
            samples_in=self.samples_in, samples_out=self.samples_out,
            limiter_active=limited > 0,
            limited_ratio=limited / self.samples_out if self.samples_out else 0.0,
            max_gain_reduction_db=limiter.max_gain_reduction_db if limiter else 0.0,
        )


def process_blocks(
    blocks: Iterable[np.ndarray],
    *,
    sample_rate_hz: int,
    plan: ProcessingPlan,
    stats_out: list | None = None,
) -> Iterator[np.ndarray]:
    """Run a :class:`ProcessingPlan` over a block stream (:class:`ProcessingChain` in pull form).

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
    chain = ProcessingChain(sample_rate_hz=sample_rate_hz, plan=plan)
    for block in blocks:
        out = chain.process(block)
        if out.shape[1]:
            yield out
    out = chain.flush()
    if out.shape[1]:
        yield out
    if stats_out is not None:
        stats_out.append(chain.stats())
