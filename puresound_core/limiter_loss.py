"""Predict what the true-peak limiter takes off integrated loudness, at any gain, from one pass.

A peak limiter lowers the loudness of what it limits, so the gain that lands a limited
rendition on its target is larger than ``target - loudness``. Measuring that loss by
rendering again costs a full decode and limiter pass each time; :class:`LimiterLossModel`
records, in the same pass that measures the signal, the two things the loss depends on,
per 5 ms chunk (one limiter look-ahead):

* the peak envelope: the largest 4x-oversampled absolute value (BS.1770-4 Annex 2), the
  quantity :class:`~puresound_core.processing.TruePeakLimiter` divides its ceiling by;
* the K-weighted, channel-weighted energy (BS.1770-4 eq. 1-2), what integrated loudness sums.

Limiting ``x * g`` at ceiling ``c`` is ``g *`` limiting ``x`` at ``c / g``, so the recorded
envelope of the *ungained* signal gives the limiter's gain curve at every make-up gain: the
required gain ``min(1, c / (g * peak))`` of each chunk and of the next (the look-ahead reaches
that far), followed with the limiter's instant attack and exponential release. The
integrated loudness of the limited signal is then the gated mean (BS.1770-4 s. 2.8: 400 ms
blocks, 75 % overlap, -70 LUFS absolute and -10 LU relative gates) of the chunk energies
times the squared gain. Only the *difference* between the modelled loudness with and without
limiting is used, so the chunk grid's approximations of the 100 ms segment boundaries cancel.

Memory is two numbers per chunk: 23 MB for a 2-hour programme at 48 kHz.
"""

from __future__ import annotations

import math

import numpy as np

from .loudness import ABSOLUTE_GATE_LUFS, LOUDNESS_OFFSET_DB, RELATIVE_GATE_LU, channel_weights, k_weighting_sos
from .processing import _ENVELOPE_HISTORY as _HISTORY
from .processing import LIMITER_MARGIN_DB, _release
from .true_peak import oversampled_envelope

__all__ = ["LimiterLossModel"]



