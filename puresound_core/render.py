"""Plan, render, encode and verify renditions: one decode per source, retries that converge.

:func:`plan_renditions` then :func:`render_renditions` is the whole path from a source file
to checked renditions:

1. plan, in at most one decode shared by every rendition: the loudness of the signal each
   chain will deliver (after trim, down-mix and high-pass: all linear, so a gain of x dB
   moves it by exactly x LU), *as played*: a mono rendition is measured as dual-mono
   (BS.1770 with the channel counted twice, as FFmpeg's ebur128 ``dualmono`` and
   libebur128's ``EBUR128_DUAL_MONO``), so the mono and stereo renditions of one source play
   equally loud. The gain aims at the target; the limiter is enabled only when that gain
   would push the true peak over the ceiling, and then the gain is raised by what limiting
   will take off, predicted from the peak envelope recorded in the same pass
   (:mod:`puresound_core.limiter_loss`). What can be known here is checked here (rules
   ``loudness_measurable``, ``gain_max``, ``max_gain_reduction``), before any rendering;
2. render every rendition in one streaming pass: one decode feeds one processing chain and
   one encoder per rendition (bounded memory);
3. verify (:func:`verify_rendition`): decode each file and re-measure it;
4. when a lossy encode misses, render that rendition again, alone, with corrections that
   *accumulate*: the pre-encode loudness aim moves by the measured miss (``aim = aim +
   (target - measured)``), a true-peak overshoot lowers the limiter ceiling by the overshoot
   plus a margin. Every attempt must be closer than the best one before it, else the loop
   stops and says why; the best attempt is kept;
5. gain tags (ReplayGain 2.0 / Opus R128) are written from the verified measurement.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import queue
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict

from .analysis import AnalysisReport, ContentAnalyzer
from .audio import Encoder, EncodeResult, EncoderSettings, encode_blocks, iter_blocks, probe
from .cancel import stoppable
from .gain_tags import R128_REFERENCE_LUFS, REPLAYGAIN_REFERENCE_LUFS, gain_tags, write_tags
from .limiter_loss import LimiterLossModel
from .loudness import LoudnessMeter, LoudnessReport, LoudnessSeries
from .processing import ProcessingChain, ProcessingPlan, ProcessingStats
from .specs import LoudnessTarget
from .validation import RuleResult

__all__ = [
    "DUAL_MONO_OFFSET_LU",
    "R128_REFERENCE_LUFS",
    "REPLAYGAIN_REFERENCE_LUFS",
    "LoudnessTarget",
    "PlanProblem",
    "RenditionPlan",
    "RenditionResult",
    "VerificationCheck",
    "VerificationReport",
    "bit_exact_check",
    "decoded_sha256",
    "encoder_gain_db",
    "plan_rendition",
    "plan_renditions",
    "render_rendition",
    "render_renditions",
    "verify_rendition",
]

#: Duration check of :func:`verify_rendition`: within 50 ms of the source after priming.
DURATION_TOLERANCE_S = 0.050
#: Extra headroom (dB) taken on a retry after a lossy true-peak overshoot: the overshoot
#: grows as the limiter works harder, so lowering by the overshoot alone is not enough.
RETRY_MARGIN_DB = 0.5
#: A mono channel counted twice reads 10 log10(2) = 3.01 LU louder (BS.1770-4 eq. 2, G = 2).
DUAL_MONO_OFFSET_LU = 10.0 * math.log10(2.0)
#: Renders of one rendition at most.
MAX_ATTEMPTS = 3
#: Lossy renditions limit this far under the ceiling: decoders reconstruct peaks the
#: encoder's quantisation adds (measured here: 0.1-1.5 dB for Opus 48 kbps, 0.25 dB for MP3
#: 128 kbps on corpus material), so limiting to the ceiling itself makes retries.
LOSSY_CEILING_MARGIN_DB = 0.5
#: Source and output rates from which loudness is measured at the source rate.
RATE_SAFE_HZ = 44100
#: :func:`encoder_gain_db`'s two reference signals must agree this closely (dB).
ENCODER_GAIN_AGREEMENT_DB = 0.1


@functools.lru_cache(maxsize=64)
def encoder_gain_db(settings: EncoderSettings) -> float:
    """Level change (dB) an encoder + decoder applies, measured once per settings on pink noise.

    Some encoders change the level of everything they encode: libmp3lame at 160 kbps and
    under plays back ~0.45 dB quieter, at 192 kbps ~0.26 dB (measured here on music and
    speech alike: a broadband gain, not a low-pass). Two six-second references at -20 dBFS
    RMS, both under every codec's low-pass (seeded pink noise band-limited to 100 Hz -
    4 kHz, and a complex of seven tones from 220 Hz to 3.3 kHz), are encoded with
    ``settings``, decoded and measured (BS.1770-4 integrated loudness). When both change by
    the same amount (within :data:`ENCODER_GAIN_AGREEMENT_DB`) that is the encoder's gain,
    which the plan pre-compensates; otherwise the codec treats content differently (Opus at
    low bitrates loses ~1 dB on noise, nothing on tones) and 0 is returned. Content-dependent
    losses remain for the retry to correct.

    Parameters
    ----------
    settings : EncoderSettings

    Returns
    -------
    float
        Decoded minus encoded loudness, in dB; 0 for lossless codecs.

    Raises
    ------
    EncodingError
        If the encoder fails.
    """
    if settings.lossless:
        return 0.0
    rate, channels = settings.sample_rate_hz, settings.channels
    n = 6 * rate
    rng = np.random.default_rng(0)
    spectrum = np.fft.rfft(rng.standard_normal((channels, n)), axis=1)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[:, 1:] /= np.sqrt(freqs[1:])
    spectrum[:, (freqs < 100.0) | (freqs > 4000.0)] = 0  # under every codec's low-pass
    noise = np.fft.irfft(spectrum, n=n, axis=1)
    t = np.arange(n) / rate
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (channels, 1)))
                for f in (220.0, 440.0, 660.0, 990.0, 1480.0, 2220.0, 3330.0))
    gains = [_encoded_minus_source_lu(signal * 0.1 / np.sqrt(np.mean(signal ** 2)), settings)
             for signal in (noise, tones)]
    # A broadband gain shows on both references alike; a disagreement is the codec treating
    # noise and tones differently (Opus at low bitrates), which is content, not gain.
    return round(float(np.mean(gains)), 3) if abs(gains[0] - gains[1]) <= ENCODER_GAIN_AGREEMENT_DB else 0.0


def _encoded_minus_source_lu(signal: np.ndarray, settings: EncoderSettings) -> float:
    import tempfile

    signal = signal.astype(np.float32)
    before = LoudnessMeter(sample_rate_hz=settings.sample_rate_hz, channels=settings.channels)
    before.process(signal)
    with tempfile.TemporaryDirectory(prefix="puresound-encoder-gain-") as folder:
        path = Path(folder) / f"reference.{settings.extension}"
        encode_blocks([signal], path, settings=settings)
        info = probe(path)
        after = LoudnessMeter(sample_rate_hz=info.sample_rate_hz, channels=info.channels)
        for block in iter_blocks(path):
            after.process(block)
    return after.report().integrated_lufs - before.report().integrated_lufs


#: A verification check is a rule result (``rule``: ``integrated_loudness``, ``true_peak``,
#: ``rms``, ``sample_peak``, ``noise_floor``, ``gain_reduction``, ``duration``, ``channels``,
#: ``sample_rate``, ``bit_exact``; ``limit``: what was expected): validation rules and
#: verification checks share one model.
VerificationCheck = RuleResult


class VerificationReport(BaseModel):
    """A rendition re-measured after encoding.

    Attributes
    ----------
    path : str
    passed : bool
    checks : list of VerificationCheck
    loudness : LoudnessReport
        Measured on the decoded file, as played (a mono file as dual-mono when the target
        says so: ``integrated_lufs`` is then 3.01 LU above the single-channel reading).
    dual_mono : bool
        True when ``loudness`` counts a mono channel twice.
    single_channel_lufs : float or None
        The plain BS.1770 reading of a mono file measured as dual-mono (``loudness`` minus
        3.01 LU; blocks within 3 dB of the -70 LUFS absolute gate aside, this is exact);
        equal to ``loudness.integrated_lufs`` otherwise.
    series : LoudnessSeries or None
        Momentary / short-term loudness over time, as played (for the HTML report).
    """

    model_config = ConfigDict(frozen=True)

    path: str
    passed: bool
    checks: list[VerificationCheck]
    loudness: LoudnessReport
    dual_mono: bool = False
    single_channel_lufs: float | None = None
    series: LoudnessSeries | None = None

    @property
    def failures(self) -> list[VerificationCheck]:
        """list of VerificationCheck: the failed checks."""
        return [c for c in self.checks if not c.passed]


class PlanProblem(BaseModel):
    """Why a rendition cannot meet its target, known before rendering.

    Attributes
    ----------
    rule : {"loudness_measurable", "gain_max", "max_gain_reduction"}
    measured, limit : float or None
    message : str
        Names the file, the rule and the values.
    """

    model_config = ConfigDict(frozen=True)

    rule: str
    measured: float | None = None
    limit: float | None = None
    message: str


class RenditionPlan(BaseModel):
    """How a rendition will be made, decided before rendering.

    Attributes
    ----------
    plan : ProcessingPlan
        The first attempt's processing (gain, limiter, down-mix, resampling...).
    delivered_lufs : float or None
        Loudness, as played, of the delivered signal before gain (``None``: not measurable).
    delivered_true_peak_dbtp, delivered_rms_dbfs : float
        Of the delivered signal before gain.
    expected_duration_s : float
        After trim.
    encoder_gain_db : float
        Level change of the encoder + decoder for these settings (:func:`encoder_gain_db`).
    aim_lufs : float or None
        Loudness the processed signal aims at before encoding: the target minus
        ``encoder_gain_db``, so that the *encoded* file lands on the target.
    predicted_limiter_loss_lu : float
        What the limiter is predicted to take off at the planned gain (0 without limiting);
        the gain includes it.
    problems : list of PlanProblem
        Non-empty when the rendition cannot meet its target: do not render.
    """

    model_config = ConfigDict(frozen=True)

    plan: ProcessingPlan
    delivered_lufs: float | None
    delivered_true_peak_dbtp: float
    delivered_rms_dbfs: float
    expected_duration_s: float
    encoder_gain_db: float = 0.0
    aim_lufs: float | None = None
    predicted_limiter_loss_lu: float = 0.0
    problems: list[PlanProblem] = []


class RenditionResult(BaseModel):
    """A rendered, encoded and verified rendition.

    Attributes
    ----------
    path : str
    settings : EncoderSettings
    plan : ProcessingPlan
        The plan of the attempt that was kept.
    processing : ProcessingStats
    encode : EncodeResult
    verification : VerificationReport
    attempts : int
        Renders made, 1 to :data:`MAX_ATTEMPTS`.
    kept_attempt : int
        Which attempt's file was kept (the closest to the targets).
    retry_reason : str or None
        What each retry changed and why, and why the loop stopped.
    gain_tags : dict of str to str
        ReplayGain / R128 tags written from the verified measurement.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    settings: EncoderSettings
    plan: ProcessingPlan
    processing: ProcessingStats
    encode: EncodeResult
    verification: VerificationReport
    attempts: int
    kept_attempt: int = 1
    retry_reason: str | None = None
    gain_tags: dict[str, str] = {}


