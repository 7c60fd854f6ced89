"""True peak per ITU-R BS.1770-4 Annex 2: 4x oversampling with the published 48-tap filter.

The interpolator is the Annex's order-48, 4-phase FIR (12 taps a phase), applied at any
input rate (its response is defined relative to the sample rate). Each phase is computed
over a whole block as 12 shifted multiply-adds (float32 for float32 blocks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .audio import check_audio
from .errors import InvalidAudioError

#: ITU-R BS.1770-4 Annex 2, Table 1: the 4 phases of the interpolation filter.
BS1770_TRUE_PEAK_PHASES = np.array([
    [0.0017089843750, 0.0109863281250, -0.0196533203125, 0.0332031250000,
     -0.0594482421875, 0.1373291015625, 0.9721679687500, -0.1022949218750,
     0.0476074218750, -0.0266113281250, 0.0148925781250, -0.0083007812500],
    [-0.0291748046875, 0.0292968750000, -0.0517578125000, 0.0891113281250,
     -0.1665039062500, 0.4650878906250, 0.7797851562500, -0.2003173828125,
     0.1015625000000, -0.0582275390625, 0.0330810546875, -0.0189208984375],
    [-0.0189208984375, 0.0330810546875, -0.0582275390625, 0.1015625000000,
     -0.2003173828125, 0.7797851562500, 0.4650878906250, -0.1665039062500,
     0.0891113281250, -0.0517578125000, 0.0292968750000, -0.0291748046875],
    [-0.0083007812500, 0.0148925781250, -0.0266113281250, 0.0476074218750,
     -0.1022949218750, 0.9721679687500, 0.1373291015625, -0.0594482421875,
     0.0332031250000, -0.0196533203125, 0.0109863281250, 0.0017089843750],
])
_TAPS = BS1770_TRUE_PEAK_PHASES.shape[1]
# Column p of _KERNEL maps a window x[n-11..n] (oldest first) to phase p's output.
_KERNEL = np.ascontiguousarray(BS1770_TRUE_PEAK_PHASES[:, ::-1].T, dtype=np.float32)
#: Largest gain any phase has for a full-scale input (sum of |taps|); bounds the overshoot.
MAX_PHASE_GAIN = float(np.abs(BS1770_TRUE_PEAK_PHASES).sum(axis=1).max())


def amplitude_to_db(value: float) -> float:
    """20 log10 of a linear amplitude; ``-inf`` for 0.

    Parameters
    ----------
    value : float >= 0

    Returns
    -------
    float
        Level in dB (dBFS / dBTP depending on what ``value`` is).
    """
    return 20.0 * math.log10(value) if value > 0 else -math.inf


def oversampled_envelope(audio_with_history: np.ndarray) -> np.ndarray:
    """Largest absolute interpolated value around every sample, from 4x oversampling.

    Parameters
    ----------
    audio_with_history : np.ndarray [shape=(channels, 11 + n)], float32, n >= 0
        The signal preceded by the 11 samples before it (zeros at the start of a stream).
        ``n = 0`` (an empty block, e.g. a resampler that had no output yet) gives an empty
        envelope; so does anything shorter than the 11 samples of history.

    Returns
    -------
    np.ndarray [shape=(channels, max(n, 0))], float32 (float64 for float64 input)
        For output sample ``i``: the maximum of ``|x[i]|`` and the four interpolated values of
        the 12-sample window ending at ``i``. The filter's group delay is 5.5 samples, so
        those values are reconstructed peaks lying between samples ``i - 6`` and ``i - 5``;
        a peak seen at ``i`` lies within ``[i - 6, i]``.

    References
    ----------
    ITU-R BS.1770-4 (10/2015), Annex 2, Fig. 1 and Table 1.
    """
    channels, total = audio_with_history.shape
    n = total - (_TAPS - 1)
    dtype = np.result_type(audio_with_history.dtype, _KERNEL.dtype)
    if n <= 0:
        # No complete 12-sample window: no sample to report.
        return np.zeros((channels, 0), dtype=dtype)
    # Row j of _KERNEL weighs x[i - 11 + j]. Shifted multiply-adds over the whole block are
    # ~2x faster than a matrix product over a sliding-window view, which numpy cannot hand
    # to BLAS (its rows overlap); the sums differ only by float32 rounding (~2e-7).
    envelope = np.abs(audio_with_history[:, _TAPS - 1:]).astype(dtype, copy=False)
    phase = np.empty((channels, n), dtype=dtype)
    term = np.empty_like(phase)
    for p in range(_KERNEL.shape[1]):
        np.multiply(audio_with_history[:, :n], _KERNEL[0, p], out=phase)
        for j in range(1, _TAPS):
            np.multiply(audio_with_history[:, j:j + n], _KERNEL[j, p], out=term)
            phase += term
        np.abs(phase, out=phase)
        np.maximum(envelope, phase, out=envelope)
    return envelope


class TruePeakMeter:
    """Streaming true-peak meter (ITU-R BS.1770-4 Annex 2).

    Feed consecutive blocks with :meth:`process`; read :attr:`true_peak` at any time.
    The reading is the larger of the 4x-oversampled peak and the sample peak (the
    reconstructed waveform passes through every sample).

    Parameters
    ----------
    channels : int > 0

    References
    ----------
    ITU-R BS.1770-4 (10/2015), Annex 2; EBU Tech 3341 (2016) cases 15-23.
    """

    def __init__(self, channels: int):
        self._history = np.zeros((channels, _TAPS - 1), dtype=np.float32)
        self._peaks = np.zeros(channels, dtype=np.float64)

    def process(self, block: np.ndarray, *, envelope: bool = False) -> np.ndarray | None:
        """Add the next block.

        Parameters
        ----------
        block : np.ndarray [shape=(channels, n)], float32
        envelope : bool
            Also return the block's peak envelope (no block is skipped then).

        Returns
        -------
        np.ndarray [shape=(n,)], float64, or None
            With ``envelope``: for each sample, the largest oversampled absolute value over
            channels (:func:`oversampled_envelope`).
        """
        if block.shape[1] == 0:
            return np.zeros(0) if envelope else None
        # Block-level pruning: no interpolated value can exceed MAX_PHASE_GAIN x the largest
        # input in its window, so a block that cannot raise any channel's peak is skipped.
        block_max = np.abs(block).max(axis=1)
        bound = np.maximum(block_max, np.abs(self._history).max(axis=1)) * MAX_PHASE_GAIN
        joined = np.concatenate([self._history, block.astype(np.float32, copy=False)], axis=1)
        out = None
        if envelope:
            env = oversampled_envelope(joined)
            self._peaks = np.maximum(self._peaks, env.max(axis=1))
            out = env.max(axis=0).astype(np.float64)
        elif np.any(bound > self._peaks):
            env_max = oversampled_envelope(joined).max(axis=1)
            self._peaks = np.maximum(self._peaks, env_max)
        self._peaks = np.maximum(self._peaks, block_max)
        self._history = joined[:, -(_TAPS - 1):].copy()
        return out

    @property
    def channel_true_peaks(self) -> np.ndarray:
        """np.ndarray [shape=(channels,)]: linear true peak of each channel so far.

        Includes the filter's tail (the interpolated values after the last sample fed),
        without changing the meter's state.
        """
        tail = np.concatenate([self._history, np.zeros_like(self._history)], axis=1)
        return np.maximum(self._peaks, oversampled_envelope(tail).max(axis=1))

    @property
    def true_peak(self) -> float:
        """float: linear true peak over all channels so far (see :attr:`channel_true_peaks`)."""
        peaks = self.channel_true_peaks
        return float(peaks.max()) if peaks.size else 0.0


def true_peak_dbtp(audio: np.ndarray | Iterable[np.ndarray], *, channels: int | None = None) -> float:
    """True-peak level of a signal in dBTP (ITU-R BS.1770-4 Annex 2).

    Parameters
    ----------
    audio : np.ndarray [shape=(channels, samples)] or iterable of such blocks
    channels : int, optional
        Channel count; required when ``audio`` is an iterable of blocks.

    Returns
    -------
    float
        True peak in dBTP; ``-inf`` for an all-zero signal.

    Raises
    ------
    InvalidAudioError
        If the signal holds non-finite samples or has the wrong layout.

    References
    ----------
    ITU-R BS.1770-4 (10/2015), Annex 2; EBU Tech 3341 (2016), cases 15-19.
    """
    if isinstance(audio, np.ndarray):
        audio = check_audio(audio)
        channels = audio.shape[0]
        blocks: Iterable[np.ndarray] = [audio]
    else:
        if channels is None:
            raise InvalidAudioError("true_peak_dbtp: channels is required for a block stream")
        blocks = audio
    meter = TruePeakMeter(channels)
    for block in blocks:
        if not np.isfinite(block).all():
            raise InvalidAudioError("true_peak_dbtp: rule 'finite_samples' failed: NaN or inf in signal",
                                    rule="finite_samples")
        meter.process(block)
    return amplitude_to_db(meter.true_peak)