class LimiterLossModel:
    """Chunked peak envelope and K-weighted energy of a signal, to predict limiter loss.

    Feed the *ungained* signal the limiter will see (after down-mix, high-pass and
    resampling) with :meth:`process`, then ask :meth:`loss_lu` or :meth:`solve_gain_db`.

    Parameters
    ----------
    sample_rate_hz : int > 0
    channels : int > 0
    layout : str, optional
        FFmpeg channel layout name, for the BS.1770-4 channel weights.
    dual_mono : bool
        Weigh a mono signal as dual mono (as the rendition is verified).
    lookahead_ms, release_ms : float
        Those of the limiter (:class:`~puresound_core.processing.ProcessingPlan`); the chunk
        is one look-ahead long.
    k_weighted : bool
        Weigh energy with the K filter (BS.1770-4). ``False`` uses plain energy: cheaper, a
        little less exact (what a retry inside a render pass records).

    References
    ----------
    ITU-R BS.1770-4 (10/2015) eq. 1-2, s. 2.8 (gating) and Annex 2 (true peak);
    D. Giannoulis, M. Massberg, J. D. Reiss, "Digital dynamic range compressor design - a
    tutorial and analysis", JAES 60(6), 2012 (instant attack, smooth release).
    """

    def __init__(self, *, sample_rate_hz: int, channels: int, layout: str | None = None, dual_mono: bool = False,
                 lookahead_ms: float = 5.0, release_ms: float = 80.0, k_weighted: bool = True):
        self.sample_rate_hz = int(sample_rate_hz)
        self.chunk = max(1, round(lookahead_ms * 1e-3 * sample_rate_hz))
        self._weights = channel_weights(channels, layout, dual_mono=dual_mono)
        import scipy.signal  # imported when a meter or chain is built, not at import: a cached re-run builds none

        self._sosfilt = scipy.signal.sosfilt
        self._sos = k_weighting_sos(sample_rate_hz) if k_weighted else None
        self._zi = np.zeros((self._sos.shape[0], channels, 2)) if self._sos is not None else None
        self._history = np.zeros((channels, _HISTORY), dtype=np.float32)
        self._release_coefficient = math.exp(-self.chunk / (release_ms * 1e-3 * sample_rate_hz))
        self.segment_chunks = max(1, round(0.1 * sample_rate_hz / self.chunk))
        self._peaks: list[np.ndarray] = []
        self._energy: list[np.ndarray] = []
        self._rest_peak = np.zeros(0)
        self._rest_energy = np.zeros(0)
        self.samples = 0

    def process(self, block: np.ndarray, *, peak: np.ndarray | None = None) -> None:
        """Add the next block of the ungained signal.

        Parameters
        ----------
        block : np.ndarray [shape=(channels, n)], float32, n >= 0
        peak : np.ndarray [shape=(n,)], optional
            The block's peak envelope (largest oversampled value over channels), when the
            caller has it already (the limiter does); computed here otherwise.
        """
        if block.shape[1] == 0:
            return
        if peak is None:
            joined = np.concatenate([self._history, block.astype(np.float32, copy=False)], axis=1)
            self._history = joined[:, -_HISTORY:]
            peak = oversampled_envelope(joined).max(axis=0).astype(np.float64)
        if self._sos is not None:
            block, self._zi = self._sosfilt(self._sos, block, axis=1, zi=self._zi)
        self.add(self._weights @ np.square(block), peak)

    def add(self, energy: np.ndarray, peak: np.ndarray) -> None:
        """Add per-sample values a loudness meter has computed already.

        Parameters
        ----------
        energy : np.ndarray [shape=(n,)]
            Channel-weighted K-filtered energy (BS.1770-4 eq. 1-2, before the mean).
        peak : np.ndarray [shape=(n,)]
            Largest oversampled absolute value over channels.
        """
        n = energy.size
        if n == 0:
            return
        peak = np.concatenate([self._rest_peak, peak])
        energy = np.concatenate([self._rest_energy, energy])
        full = (peak.size // self.chunk) * self.chunk
        if full:
            self._peaks.append(peak[:full].reshape(-1, self.chunk).max(axis=1))
            self._energy.append(energy[:full].reshape(-1, self.chunk).sum(axis=1))
        self._rest_peak, self._rest_energy = peak[full:], energy[full:]
        self.samples += n

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        peaks = self._peaks + ([np.array([self._rest_peak.max()])] if self._rest_peak.size else [])
        energy = self._energy + ([np.array([self._rest_energy.sum()])] if self._rest_energy.size else [])
        if len(self._peaks) > 1:  # keep one array each from now on
            self._peaks, self._energy = [np.concatenate(self._peaks)], [np.concatenate(self._energy)]
        if not peaks:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(peaks), np.concatenate(energy)

    def _gain_curve(self, peaks: np.ndarray, gain_db: float, ceiling_dbtp: float) -> np.ndarray:
        threshold = 10.0 ** ((ceiling_dbtp - LIMITER_MARGIN_DB - gain_db) / 20.0)
        with np.errstate(divide="ignore"):
            required = np.clip(threshold / peaks, 1e-12, 1.0)
        ahead = np.minimum(required, np.append(required[1:], 1.0))  # the look-ahead reaches into the next chunk
        return _release(ahead, 1.0, self._release_coefficient)

    def _integrated(self, energy: np.ndarray, gain_db: float) -> float | None:
        """Gated integrated loudness (LUFS) of chunk energies at ``gain_db``."""
        s = self.segment_chunks
        segments = np.add.reduceat(energy, np.arange(0, energy.size, s)) if energy.size else energy
        if segments.size < 4:
            return None
        blocks = (segments[:-3] + segments[1:-2] + segments[2:-1] + segments[3:]) / (4 * s * self.chunk)
        blocks = blocks * 10.0 ** (gain_db / 10.0)
        with np.errstate(divide="ignore"):
            lufs = LOUDNESS_OFFSET_DB + 10.0 * np.log10(blocks)
        gated = blocks[lufs > ABSOLUTE_GATE_LUFS]
        if gated.size == 0:
            return None
        relative = LOUDNESS_OFFSET_DB + 10.0 * np.log10(gated.mean()) + RELATIVE_GATE_LU
        gated = gated[LOUDNESS_OFFSET_DB + 10.0 * np.log10(gated) > relative]
        return LOUDNESS_OFFSET_DB + 10.0 * math.log10(gated.mean())

    def loss_lu(self, gain_db: float, ceiling_dbtp: float) -> float:
        """Integrated loudness the limiter takes off at a make-up gain and ceiling.

        Parameters
        ----------
        gain_db : float
            Make-up gain applied before (inside) the limiter.
        ceiling_dbtp : float
            The limiter's ceiling (its own margin is applied as the limiter does).

        Returns
        -------
        float
            LU, >= 0; 0 when the signal has no gating block above the absolute gate.
        """
        peaks, energy = self._arrays()
        if peaks.size == 0:
            return 0.0
        plain = self._integrated(energy, gain_db)
        limited = self._integrated(energy * np.square(self._gain_curve(peaks, gain_db, ceiling_dbtp)), gain_db)
        if plain is None or limited is None:
            return 0.0
        return max(0.0, plain - limited)

    def solve_gain_db(self, *, delivered_lufs: float, aim_lufs: float, ceiling_dbtp: float,
                      max_gain_db: float, tolerance_lu: float = 0.01) -> tuple[float, float]:
        """The make-up gain whose limited output lands on ``aim_lufs``.

        Solves ``delivered_lufs + g - loss(g) = aim_lufs`` for ``g`` in
        ``[aim - delivered, max_gain_db]`` by regula falsi (Illinois variant): the left side
        rises with ``g`` (the loss grows more slowly than the gain), so the root is bracketed.
        Under heavy limiting the loss grows almost as fast as the gain (0.8 LU per dB on
        speech limited by 9 dB), and the gain that reaches the aim may lie past
        ``max_gain_db``: then ``max_gain_db`` is returned and verification reports the miss.

        Parameters
        ----------
        delivered_lufs : float
            Exact integrated loudness of the ungained signal (from the loudness meter).
        aim_lufs : float
        ceiling_dbtp : float
        max_gain_db : float
            Upper bound of the gain.
        tolerance_lu : float
            Stop when the predicted output is this close to the aim.

        Returns
        -------
        gain_db : float
        predicted_loss_lu : float
            The limiter's loss at that gain.
        """
        base = aim_lufs - delivered_lufs
        low = min(base, max_gain_db)
        low_loss = self.loss_lu(low, ceiling_dbtp)
        if low_loss <= tolerance_lu or low >= max_gain_db:
            return low, low_loss
        high = max_gain_db
        high_loss = self.loss_lu(high, ceiling_dbtp)
        f_low, f_high = low - low_loss - base, high - high_loss - base
        if f_high <= 0:
            return high, high_loss
        side = 0
        gain, loss = low, low_loss
        for _ in range(40):
            gain = (low * f_high - high * f_low) / (f_high - f_low)
            loss = self.loss_lu(gain, ceiling_dbtp)
            f = gain - loss - base
            if abs(f) <= tolerance_lu:
                break
            if f < 0:
                low, f_low = gain, f
                if side == -1:
                    f_high /= 2
                side = -1
            else:
                high, f_high = gain, f
                if side == 1:
                    f_low /= 2
                side = 1
        return gain, loss
