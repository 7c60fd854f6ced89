"""Loudness per ITU-R BS.1770-4 with EBU Tech 3341 meters and EBU Tech 3342 loudness range.

The signal is K-weighted (a high shelf and a high-pass, BS.1770-4 Annex 1), squared and
summed into 100 ms segments per channel. Everything else is read from those segments:

* momentary loudness: 400 ms window (4 segments), every 100 ms (EBU Tech 3341 s. 2.2);
* the gating blocks of integrated loudness are the same 400 ms windows, 75 % overlap
  (BS.1770-4 eq. 3-7): absolute gate -70 LUFS, relative gate -10 LU;
* short-term loudness: 3 s window (30 segments), every 100 ms;
* loudness range: short-term values gated at -70 LUFS and -20 LU, LRA = P95 - P10
  (EBU Tech 3342 s. 3).

Memory is one float per channel per 100 ms (~0.6 MB for 2 hours of stereo), so programmes
of any length are measured in one streaming pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict

from .audio import check_audio
from .channels import bs1770_weights, channel_names
from .errors import InvalidAudioError
from .true_peak import TruePeakMeter, amplitude_to_db

#: BS.1770-4 eq. 2 offset (dB): makes a 1 kHz sine at -23 dBFS in two channels read -23 LUFS.
LOUDNESS_OFFSET_DB = -0.691
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0      # BS.1770-4 eq. 6 (since BS.1770-2)
LRA_RELATIVE_GATE_LU = -20.0  # EBU Tech 3342 s. 3
MOMENTARY_SEGMENTS = 4        # 400 ms
SHORT_TERM_SEGMENTS = 30      # 3 s

# Analogue-prototype parameters of the K-weighting filters, fitted to the 48 kHz
# coefficients of BS.1770-4 Tables 1-2 (as in libebur128 and pyloudnorm's "DeMan" filter
# class; B. De Man, "Evaluation of implementations of the EBU R128 loudness measurement",
# AES 145, 2018). They give the published 48 kHz biquads and extend them to any rate.
_SHELF_F0_HZ = 1681.974450955533
_SHELF_GAIN_DB = 3.999843853973347
_SHELF_Q = 0.7071752369554196
_HIGHPASS_F0_HZ = 38.13547087602444
_HIGHPASS_Q = 0.5003270373238773


def k_weighting_sos(sample_rate_hz: int) -> np.ndarray:
    """K-weighting filter as second-order sections for a given sample rate.

    Parameters
    ----------
    sample_rate_hz : int > 0

    Returns
    -------
    np.ndarray [shape=(2, 6)], float64
        ``scipy.signal.sosfilt`` sections: stage 1 (high shelf, head effects), stage 2
        (RLB high-pass).

    References
    ----------
    ITU-R BS.1770-4 (10/2015), Annex 1, Tables 1 and 2 (48 kHz coefficients).
    """
    k = math.tan(math.pi * _SHELF_F0_HZ / sample_rate_hz)
    vh = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    vb = vh ** 0.4996667741545416
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf = [
        (vh + vb * k / _SHELF_Q + k * k) / a0,
        2.0 * (k * k - vh) / a0,
        (vh - vb * k / _SHELF_Q + k * k) / a0,
        1.0,
        2.0 * (k * k - 1.0) / a0,
        (1.0 - k / _SHELF_Q + k * k) / a0,
    ]
    k = math.tan(math.pi * _HIGHPASS_F0_HZ / sample_rate_hz)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _HIGHPASS_Q + k * k) / a0]
    return np.array([shelf, highpass], dtype=np.float64)


def channel_weights(channels: int, layout: str | None = None, *, dual_mono: bool = False) -> np.ndarray:
    """BS.1770-4 channel weights G_i for a channel count / FFmpeg layout name.

    Parameters
    ----------
    channels : int > 0
    layout : str, optional
        FFmpeg layout name (``"5.1"``, ``"5.1(side)"``, ``"7.1"``, ``"7.1.4"``...). Without
        one, or for an unspecified layout such as ``"6 channels"`` (a WAV without a channel
        mask), the default layout for the count is assumed
        (:func:`puresound_core.channels.default_layout`: 5 = 5.0, 6 = 5.1, 7 = 6.1, 8 = 7.1).
    dual_mono : bool
        Count a mono signal twice (G = 2.0, +3.01 LU): the loudness of a mono programme
        played on both loudspeakers of a stereo system, as FFmpeg ``ebur128=dualmono=true``
        and libebur128's ``EBUR128_DUAL_MONO``. No effect on 2 or more channels.

    Returns
    -------
    np.ndarray [shape=(channels,)], float64
        1.0 for front and height channels, 1.41 (+1.5 dB) for side / back surrounds, 0 for
        LFE (see :func:`puresound_core.channels.bs1770_weights`); ``[2.0]`` for dual mono.

    Raises
    ------
    InvalidAudioError
        If the layout names a different number of channels (rule ``channel_layout``).

    References
    ----------
    ITU-R BS.1770-4 (10/2015), eq. 2 and Table 3; FFmpeg ``ebur128`` filter (``dualmono``);
    libebur128 ``EBUR128_DUAL_MONO``.
    """
    if dual_mono and channels == 1:
        return np.array([2.0])
    return bs1770_weights(channel_names(channels, layout))


def _energy_to_lufs(mean_square: np.ndarray | float) -> np.ndarray | float:
    """BS.1770-4 eq. 2: weighted mean square -> LUFS (``-inf`` for 0)."""
    with np.errstate(divide="ignore"):
        return LOUDNESS_OFFSET_DB + 10.0 * np.log10(mean_square)


class LoudnessReport(BaseModel):
    """Loudness, loudness range and peak levels of a programme.

    Attributes
    ----------
    integrated_lufs : float or None
        Gated integrated loudness (BS.1770-4); ``None`` with a ``reason`` when the
        programme is shorter than one 400 ms gating block or every block is below the
        -70 LUFS absolute gate.
    momentary_max_lufs, short_term_max_lufs : float or None
        Largest 400 ms / 3 s loudness (EBU Tech 3341); ``None`` when the programme is
        shorter than the window.
    lra_lu : float or None
        Loudness range (EBU Tech 3342); ``None`` when no short-term value passes the gates.
    lra_low_lufs, lra_high_lufs : float or None
        The 10th and 95th percentiles LRA is measured between.
    true_peak_dbtp : float
        BS.1770-4 Annex 2 true peak; ``-inf`` for digital silence.
    sample_peak_dbfs : float
    rms_dbfs : float
        Unweighted RMS over all channels and samples, relative to a full-scale square wave
        (a full-scale sine reads -3.01 dBFS).
    duration_s : float
    sample_rate_hz, channels : int
    reason : str or None
        Why a value is ``None``.
    """

    model_config = ConfigDict(frozen=True)

    integrated_lufs: float | None
    momentary_max_lufs: float | None
    short_term_max_lufs: float | None
    lra_lu: float | None
    lra_low_lufs: float | None
    lra_high_lufs: float | None
    true_peak_dbtp: float
    sample_peak_dbfs: float
    rms_dbfs: float
    duration_s: float
    sample_rate_hz: int
    channels: int
    reason: str | None = None


class LoudnessSeries(BaseModel):
    """Momentary and short-term loudness over time, thinned for plots and reports.

    Attributes
    ----------
    hop_s : float
        Seconds between values (0.1 s, or more for long programmes: at most ``max_points``).
    momentary_lufs, short_term_lufs : list of float or None
        Value ``j`` is the loudness of the window *ending* at ``(j + 1) * hop_s`` (the
        largest value within each hop when thinned); ``None`` before the first full window
        and for digital silence. The windows are 400 ms and 3 s (EBU Tech 3341).
    """

    model_config = ConfigDict(frozen=True)

    hop_s: float
    momentary_lufs: list[float | None]
    short_term_lufs: list[float | None]


class LoudnessMeter:
    """Streaming BS.1770-4 / EBU Tech 3341-3342 meter.

    Feed consecutive blocks with :meth:`process`, then call :meth:`report` (or read
    :meth:`momentary_lufs` / :meth:`short_term_lufs`). The meter's state is the filter
    memory and one energy sum per channel per 100 ms; the results it returns are frozen.

    Parameters
    ----------
    sample_rate_hz : int > 0
    channels : int > 0
    layout : str, optional
        FFmpeg channel layout name, for the channel weights (see :func:`channel_weights`).
    dual_mono : bool
        Measure a mono signal as dual mono (weight 2.0, +3.01 LU): what a listener hears
        when the mono programme plays on both loudspeakers of a stereo system. Ignored for
        2 or more channels.
    loss_model : LimiterLossModel, optional
        Given the K-weighted energy and peak envelope this meter computes anyway
        (:mod:`puresound_core.limiter_loss`), so one pass measures and models.

    Raises
    ------
    InvalidAudioError
        On construction if the rate or channel count is not positive or ``layout`` has
        another channel count (rule ``channel_layout``); from :meth:`process` when a block
        holds NaN or inf (rule ``finite_samples``) or has the wrong channel count.

    References
    ----------
    ITU-R BS.1770-4 (10/2015); EBU Tech 3341 (2016); EBU Tech 3342 (2016).
    """

    def __init__(self, *, sample_rate_hz: int, channels: int, layout: str | None = None,
                 dual_mono: bool = False, loss_model=None):
        if sample_rate_hz <= 0 or channels <= 0:
            raise InvalidAudioError(f"loudness meter: invalid rate {sample_rate_hz} Hz / channels {channels}")
        self.sample_rate_hz = int(sample_rate_hz)
        self.channels = int(channels)
        self._weights = channel_weights(channels, layout, dual_mono=dual_mono)
        import scipy.signal  # imported when a meter or chain is built, not at import: a cached re-run builds none

        self._sosfilt = scipy.signal.sosfilt
        self._sos = k_weighting_sos(sample_rate_hz)
        self._zi = np.zeros((self._sos.shape[0], channels, 2))
        self._samples = 0
        self._segment_energy: list[np.ndarray] = []   # per 100 ms: weighted sum of squares
        self._segment_samples: list[int] = []
        self._partial_energy = 0.0
        self._next_segment = 0
        self._sample_peak = 0.0
        self._sum_squares = 0.0
        self._true_peak = TruePeakMeter(channels)
        self._loss_model = loss_model

    def _boundary(self, k: int) -> int:
        """First sample of 100 ms segment ``k`` (exact for every rate)."""
        return (k * self.sample_rate_hz) // 10

    def process(self, block: np.ndarray) -> None:
        """Add the next block.

        Parameters
        ----------
        block : np.ndarray [shape=(channels, n)], float32
        """
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise InvalidAudioError(f"loudness meter: expected {self.channels} channels, got {block.shape}")
        n = block.shape[1]
        if n == 0:
            return
        if not np.isfinite(block).all():
            raise InvalidAudioError("rule 'finite_samples' failed: NaN or inf samples in signal",
                                    rule="finite_samples")
        self._sample_peak = max(self._sample_peak, float(np.abs(block).max()))
        self._sum_squares += float(np.einsum("ij,ij->", block, block, dtype=np.float64))
        peak = self._true_peak.process(block, envelope=self._loss_model is not None)
        filtered, self._zi = self._sosfilt(self._sos, block, axis=1, zi=self._zi)
        # BS.1770-4 eq. 1 summed per channel, then weighted by G_i (eq. 2).
        weighted = self._weights @ np.square(filtered)
        if self._loss_model is not None:
            self._loss_model.add(weighted, peak)
        cumulative = np.cumsum(weighted)
        start = self._samples
        end = start + n
        previous = 0.0
        while self._boundary(self._next_segment + 1) <= end:
            stop = self._boundary(self._next_segment + 1) - start
            total = cumulative[stop - 1] if stop > 0 else 0.0
            self._segment_energy.append(self._partial_energy + total - previous)
            self._segment_samples.append(self._boundary(self._next_segment + 1) - self._boundary(self._next_segment))
            self._partial_energy = 0.0
            previous = total
            self._next_segment += 1
        self._partial_energy += cumulative[-1] - previous
        self._samples = end

    def _windowed(self, segments: int) -> np.ndarray:
        """Mean square of every window of ``segments`` consecutive 100 ms segments."""
        energy = np.asarray(self._segment_energy, dtype=np.float64)
        counts = np.asarray(self._segment_samples, dtype=np.float64)
        if energy.size < segments:
            return np.empty(0)
        csum = np.concatenate([[0.0], np.cumsum(energy)])
        ccount = np.concatenate([[0.0], np.cumsum(counts)])
        return (csum[segments:] - csum[:-segments]) / (ccount[segments:] - ccount[:-segments])

    def momentary_lufs(self) -> np.ndarray:
        """Momentary loudness every 100 ms (400 ms window, EBU Tech 3341).

        Returns
        -------
        np.ndarray [shape=(windows,)]
            Value ``j`` covers segments ``j .. j+3``, i.e. ends at ``(j + 4) * 100 ms``.
        """
        return _energy_to_lufs(self._windowed(MOMENTARY_SEGMENTS))

    def short_term_lufs(self) -> np.ndarray:
        """Short-term loudness every 100 ms (3 s window, EBU Tech 3341).

        Returns
        -------
        np.ndarray [shape=(windows,)]
            Value ``j`` ends at ``(j + 30) * 100 ms``.
        """
        return _energy_to_lufs(self._windowed(SHORT_TERM_SEGMENTS))

    def series(self, *, max_points: int = 1200) -> LoudnessSeries:
        """Momentary and short-term loudness of everything fed so far, for a plot.

        Parameters
        ----------
        max_points : int > 0
            Longest series returned; longer programmes keep the largest value of each hop.

        Returns
        -------
        LoudnessSeries
        """
        segments = len(self._segment_energy)
        step = max(1, -(-segments // max_points))

        def thinned(values: np.ndarray, window: int) -> list[float | None]:
            full = np.full(segments, -np.inf)
            if values.size:
                full[window - 1:window - 1 + values.size] = values  # index by the segment a window ends in
            usable = full[: segments // step * step].reshape(-1, step).max(axis=1) if segments >= step else full[:0]
            return [round(float(v), 2) if np.isfinite(v) else None for v in usable]

        return LoudnessSeries(hop_s=0.1 * step, momentary_lufs=thinned(self.momentary_lufs(), MOMENTARY_SEGMENTS),
                              short_term_lufs=thinned(self.short_term_lufs(), SHORT_TERM_SEGMENTS))

    def report(self) -> LoudnessReport:
        """Results for everything fed so far.

        Returns
        -------
        LoudnessReport
        """
        reasons: list[str] = []

        block_ms = self._windowed(MOMENTARY_SEGMENTS)
        integrated = None
        if block_ms.size == 0:
            reasons.append(f"programme is {self._samples / self.sample_rate_hz * 1000:.1f} ms, "
                           "shorter than one 400 ms gating block")
        else:
            # BS.1770-4 eq. 5-7: absolute gate, then relative gate 10 LU below the gated mean.
            above_abs = block_ms[_energy_to_lufs(block_ms) > ABSOLUTE_GATE_LUFS]
            if above_abs.size == 0:
                reasons.append("every gating block is below the -70 LUFS absolute gate")
            else:
                relative_gate = _energy_to_lufs(above_abs.mean()) + RELATIVE_GATE_LU
                gated = above_abs[_energy_to_lufs(above_abs) > relative_gate]
                integrated = float(_energy_to_lufs(gated.mean()))

        short_ms = self._windowed(SHORT_TERM_SEGMENTS)
        lra = low = high = None
        if short_ms.size:
            short_lufs = _energy_to_lufs(short_ms)
            above_abs = short_ms[short_lufs > ABSOLUTE_GATE_LUFS]
            if above_abs.size:
                # EBU Tech 3342 s. 3: relative gate 20 LU below the abs-gated short-term mean.
                gate = _energy_to_lufs(above_abs.mean()) + LRA_RELATIVE_GATE_LU
                values = _energy_to_lufs(above_abs)
                values = values[values > gate]
                low, high = (float(v) for v in np.percentile(values, [10, 95]))
                lra = high - low
        else:
            reasons.append("programme is shorter than one 3 s short-term window: no LRA")

        total = self._samples * self.channels
        rms = math.sqrt(self._sum_squares / total) if total else 0.0
        return LoudnessReport(
            integrated_lufs=integrated,
            momentary_max_lufs=float(_energy_to_lufs(block_ms.max())) if block_ms.size else None,
            short_term_max_lufs=float(_energy_to_lufs(short_ms.max())) if short_ms.size else None,
            lra_lu=lra, lra_low_lufs=low, lra_high_lufs=high,
            true_peak_dbtp=amplitude_to_db(self._true_peak.true_peak),
            sample_peak_dbfs=amplitude_to_db(self._sample_peak),
            rms_dbfs=amplitude_to_db(rms),
            duration_s=self._samples / self.sample_rate_hz,
            sample_rate_hz=self.sample_rate_hz,
            channels=self.channels,
            reason="; ".join(reasons) or None,
        )


def measure_loudness(
    audio: np.ndarray | Iterable[np.ndarray],
    *,
    sample_rate_hz: int,
    channels: int | None = None,
    layout: str | None = None,
    dual_mono: bool = False,
) -> LoudnessReport:
    """Measure loudness, LRA and peaks of a signal or a block stream in one pass.

    Parameters
    ----------
    audio : np.ndarray [shape=(channels, samples)] or iterable of such blocks
    sample_rate_hz : int > 0
    channels : int, optional
        Required when ``audio`` is an iterable of blocks.
    layout : str, optional
        FFmpeg channel layout name, for BS.1770-4 channel weights (see :func:`channel_weights`).
    dual_mono : bool
        Measure a mono signal as dual mono (+3.01 LU), like FFmpeg ``ebur128=dualmono=true``.

    Returns
    -------
    LoudnessReport

    Raises
    ------
    InvalidAudioError
        If the signal holds NaN / inf (rule ``finite_samples``), has the wrong layout, or
        ``layout`` names another channel count (rule ``channel_layout``).

    References
    ----------
    ITU-R BS.1770-4 (10/2015); EBU Tech 3341 (2016); EBU Tech 3342 (2016).
    """
    if isinstance(audio, np.ndarray):
        audio = check_audio(audio)
        channels = audio.shape[0]
        blocks: Iterable[np.ndarray] = [audio]
    else:
        if channels is None:
            raise InvalidAudioError("measure_loudness: channels is required for a block stream")
        blocks = audio
    meter = LoudnessMeter(sample_rate_hz=sample_rate_hz, channels=channels, layout=layout, dual_mono=dual_mono)
    for block in blocks:
        meter.process(block)
    return meter.report()


def integrated_loudness(audio: np.ndarray, *, sample_rate_hz: int) -> float:
    """Integrated loudness of a programme, gated per ITU-R BS.1770-4.

    Parameters
    ----------
    audio : np.ndarray [shape=(channels, samples)], float32
    sample_rate_hz : int > 0

    Returns
    -------
    float
        Integrated loudness in LUFS; ``-inf`` when every gating block is below -70 LUFS.

    Raises
    ------
    InvalidAudioError
        If ``audio`` is shorter than one 400 ms gating block or holds non-finite samples.

    References
    ----------
    ITU-R BS.1770-4 (10/2015), eq. 1-7.
    """
    report = measure_loudness(audio, sample_rate_hz=sample_rate_hz)
    if report.integrated_lufs is None:
        if report.momentary_max_lufs is None:
            raise InvalidAudioError(f"integrated_loudness: {report.reason}", rule="duration_min")
        return -math.inf
    return report.integrated_lufs