def _fmt(value: float | None, unit: str) -> str:
    return "none" if value is None else f"{value:.2f} {unit}"


def _played_as_dual_mono(channels: int, target: LoudnessTarget) -> bool:
    return channels == 1 and target.dual_mono


def verify_rendition(
    path: str | os.PathLike,
    *,
    settings: EncoderSettings,
    target: LoudnessTarget,
    expected_duration_s: float,
    duration_tolerance_s: float = DURATION_TOLERANCE_S,
    processing: ProcessingStats | None = None,
    name: str | None = None,
) -> VerificationReport:
    """Decode an encoded rendition and check it against its targets.

    Parameters
    ----------
    path : str or path-like
    settings : EncoderSettings
        The channels and sample rate that were asked for.
    target : LoudnessTarget
        Loudness is checked as played: a mono file as dual-mono when ``target.dual_mono``.
    expected_duration_s : float
        Duration of the processed programme (after any trim).
    duration_tolerance_s : float
        50 ms by default: decoders remove codec priming (LAME/Xing delay, MP4 edit lists,
        Opus pre-skip); what is left is end padding.
    processing : ProcessingStats, optional
        What the chain did; with ``target.max_gain_reduction_db`` it adds the
        ``gain_reduction`` check.
    name : str, optional
        The file name the messages use (default: ``path``'s); a file encoded under a
        temporary name is named as it will be published.

    Returns
    -------
    VerificationReport

    Raises
    ------
    InvalidAudioError
        If the rendition cannot be decoded.

    References
    ----------
    ITU-R BS.1770-4 (loudness, Annex 2 true peak); EBU R 128 s. 4; FFmpeg ebur128 ``dualmono``.
    """
    p = Path(path)
    info = probe(p)
    label = name or p.name
    dual = _played_as_dual_mono(info.channels, target)
    meter = LoudnessMeter(sample_rate_hz=info.sample_rate_hz, channels=info.channels, layout=info.channel_layout,
                          dual_mono=dual)
    content = (ContentAnalyzer(sample_rate_hz=info.sample_rate_hz, channels=info.channels)
               if target.noise_floor_max_dbfs is not None else None)
    for block in stoppable(iter_blocks(p)):
        meter.process(block)
        if content is not None:
            content.process(block)
    loudness = meter.report()
    single = loudness.integrated_lufs
    if dual and single is not None:
        single -= DUAL_MONO_OFFSET_LU
    noise_floor_dbfs = content.report().noise_floor_dbfs if content is not None else None
    checks: list[VerificationCheck] = []
    if target.target_lufs is not None:
        measured = loudness.integrated_lufs
        ok = measured is not None and abs(measured - target.target_lufs) <= target.tolerance_lu
        played = " as played (dual-mono)" if dual else ""
        checks.append(RuleResult(
            rule="integrated_loudness", passed=ok, measured=measured, limit=target.target_lufs,
            message=f"{label}: integrated loudness {_fmt(measured, 'LUFS')}{played}, target "
                    f"{target.target_lufs:.1f} +-{target.tolerance_lu:g} LU"))
    if target.ceiling_dbtp is not None:
        tp = loudness.true_peak_dbtp
        ok = tp <= target.ceiling_dbtp
        checks.append(RuleResult(
            rule="true_peak", passed=ok, measured=tp if math.isfinite(tp) else None, limit=target.ceiling_dbtp,
            message=f"{label}: true peak {tp:.2f} dBTP {'<=' if ok else '>'} ceiling {target.ceiling_dbtp:.1f} dBTP"))
    if target.rms_range_dbfs is not None:
        low, high = target.rms_range_dbfs
        ok = low <= loudness.rms_dbfs <= high
        checks.append(RuleResult(
            rule="rms", passed=ok, measured=loudness.rms_dbfs if math.isfinite(loudness.rms_dbfs) else None,
            limit=f"{low:g} to {high:g}",
            message=f"{label}: RMS {loudness.rms_dbfs:.2f} dBFS {'within' if ok else 'outside'} {low:g} to {high:g} dBFS"))
    if target.sample_peak_max_dbfs is not None:
        ok = loudness.sample_peak_dbfs <= target.sample_peak_max_dbfs
        checks.append(RuleResult(
            rule="sample_peak", passed=ok,
            measured=loudness.sample_peak_dbfs if math.isfinite(loudness.sample_peak_dbfs) else None,
            limit=target.sample_peak_max_dbfs,
            message=f"{label}: sample peak {loudness.sample_peak_dbfs:.2f} dBFS "
                    f"{'<=' if ok else '>'} {target.sample_peak_max_dbfs:g} dBFS"))
    if target.noise_floor_max_dbfs is not None:
        floor = noise_floor_dbfs
        ok = floor is None or floor <= target.noise_floor_max_dbfs
        checks.append(RuleResult(
            rule="noise_floor", passed=ok, measured=floor, limit=target.noise_floor_max_dbfs,
            message=f"{label}: noise floor {_fmt(floor, 'dBFS')} {'<=' if ok else '>'} "
                    f"{target.noise_floor_max_dbfs:g} dBFS"))
    if processing is not None and target.max_gain_reduction_db is not None:
        reduction = processing.max_gain_reduction_db
        ok = reduction <= target.max_gain_reduction_db
        checks.append(RuleResult(
            rule="gain_reduction", passed=ok, measured=reduction, limit=target.max_gain_reduction_db,
            message=f"{label}: limiter gain reduction {reduction:.2f} dB {'<=' if ok else '>'} "
                    f"{target.max_gain_reduction_db:g} dB"))
    gap = abs(loudness.duration_s - expected_duration_s)
    checks.append(RuleResult(
        rule="duration", passed=gap <= duration_tolerance_s, measured=loudness.duration_s,
        limit=expected_duration_s,
        message=f"{label}: duration {loudness.duration_s:.3f} s vs {expected_duration_s:.3f} s "
                f"(difference {gap * 1000:.1f} ms, limit {duration_tolerance_s * 1000:.0f} ms)"))
    checks.append(RuleResult(
        rule="channels", passed=info.channels == settings.channels, measured=info.channels,
        limit=settings.channels, message=f"{label}: {info.channels} channels, asked {settings.channels}"))
    checks.append(RuleResult(
        rule="sample_rate", passed=info.sample_rate_hz == settings.sample_rate_hz, measured=info.sample_rate_hz,
        limit=settings.sample_rate_hz,
        message=f"{label}: {info.sample_rate_hz} Hz, asked {settings.sample_rate_hz} Hz"))
    return VerificationReport(path=str(p), passed=all(c.passed for c in checks), checks=checks, loudness=loudness,
                              dual_mono=dual, single_channel_lufs=single, series=meter.series())


class _Measurement:
    """One delivered signal measured in :func:`plan_renditions`' shared pass.

    ``chain`` is ``None`` when the delivered signal is the source itself; ``meter`` is
    ``None`` when its loudness is known from the analysis; ``model`` records what a limiter
    would take off (:class:`~puresound_core.limiter_loss.LimiterLossModel`).
    """

    def __init__(self, *, src_rate: int, chain_plan: ProcessingPlan | None, rate: int, channels: int,
                 layout: str | None, dual: bool, meter: bool, model: bool):
        self.chain = ProcessingChain(sample_rate_hz=src_rate, plan=chain_plan) if chain_plan is not None else None
        self.model = (LimiterLossModel(sample_rate_hz=rate, channels=channels, layout=layout, dual_mono=dual)
                      if model else None)
        # The meter hands the model the K-weighted energy and peak envelope it computes anyway.
        self.meter = (LoudnessMeter(sample_rate_hz=rate, channels=channels, layout=layout, dual_mono=dual,
                                    loss_model=self.model) if meter else None)

    def _feed(self, x: np.ndarray) -> None:
        if self.meter is not None:
            self.meter.process(x)
        elif self.model is not None:
            self.model.process(x)

    def process(self, block: np.ndarray) -> None:
        self._feed(self.chain.process(block) if self.chain is not None else block)

    def finish(self) -> None:
        if self.chain is not None:
            self._feed(self.chain.flush())


def plan_renditions(
    source: str | os.PathLike,
    settings: Sequence[EncoderSettings],
    *,
    target: LoudnessTarget,
    analysis: AnalysisReport,
    highpass_hz: float | None = None,
    trim_silence: bool = False,
    trim_keep_s: float = 0.1,
    downmix: str = "bs775",
) -> list[RenditionPlan]:
    """Decide every rendition's first attempt, and what makes a target unreachable, in one decode.

    For each rendition the loudness, as played, of the delivered signal (after trim,
    down-mix and high-pass: all linear, so a gain of x dB moves it by exactly x LU) gives the
    gain to the target, less the encoder's own level change (:func:`encoder_gain_db`). The
    limiter is enabled only when that gain would push the true peak over the ceiling; then
    the gain is raised by what limiting takes off, predicted from the signal's peak envelope
    (:class:`~puresound_core.limiter_loss.LimiterLossModel`), so the limited rendition lands
    on the target without extra rendering passes.

    The source is decoded at most once, and only when some rendition needs it: its chain is
    not the identity (trim, high-pass, a channel change, or a source or output rate below
    44.1 kHz), or it needs the limiter. Renditions that deliver the same signal share one
    measurement.

    Parameters
    ----------
    source : str or path-like
    settings : sequence of EncoderSettings
        One per rendition.
    target : LoudnessTarget
    analysis : AnalysisReport
        Of the source (rate, channels, layout, silence; its loudness when the chain is the identity).
    highpass_hz : float, optional
    trim_silence : bool
    trim_keep_s : float
    downmix : {"bs775", "legacy"}
        See :mod:`puresound_core.processing`.

    Returns
    -------
    list of RenditionPlan
        In the order of ``settings``. ``problems`` lists rules ``loudness_measurable`` (no
        gating block above -70 LUFS), ``gain_max`` (the gain to target exceeds
        ``target.max_gain_db``) and ``max_gain_reduction`` (predicted limiting ``true peak +
        gain - ceiling`` exceeds ``target.max_gain_reduction_db``).

    Raises
    ------
    InvalidAudioError
        If the source cannot be decoded.

    References
    ----------
    ITU-R BS.1770-4; EBU R 128.
    """
    name = Path(source).name
    loud = analysis.loudness
    src_rate = loud.sample_rate_hz
    layout = analysis.probe.channel_layout if analysis.probe is not None else None
    trim_start = trim_end = 0
    if trim_silence:
        content = analysis.content
        trim_start = max(0, int((content.leading_silence_s - trim_keep_s) * src_rate))
        trim_end = max(0, int((content.trailing_silence_s - trim_keep_s) * src_rate))
        total = round(loud.duration_s * src_rate)
        if trim_start + trim_end >= total:
            trim_start = trim_end = 0
    limiting = target.target_lufs is not None and target.ceiling_dbtp is not None
    measurements: dict[tuple, _Measurement] = {}
    keys: list[tuple] = []
    bases: list[ProcessingPlan] = []
    for s in settings:
        base = ProcessingPlan(output_sample_rate_hz=s.sample_rate_hz, output_channels=s.channels,
                              highpass_hz=highpass_hz, trim_start_samples=trim_start, trim_end_samples=trim_end,
                              source_layout=layout, downmix=downmix)
        bases.append(base)
        dual = _played_as_dual_mono(s.channels, target)
        # Loudness before gain. Between rates of 44.1 kHz and up, resampling changes it only by
        # what lies above the new Nyquist frequency, negligible after K-weighting, so it is
        # measured at the source rate (and, for the identity chain, taken from the analysis).
        # Below 44.1 kHz the K-weighting filters' bilinear transform departs from the 48 kHz
        # response (an 8 kHz source reads ~0.2 LU off), so the delivered signal is measured at
        # the output rate. A true-peak rise from resampling is caught by verification.
        rate_safe = src_rate == s.sample_rate_hz or min(src_rate, s.sample_rate_hz) >= RATE_SAFE_HZ
        if rate_safe and highpass_hz is None and not trim_start and not trim_end and s.channels == loud.channels:
            delivered = loud.integrated_lufs
            if dual and delivered is not None:
                delivered += DUAL_MONO_OFFSET_LU
            gain = (target.target_lufs - delivered - encoder_gain_db(s)
                    if limiting and delivered is not None else None)
            ceiling = _ceiling(target, s)
            if gain is not None and math.isfinite(loud.true_peak_dbtp) and loud.true_peak_dbtp + gain > ceiling:
                key = ("source", dual)
                if key not in measurements:
                    measurements[key] = _Measurement(src_rate=src_rate, chain_plan=None, rate=src_rate,
                                                     channels=loud.channels, layout=layout, dual=dual,
                                                     meter=False, model=True)
                keys.append(key)
            else:
                keys.append(("analysis", dual))
        else:
            measure_rate = src_rate if rate_safe else s.sample_rate_hz
            key = ("chain", measure_rate, s.channels, dual)
            if key not in measurements:
                chain = base.model_copy(update={"output_sample_rate_hz": measure_rate})
                measurements[key] = _Measurement(src_rate=src_rate, chain_plan=chain, rate=measure_rate,
                                                 channels=s.channels, layout=None, dual=dual, meter=True,
                                                 model=limiting)
            keys.append(key)
    if measurements:
        for block in stoppable(iter_blocks(source)):
            for measurement in measurements.values():
                measurement.process(block)
        for measurement in measurements.values():
            measurement.finish()
    plans = []
    for s, base, key in zip(settings, bases, keys, strict=True):
        measurement = measurements.get(key)
        if measurement is not None and measurement.meter is not None:
            pre = measurement.meter.report()
            delivered, tp, rms = pre.integrated_lufs, pre.true_peak_dbtp, pre.rms_dbfs
        else:
            delivered, tp, rms = loud.integrated_lufs, loud.true_peak_dbtp, loud.rms_dbfs
            if key[1] and delivered is not None:  # dual-mono: the same mono signal, its channel counted twice
                delivered += DUAL_MONO_OFFSET_LU
        plans.append(_plan_one(name, s, base, target, delivered, tp, rms, loud.duration_s, src_rate,
                               trim_start + trim_end, measurement.model if measurement is not None else None))
    return plans


def _ceiling(target: LoudnessTarget, settings: EncoderSettings) -> float | None:
    """The limiter's ceiling for a rendition: lossy ones limit :data:`LOSSY_CEILING_MARGIN_DB` under the target's."""
    ceiling = target.ceiling_dbtp
    if ceiling is not None and not settings.lossless:
        ceiling -= LOSSY_CEILING_MARGIN_DB
    return ceiling


def _plan_one(name: str, settings: EncoderSettings, base: ProcessingPlan, target: LoudnessTarget,
              delivered_lufs: float | None, tp: float, rms: float, duration_s: float, src_rate: int,
              trimmed: int, model: LimiterLossModel | None) -> RenditionPlan:
    codec_gain_db = encoder_gain_db(settings)
    problems: list[PlanProblem] = []
    gain_db = 0.0
    if target.target_lufs is not None:
        if delivered_lufs is None:
            problems.append(PlanProblem(
                rule="loudness_measurable", message=f"{name}: rule 'loudness_measurable' failed: no 400 ms gating "
                f"block of the delivered signal is above the -70 LUFS absolute gate, so it cannot be normalised "
                f"to {target.target_lufs:g} LUFS"))
        else:
            gain_db = target.target_lufs - delivered_lufs - codec_gain_db
    elif target.target_rms_dbfs is not None and math.isfinite(rms):
        gain_db = target.target_rms_dbfs - rms - codec_gain_db
    if gain_db > target.max_gain_db:
        problems.append(PlanProblem(
            rule="gain_max", measured=round(gain_db, 2), limit=target.max_gain_db,
            message=f"{name}: rule 'gain_max' failed: reaching the target needs {gain_db:+.1f} dB of gain > "
                    f"{target.max_gain_db:g} dB (the source is too quiet: its noise floor would be raised as much)"))
    ceiling = _ceiling(target, settings)
    needs_limiter = ceiling is not None and math.isfinite(tp) and tp + gain_db > ceiling
    if needs_limiter and target.max_gain_reduction_db is not None:
        predicted = tp + gain_db - ceiling
        if predicted > target.max_gain_reduction_db:
            problems.append(PlanProblem(
                rule="max_gain_reduction", measured=round(predicted, 2), limit=target.max_gain_reduction_db,
                message=f"{name}: rule 'max_gain_reduction' failed: at {gain_db:+.1f} dB of gain the true peak "
                        f"would be {tp + gain_db:+.1f} dBTP, {predicted:.1f} dB of limiting to the {ceiling:g} dBTP "
                        f"ceiling > {target.max_gain_reduction_db:g} dB accepted"))
    aim = None if target.target_lufs is None else target.target_lufs - codec_gain_db
    loss = 0.0
    if needs_limiter and not problems and model is not None and aim is not None and delivered_lufs is not None:
        gain_db, loss = model.solve_gain_db(delivered_lufs=delivered_lufs, aim_lufs=aim, ceiling_dbtp=ceiling,
                                            max_gain_db=target.max_gain_db)
    plan = base.model_copy(update={"gain_db": gain_db, "ceiling_dbtp": ceiling if needs_limiter else None})
    expected_duration_s = (duration_s * src_rate - trimmed) / src_rate
    return RenditionPlan(plan=plan, delivered_lufs=delivered_lufs, delivered_true_peak_dbtp=tp,
                         delivered_rms_dbfs=rms, expected_duration_s=expected_duration_s,
                         encoder_gain_db=codec_gain_db, aim_lufs=aim, predicted_limiter_loss_lu=round(loss, 4),
                         problems=problems)


def plan_rendition(
    source: str | os.PathLike,
    *,
    settings: EncoderSettings,
    target: LoudnessTarget,
    analysis: AnalysisReport,
    highpass_hz: float | None = None,
    trim_silence: bool = False,
    trim_keep_s: float = 0.1,
    downmix: str = "bs775",
) -> RenditionPlan:
    """Plan one rendition: :func:`plan_renditions` with one ``settings``.

    Parameters
    ----------
    source : str or path-like
    settings : EncoderSettings
    target : LoudnessTarget
    analysis : AnalysisReport
    highpass_hz : float, optional
    trim_silence : bool
    trim_keep_s : float
    downmix : {"bs775", "legacy"}

    Returns
    -------
    RenditionPlan

    Raises
    ------
    InvalidAudioError
        If the source cannot be decoded.
    """
    return plan_renditions(source, [settings], target=target, analysis=analysis, highpass_hz=highpass_hz,
                           trim_silence=trim_silence, trim_keep_s=trim_keep_s, downmix=downmix)[0]


def _distance(verification: VerificationReport, target: LoudnessTarget) -> float:
    """How far an attempt is from passing (dB / LU past each limit, summed); 0 when the level checks pass."""
    out = 0.0
    for check in verification.failures:
        value = check.measured if isinstance(check.measured, (int, float)) else None
        if check.rule == "integrated_loudness" and value is not None:
            out += abs(value - target.target_lufs) - target.tolerance_lu
        elif check.rule == "true_peak" and value is not None:
            out += value - target.ceiling_dbtp
        elif check.rule == "rms" and value is not None and target.rms_range_dbfs is not None:
            low, high = target.rms_range_dbfs
            out += max(low - value, value - high)
        elif check.rule == "sample_peak" and value is not None:
            out += value - target.sample_peak_max_dbfs
        elif check.rule in ("integrated_loudness", "true_peak", "rms", "sample_peak"):
            out += math.inf
    return out


def _retry_update(plan: ProcessingPlan, aim: float | None, verification: VerificationReport, *,
                  settings: EncoderSettings, target: LoudnessTarget) -> tuple[dict, float | None, list[str]]:
    """Corrections for the next attempt: a new plan update, a new loudness aim, and the reasons.

    A true-peak overshoot lowers the limiter ceiling by the overshoot plus
    :data:`RETRY_MARGIN_DB`; a loudness miss moves the aim by the miss (``aim + target -
    measured``) and the gain with it; an RMS or sample-peak miss likewise. Corrections are
    relative to the attempt that missed, so they accumulate across attempts.
    """
    failed = {c.rule: c for c in verification.failures}
    reasons: list[str] = []
    update: dict = {}
    peak = failed.get("true_peak")
    if peak is not None and peak.measured is not None:
        excess = float(peak.measured) - target.ceiling_dbtp
        current = plan.ceiling_dbtp if plan.ceiling_dbtp is not None else target.ceiling_dbtp
        update["ceiling_dbtp"] = current - excess - RETRY_MARGIN_DB
        reasons.append(f"{settings.codec} encode overshot the {target.ceiling_dbtp:.1f} dBTP ceiling by "
                       f"{excess:.2f} dB (true peak {float(peak.measured):.2f} dBTP): limiter ceiling lowered "
                       f"to {update['ceiling_dbtp']:.2f} dBTP")
    sample_peak = failed.get("sample_peak")
    if sample_peak is not None and sample_peak.measured is not None and "ceiling_dbtp" not in update:
        excess = float(sample_peak.measured) - target.sample_peak_max_dbfs
        current = plan.ceiling_dbtp if plan.ceiling_dbtp is not None else (target.ceiling_dbtp or 0.0)
        update["ceiling_dbtp"] = current - excess - RETRY_MARGIN_DB
        reasons.append(f"{settings.codec} encode's sample peak {float(sample_peak.measured):.2f} dBFS over "
                       f"{target.sample_peak_max_dbfs:g} dBFS: limiter ceiling lowered to {update['ceiling_dbtp']:.2f} dBTP")
    loudness = failed.get("integrated_loudness")
    if loudness is not None and loudness.measured is not None and aim is not None:
        miss = target.target_lufs - float(loudness.measured)
        aim += miss
        update["gain_db"] = plan.gain_db + miss
        reasons.append(f"{settings.codec} encode measured {float(loudness.measured):.2f} LUFS against "
                       f"{target.target_lufs:.1f} LUFS: aim moved by {miss:+.2f} LU to {aim:.2f} LUFS before encoding")
    rms = failed.get("rms")
    if rms is not None and rms.measured is not None and target.target_rms_dbfs is not None:
        miss = target.target_rms_dbfs - float(rms.measured)
        update["gain_db"] = update.get("gain_db", plan.gain_db) + miss
        reasons.append(f"{settings.codec} encode measured RMS {float(rms.measured):.2f} dBFS against "
                       f"{target.target_rms_dbfs:.1f} dBFS: gain corrected by {miss:+.2f} dB")
    if update and "ceiling_dbtp" not in update and plan.ceiling_dbtp is None and target.ceiling_dbtp is not None:
        update["ceiling_dbtp"] = target.ceiling_dbtp  # a raised gain may now need the limiter
    return update, aim, reasons


def _attempt_path(out: Path, token: str, attempt: int) -> Path:
    """A hidden file beside ``out`` for one attempt, unique to this render (``token``)."""
    return out.parent / f".{out.name}.{token}.attempt{attempt}"


_LEFTOVER = re.compile(r"^\..+(\.part|\.attempt\d+)$")


def remove_abandoned_attempts(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden attempt and ``.part`` files a render that died left in its folder.

    A render cleans up after itself even when it fails or is stopped; only a process killed
    outright (SIGKILL, a lost machine) leaves them. Call this only while holding the lock that
    keeps every other render of the same content out of ``folder`` (the pipeline's content
    lock), so no live render's file is taken.

    Parameters
    ----------
    folder : str or os.PathLike
        A render's output folder (its renditions' parent).

    Returns
    -------
    list of Path
        The files removed (none when the folder does not exist).
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False) and _LEFTOVER.match(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


class _Attempt(NamedTuple):
    distance: float
    number: int
    path: Path
    plan: ProcessingPlan
    processing: ProcessingStats
    encode: EncodeResult
    verification: VerificationReport


def _render_pass(source, src_rate: int, jobs: list[tuple[ProcessingPlan, EncoderSettings, Path, bool]],
                 tags: Mapping[str, str]) -> list[tuple[ProcessingStats, EncodeResult, LimiterLossModel | None]]:
    """One decode of ``source`` feeding one processing chain + encoder per job (plan, settings, path, dual-mono).

    With several jobs each chain and encoder runs in its own thread, fed through a bounded
    queue (:data:`_QUEUE_BLOCKS` blocks: memory stays bounded): FFmpeg's encoders and most of
    the chain's numpy work release the GIL, so the renditions of one source use more than one
    core. A limited chain also feeds a :class:`LimiterLossModel` of what its limiter saw, so
    a retry can predict the limiter's loss at a new gain or ceiling without another pass.
    """
    lanes: list[_Lane] = []
    try:
        for plan, settings, path, dual in jobs:
            lanes.append(_Lane(src_rate, plan, settings, path, dual, tags))
        if len(lanes) == 1:
            lane = lanes[0]
            for block in stoppable(iter_blocks(source)):
                lane.feed(block)
            return [lane.finish()]
        for lane in lanes:
            lane.start()
        for block in stoppable(iter_blocks(source)):
            for lane in lanes:
                lane.put(block)
        for lane in lanes:
            lane.put(None)
        return [lane.join() for lane in lanes]
    except BaseException:
        for lane in lanes:
            lane.abort()
        raise


#: Blocks waiting for one rendition's thread in :func:`_render_pass`.
_QUEUE_BLOCKS = 4


class _Lane:
    """One rendition's processing chain and encoder, run inline or in a thread of its own."""

    def __init__(self, src_rate: int, plan: ProcessingPlan, settings: EncoderSettings, path: Path, dual: bool,
                 tags: Mapping[str, str]):
        self.model = (LimiterLossModel(sample_rate_hz=plan.output_sample_rate_hz, channels=plan.output_channels,
                                       dual_mono=dual, lookahead_ms=plan.limiter_lookahead_ms,
                                       release_ms=plan.limiter_release_ms, k_weighted=False)
                      if plan.ceiling_dbtp is not None else None)
        self.chain = ProcessingChain(sample_rate_hz=src_rate, plan=plan, loss_model=self.model)
        self.encoder = Encoder(path, settings=settings, tags=tags)
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_BLOCKS)
        self._thread: threading.Thread | None = None
        self._result = None
        self._error: BaseException | None = None
        self._aborted = threading.Event()

    def feed(self, block: np.ndarray) -> None:
        self.encoder.write(self.chain.process(block))

    def finish(self) -> tuple[ProcessingStats, EncodeResult, LimiterLossModel | None]:
        self.encoder.write(self.chain.flush())
        return self.chain.stats(), self.encoder.close(), self.model

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"render {self.encoder.target.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (block := self._queue.get()) is not None:
                if self._aborted.is_set():
                    return
                self.feed(block)
            if not self._aborted.is_set():  # an abort's sentinel must not close (publish) the file
                self._result = self.finish()
        except BaseException as err:  # noqa: BLE001 - handed to the decoding thread, which raises it
            self._error = err
            self._aborted.set()

    def put(self, block: np.ndarray | None) -> None:
        """Queue a block (``None``: end of stream); raises the lane's error if its thread failed."""
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(block, timeout=0.5)
                return
            except queue.Full:
                continue

    def join(self) -> tuple[ProcessingStats, EncodeResult, LimiterLossModel | None]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def abort(self) -> None:
        self._aborted.set()
        if self._thread is not None:
            while self._thread.is_alive():  # unblock a thread waiting on an empty queue
                with contextlib.suppress(queue.Full):
                    self._queue.put_nowait(None)
                self._thread.join(timeout=0.1)
        self.encoder.abort()


class _RenditionRun:
    """The attempts of one rendition: verification, corrections, and the attempt kept."""

    def __init__(self, out: Path, settings: EncoderSettings, target: LoudnessTarget, planned: RenditionPlan,
                 token: str):
        self.out, self.settings, self.target, self.planned, self.token = out, settings, target, planned, token
        self.plan = planned.plan
        self.aim = planned.aim_lufs
        self.dual = _played_as_dual_mono(settings.channels, target)
        self.tried: list[_Attempt] = []
        self.reasons: list[str] = []
        self.model: LimiterLossModel | None = None
        self.done = False

    def job(self) -> tuple[ProcessingPlan, EncoderSettings, Path, bool]:
        return self.plan, self.settings, _attempt_path(self.out, self.token, len(self.tried) + 1), self.dual

    def record(self, stats: ProcessingStats, encoded: EncodeResult, model: LimiterLossModel | None) -> None:
        """Verify the attempt just rendered and decide whether (and how) to render again."""
        target, settings = self.target, self.settings
        attempt = len(self.tried) + 1
        path = Path(encoded.path)
        if model is not None and model.samples:
            self.model = model
        verification = verify_rendition(path, settings=settings, target=target, name=self.out.name,
                                        expected_duration_s=self.planned.expected_duration_s, processing=stats)
        distance = _distance(verification, target)
        best = min(self.tried) if self.tried else None
        self.tried.append(_Attempt(distance, attempt, path, self.plan, stats, encoded, verification))
        self.done = True
        if verification.passed or settings.lossless:
            return
        if best is not None and distance >= best.distance:
            self.reasons.append(f"attempt {attempt} was no closer to the targets ({distance:.2f} dB past them) than "
                                f"attempt {best.number} ({best.distance:.2f} dB): stopped")
            return
        if attempt == MAX_ATTEMPTS:
            self.reasons.append(f"attempt {attempt} still misses: "
                                f"{'; '.join(c.message for c in verification.failures)}")
            return
        update, self.aim, why = _retry_update(self.plan, self.aim, verification, settings=settings, target=target)
        if not update:
            return  # a miss no retry can fix (duration, channels, rate, noise floor, gain reduction)
        update["gain_db"] = min(update.get("gain_db", self.plan.gain_db), target.max_gain_db)
        plan = self.plan.model_copy(update=update)
        if (plan.ceiling_dbtp is not None and self.aim is not None and self.model is not None
                and self.planned.delivered_lufs is not None):
            # The limiter's loss at the new gain / ceiling, predicted from what it saw this attempt.
            gain, loss = self.model.solve_gain_db(delivered_lufs=self.planned.delivered_lufs, aim_lufs=self.aim,
                                                  ceiling_dbtp=plan.ceiling_dbtp, max_gain_db=target.max_gain_db)
            plan = plan.model_copy(update={"gain_db": gain})
            why.append(f"gain {gain:+.2f} dB (limiter predicted to take {loss:.2f} LU)")
        self.reasons.append(f"attempt {attempt}: " + "; ".join(why) + "; rendered again")
        self.plan = plan
        self.done = False

    def publish(self) -> RenditionResult:
        """Tag the best attempt from its verified measurement and move it to ``out``."""
        kept = min(self.tried)
        settings = self.settings
        loudness = kept.verification.loudness
        # WAV deliveries (broadcast) get no ID3 chunk: playout systems read loudness from BWF, not tags.
        measured_tags = {} if settings.codec == "wav" else gain_tags(
            settings.codec, integrated_lufs=loudness.integrated_lufs, true_peak_dbtp=loudness.true_peak_dbtp)
        write_tags(kept.path, measured_tags, codec=settings.codec)
        os.replace(kept.path, self.out)
        encoded = kept.encode.model_copy(update={"path": str(self.out), "size_bytes": self.out.stat().st_size})
        verification = kept.verification.model_copy(update={"path": str(self.out)})
        return RenditionResult(path=str(self.out), settings=settings, plan=kept.plan, processing=kept.processing,
                               encode=encoded, verification=verification, attempts=len(self.tried),
                               kept_attempt=kept.number, retry_reason="; ".join(self.reasons) or None,
                               gain_tags=measured_tags)


def render_renditions(
    source: str | os.PathLike,
    out_paths: Sequence[str | os.PathLike],
    *,
    settings: Sequence[EncoderSettings],
    target: LoudnessTarget,
    analysis: AnalysisReport,
    planned: Sequence[RenditionPlan],
    tags: Mapping[str, str] | None = None,
) -> list[RenditionResult]:
    """Render, encode and verify every rendition of a source from one decode.

    1. One streaming pass (bounded memory: blocks, never the whole file) decodes the source
       once and feeds one processing chain and one encoder per rendition.
    2. Each encoded file is decoded and re-measured (:func:`verify_rendition`): the only
       other full pass per rendition.
    3. Only a lossy rendition that misses is rendered again, alone, with corrections that
       *accumulate*: the pre-encode loudness aim moves by the measured miss (``aim = aim +
       (target - measured)``), a true-peak overshoot lowers the limiter ceiling by the
       overshoot plus a margin, and the limiter's loss at the new gain and ceiling is
       predicted from what it saw in the attempt before
       (:class:`~puresound_core.limiter_loss.LimiterLossModel`). Every attempt must be
       closer than the best one before it, else the loop stops and says why; the best
       attempt is kept.
    4. Gain tags (ReplayGain 2.0 / Opus R128) are written from the verified measurement, and
       each file is moved to its place atomically.

    Parameters
    ----------
    source : str or path-like
        Read only; never modified.
    out_paths : sequence of str or path-like
        One per rendition; each written atomically, replaced if it exists.
    settings : sequence of EncoderSettings
    target : LoudnessTarget
    analysis : AnalysisReport
        Of the source (rate; tags to carry over).
    planned : sequence of RenditionPlan
        From :func:`plan_renditions` with the same settings.
    tags : mapping, optional
        Tags to carry over (title, artist, album, date); defaults to the source's own
        (``analysis.probe.tags``).

    Returns
    -------
    list of RenditionResult
        ``verification.passed`` is False when a rendition misses a target after the
        retries; the caller decides whether to publish it.

    Raises
    ------
    InvalidAudioError
        If the source cannot be decoded.
    EncodingError
        If an encoder fails.
    ComplianceError
        If a plan has problems (reject the source instead).

    References
    ----------
    ITU-R BS.1770-4; EBU R 128; FFmpeg encoders (libmp3lame, aac, libopus, flac).
    """
    from .errors import ComplianceError

    if not (len(out_paths) == len(settings) == len(planned)):
        raise ValueError("render_renditions: out_paths, settings and planned differ in length")
    problems = [p.message for plan in planned for p in plan.problems]
    if problems:
        raise ComplianceError("; ".join(problems))
    src_rate = analysis.loudness.sample_rate_hz
    if tags is None:
        tags = analysis.probe.tags if analysis.probe is not None else {}
    carried = {k: v for k, v in tags.items() if k in ("title", "artist", "album", "date")}
    token = uuid.uuid4().hex[:12]  # two processes rendering the same rendition never share attempt files
    runs = [_RenditionRun(Path(out), s, target, plan, token) for out, s, plan in zip(out_paths, settings, planned)]
    try:
        pending = runs
        while pending:
            # The first attempt of every rendition shares one decode; retries are one rendition each.
            batches = [pending] if all(not run.tried for run in pending) else [[run] for run in pending]
            for batch in batches:
                rendered = _render_pass(source, src_rate, [run.job() for run in batch], carried)
                # Verification decodes each rendition: in parallel threads (decoding releases the GIL).
                with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                    list(pool.map(lambda pair: pair[0].record(*pair[1]), zip(batch, rendered, strict=True)))
            pending = [run for run in runs if not run.done]
        return [run.publish() for run in runs]
    finally:
        for run in runs:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                _attempt_path(run.out, token, attempt).unlink(missing_ok=True)


def render_rendition(
    source: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    settings: EncoderSettings,
    target: LoudnessTarget,
    analysis: AnalysisReport,
    highpass_hz: float | None = None,
    trim_silence: bool = False,
    trim_keep_s: float = 0.1,
    downmix: str = "bs775",
    tags: Mapping[str, str] | None = None,
    planned: RenditionPlan | None = None,
) -> RenditionResult:
    """Plan (unless ``planned`` is given), render, encode and verify one rendition.

    :func:`plan_rendition` then :func:`render_renditions` for one rendition.

    Parameters
    ----------
    source : str or path-like
        Read only; never modified.
    out_path : str or path-like
        Written atomically; replaced if it exists.
    settings : EncoderSettings
    target : LoudnessTarget
    analysis : AnalysisReport
    highpass_hz : float, optional
    trim_silence : bool
        Cut leading / trailing silence found by analysis, keeping ``trim_keep_s`` of it.
    trim_keep_s : float
    downmix : {"bs775", "legacy"}
    tags : mapping, optional
        See :func:`render_renditions`.
    planned : RenditionPlan, optional
        From :func:`plan_rendition` with the same arguments (saves planning twice).

    Returns
    -------
    RenditionResult

    Raises
    ------
    InvalidAudioError, EncodingError, ComplianceError
        As :func:`render_renditions`.
    """
    planned = planned or plan_rendition(source, settings=settings, target=target, analysis=analysis,
                                        highpass_hz=highpass_hz, trim_silence=trim_silence,
                                        trim_keep_s=trim_keep_s, downmix=downmix)
    return render_renditions(source, [out_path], settings=[settings], target=target, analysis=analysis,
                             planned=[planned], tags=tags)[0]


def decoded_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's decoded samples (float32, channel-planar per block).

    Two files with the same decoded audio get the same hash whatever their container or
    codec, so a lossless rendition can be proven bit-exact to its source.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        Hex digest.

    Raises
    ------
    InvalidAudioError
        If the file cannot be decoded.
    """
    digest = hashlib.sha256()
    for block in iter_blocks(path):
        digest.update(np.ascontiguousarray(block.T).tobytes())
    return digest.hexdigest()


def bit_exact_check(source: str | os.PathLike, rendition: str | os.PathLike) -> VerificationCheck:
    """Check ``bit_exact``: the rendition decodes to exactly the source's samples.

    Parameters
    ----------
    source, rendition : str or path-like

    Returns
    -------
    VerificationCheck
        ``measured`` / ``expected``: the first 16 hex digits of each :func:`decoded_sha256`.

    Raises
    ------
    InvalidAudioError
        If either file cannot be decoded.
    """
    source_hash, output_hash = decoded_sha256(source), decoded_sha256(rendition)
    exact = source_hash == output_hash
    return RuleResult(
        rule="bit_exact", passed=exact, measured=output_hash[:16], limit=source_hash[:16],
        message=f"{Path(rendition).name}: decoded samples {'match' if exact else 'differ from'} the source "
                f"(sha256 {output_hash[:12]} vs {source_hash[:12]})")

