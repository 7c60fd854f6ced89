"""Render, encode and verify one rendition; retry once when a lossy encode overshoots.

:func:`render_rendition` is the whole path from a source file to a checked rendition:

1. plan: gain to the loudness target, measured on the signal the chain will actually
   deliver (after trim, down-mix and high-pass: all linear, so a gain of x dB moves it by
   exactly x LU); the limiter is enabled only when that gain would push
   the true peak over the ceiling, and then the gain is raised by what limiting took off
   (re-measured, processing only, up to three passes);
2. render and encode in one streaming pass (bounded memory);
3. verify (:func:`verify_rendition`): decode the file and re-measure it;
4. when a lossy encode misses (true peak over the ceiling, or loudness off target because
   the codec's low-pass took energy away), render once more with the ceiling lowered by the
   overshoot plus a margin and / or the gain corrected by the miss (and the limiter's
   loudness loss won back), and say so in the result; a third attempt is made only when
   the second still misses.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .analysis import AnalysisReport, ContentAnalyzer
from .audio import EncodeResult, EncoderSettings, encode_blocks, iter_blocks, probe
from .loudness import LoudnessMeter, LoudnessReport
from .processing import ProcessingPlan, ProcessingStats, process_blocks

#: Duration check of :func:`verify_rendition`: within 50 ms of the source after priming.
DURATION_TOLERANCE_S = 0.050
#: Extra headroom (dB) taken on the second attempt after a lossy overshoot: the overshoot
#: grows as the limiter works harder, so lowering by the overshoot alone is not enough.
RETRY_MARGIN_DB = 0.5
#: ReplayGain 2.0 reference level (LUFS); Opus R128 gain tags are relative to -23 LUFS.
REPLAYGAIN_REFERENCE_LUFS = -18.0
R128_REFERENCE_LUFS = -23.0
#: Processing-only passes that add back the loudness a limiter took off.
COMPENSATION_PASSES = 3
#: Renders of one rendition at most: the first, then retries while a lossy encode misses.
#: Usually one retry suffices; heavily limited material through a low-bitrate codec can
#: overshoot more as the limiter works harder, so a third attempt is allowed.
MAX_ATTEMPTS = 3


class LoudnessTarget(BaseModel):
    """Loudness a rendition must meet.

    Attributes
    ----------
    target_lufs : float or None
        Integrated loudness to normalise to; ``None`` leaves the level alone.
    tolerance_lu : float
        Largest accepted |measured - target|.
    ceiling_dbtp : float or None
        Largest accepted true peak; ``None`` for no ceiling.
    target_rms_dbfs : float or None
        Normalise unweighted RMS instead of loudness (ACX); exclusive with ``target_lufs``.
    rms_range_dbfs : (float, float) or None
        Accepted RMS range.
    sample_peak_max_dbfs, noise_floor_max_dbfs : float or None
        Largest accepted sample peak / noise floor (5th percentile of 50 ms RMS).

    References
    ----------
    EBU R 128 (2020): -23 LUFS +-0.5 LU (+-1 LU live), -1 dBTP; AES TD1008 and Apple Podcasts
    (-16 LUFS, -1 dBTP).
    """

    model_config = ConfigDict(frozen=True)

    target_lufs: float | None = Field(default=None, le=0)
    tolerance_lu: float = Field(default=1.0, gt=0)
    ceiling_dbtp: float | None = Field(default=-1.0, le=0)
    target_rms_dbfs: float | None = Field(default=None, le=0)
    rms_range_dbfs: tuple[float, float] | None = None
    sample_peak_max_dbfs: float | None = Field(default=None, le=0)
    noise_floor_max_dbfs: float | None = Field(default=None, le=0)

    @model_validator(mode="after")
    def _one_level_target(self) -> LoudnessTarget:
        if self.target_lufs is not None and self.target_rms_dbfs is not None:
            raise ValueError("set target_lufs or target_rms_dbfs, not both")
        return self


class VerificationCheck(BaseModel):
    """One check of a rendition.

    Attributes
    ----------
    check : str
        ``integrated_loudness``, ``true_peak``, ``rms``, ``sample_peak``, ``noise_floor``,
        ``duration``, ``channels``, ``sample_rate``.
    passed : bool
    measured, expected : float or str or None
    message : str
    """

    model_config = ConfigDict(frozen=True)

    check: str
    passed: bool
    measured: float | str | None
    expected: float | str | None
    message: str


class VerificationReport(BaseModel):
    """A rendition re-measured after encoding.

    Attributes
    ----------
    path : str
    passed : bool
    checks : list of VerificationCheck
    loudness : LoudnessReport
        Measured on the decoded file.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    passed: bool
    checks: list[VerificationCheck]
    loudness: LoudnessReport

    @property
    def failures(self) -> list[VerificationCheck]:
        """list of VerificationCheck: the failed checks."""
        return [c for c in self.checks if not c.passed]


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
        1 to :data:`MAX_ATTEMPTS`; more than 1 when a lossy encode missed a target.
    retry_reason : str or None
        What each retry changed and why.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    settings: EncoderSettings
    plan: ProcessingPlan
    processing: ProcessingStats
    encode: EncodeResult
    verification: VerificationReport
    attempts: int
    retry_reason: str | None = None


def _fmt(value: float | None, unit: str) -> str:
    return "none" if value is None else f"{value:.2f} {unit}"


def verify_rendition(
    path: str | os.PathLike,
    *,
    settings: EncoderSettings,
    target: LoudnessTarget,
    expected_duration_s: float,
    duration_tolerance_s: float = DURATION_TOLERANCE_S,
) -> VerificationReport:
    """Decode an encoded rendition and check it against its targets.

    Parameters
    ----------
    path : str or path-like
    settings : EncoderSettings
        The channels and sample rate that were asked for.
    target : LoudnessTarget
    expected_duration_s : float
        Duration of the processed programme (after any trim).
    duration_tolerance_s : float
        50 ms by default: decoders remove codec priming (LAME/Xing delay, MP4 edit lists,
        Opus pre-skip); what is left is end padding.

    Returns
    -------
    VerificationReport

    Raises
    ------
    InvalidAudioError
        If the rendition cannot be decoded.

    References
    ----------
    ITU-R BS.1770-4 (loudness, Annex 2 true peak); EBU R 128 s. 4.
    """
    p = Path(path)
    info = probe(p)
    meter = LoudnessMeter(sample_rate_hz=info.sample_rate_hz, channels=info.channels, layout=info.channel_layout)
    content = (ContentAnalyzer(sample_rate_hz=info.sample_rate_hz, channels=info.channels)
               if target.noise_floor_max_dbfs is not None else None)
    for block in iter_blocks(p):
        meter.process(block)
        if content is not None:
            content.process(block)
    loudness = meter.report()
    noise_floor_dbfs = content.report().noise_floor_dbfs if content is not None else None
    checks: list[VerificationCheck] = []
    if target.target_lufs is not None:
        measured = loudness.integrated_lufs
        ok = measured is not None and abs(measured - target.target_lufs) <= target.tolerance_lu
        checks.append(VerificationCheck(
            check="integrated_loudness", passed=ok, measured=measured, expected=target.target_lufs,
            message=f"{p.name}: integrated loudness {_fmt(measured, 'LUFS')}, target "
                    f"{target.target_lufs:.1f} +-{target.tolerance_lu:g} LU"))
    if target.ceiling_dbtp is not None:
        tp = loudness.true_peak_dbtp
        ok = tp <= target.ceiling_dbtp
        checks.append(VerificationCheck(
            check="true_peak", passed=ok, measured=tp if math.isfinite(tp) else None, expected=target.ceiling_dbtp,
            message=f"{p.name}: true peak {tp:.2f} dBTP {'<=' if ok else '>'} ceiling {target.ceiling_dbtp:.1f} dBTP"))
    if target.rms_range_dbfs is not None:
        low, high = target.rms_range_dbfs
        ok = low <= loudness.rms_dbfs <= high
        checks.append(VerificationCheck(
            check="rms", passed=ok, measured=loudness.rms_dbfs if math.isfinite(loudness.rms_dbfs) else None,
            expected=f"{low:g} to {high:g}",
            message=f"{p.name}: RMS {loudness.rms_dbfs:.2f} dBFS {'within' if ok else 'outside'} {low:g} to {high:g} dBFS"))
    if target.sample_peak_max_dbfs is not None:
        ok = loudness.sample_peak_dbfs <= target.sample_peak_max_dbfs
        checks.append(VerificationCheck(
            check="sample_peak", passed=ok,
            measured=loudness.sample_peak_dbfs if math.isfinite(loudness.sample_peak_dbfs) else None,
            expected=target.sample_peak_max_dbfs,
            message=f"{p.name}: sample peak {loudness.sample_peak_dbfs:.2f} dBFS "
                    f"{'<=' if ok else '>'} {target.sample_peak_max_dbfs:g} dBFS"))
    if noise_floor_dbfs is not None or target.noise_floor_max_dbfs is not None:
        floor = noise_floor_dbfs
        ok = floor is None or floor <= target.noise_floor_max_dbfs
        checks.append(VerificationCheck(
            check="noise_floor", passed=ok, measured=floor, expected=target.noise_floor_max_dbfs,
            message=f"{p.name}: noise floor {_fmt(floor, 'dBFS')} {'<=' if ok else '>'} "
                    f"{target.noise_floor_max_dbfs:g} dBFS"))
    gap = abs(loudness.duration_s - expected_duration_s)
    checks.append(VerificationCheck(
        check="duration", passed=gap <= duration_tolerance_s, measured=loudness.duration_s,
        expected=expected_duration_s,
        message=f"{p.name}: duration {loudness.duration_s:.3f} s vs {expected_duration_s:.3f} s "
                f"(difference {gap * 1000:.1f} ms, limit {duration_tolerance_s * 1000:.0f} ms)"))
    checks.append(VerificationCheck(
        check="channels", passed=info.channels == settings.channels, measured=info.channels,
        expected=settings.channels, message=f"{p.name}: {info.channels} channels, asked {settings.channels}"))
    checks.append(VerificationCheck(
        check="sample_rate", passed=info.sample_rate_hz == settings.sample_rate_hz, measured=info.sample_rate_hz,
        expected=settings.sample_rate_hz,
        message=f"{p.name}: {info.sample_rate_hz} Hz, asked {settings.sample_rate_hz} Hz"))
    return VerificationReport(path=str(p), passed=all(c.passed for c in checks), checks=checks, loudness=loudness)


def _gain_tags(settings: EncoderSettings, expected_lufs: float | None, true_peak_dbtp: float | None) -> dict[str, str]:
    """ReplayGain 2.0 tags (MP3/FLAC/WAV/AAC where written) and R128 gain tags (Opus, RFC 7845 s. 5.2.1)."""
    if expected_lufs is None:
        return {}
    if settings.codec == "opus":
        q78 = round((R128_REFERENCE_LUFS - expected_lufs) * 256)
        return {"R128_TRACK_GAIN": str(int(max(-32768, min(32767, q78))))}
    tags = {"REPLAYGAIN_TRACK_GAIN": f"{REPLAYGAIN_REFERENCE_LUFS - expected_lufs:+.2f} dB"}
    if true_peak_dbtp is not None and math.isfinite(true_peak_dbtp):
        tags["REPLAYGAIN_TRACK_PEAK"] = f"{10 ** (true_peak_dbtp / 20):.6f}"
    return tags


def _rendered_loudness(source, src_rate: int, plan: ProcessingPlan) -> float | None:
    """Integrated loudness of the processed signal (no encode)."""
    meter = LoudnessMeter(sample_rate_hz=plan.output_sample_rate_hz, channels=plan.output_channels)
    for block in process_blocks(iter_blocks(source), sample_rate_hz=src_rate, plan=plan):
        meter.process(block)
    return meter.report().integrated_lufs


def _compensate_limiter_loss(source, src_rate: int, plan: ProcessingPlan, target: LoudnessTarget, *,
                             within_lu: float) -> ProcessingPlan:
    """Raise the gain by what the limiter took off, until the rendered loudness is on target.

    Peak limiting lowers integrated loudness; each pass re-measures the limited signal and
    adds the shortfall to the gain (at most :data:`COMPENSATION_PASSES` passes, stopping
    within ``within_lu``). Only processing runs here, no encoding.
    """
    for _ in range(COMPENSATION_PASSES):
        rendered = _rendered_loudness(source, src_rate, plan)
        if rendered is None:
            break
        shortfall = target.target_lufs - rendered
        if abs(shortfall) <= within_lu:
            break
        plan = plan.model_copy(update={"gain_db": plan.gain_db + shortfall})
    return plan


def _retry_plan(plan: ProcessingPlan, verification: VerificationReport, *, settings: EncoderSettings,
                target: LoudnessTarget) -> tuple[ProcessingPlan, str | None]:
    """The plan of a second attempt after a lossy encode missed its targets, and why.

    A true-peak overshoot lowers the limiter ceiling by the overshoot plus
    :data:`RETRY_MARGIN_DB`; a loudness miss (a codec's low-pass takes energy off bright
    material) corrects the gain by the measured difference. ``(plan, None)`` when neither
    failed.
    """
    failed = {c.check: c for c in verification.failures}
    reasons = []
    update: dict = {}
    peak = failed.get("true_peak")
    if peak is not None and peak.measured is not None:
        excess = float(peak.measured) - target.ceiling_dbtp
        current = plan.ceiling_dbtp if plan.ceiling_dbtp is not None else target.ceiling_dbtp
        update["ceiling_dbtp"] = current - excess - RETRY_MARGIN_DB
        reasons.append(f"{settings.codec} encode overshot the {target.ceiling_dbtp:.1f} dBTP ceiling by "
                       f"{excess:.2f} dB (true peak {float(peak.measured):.2f} dBTP): limiter ceiling lowered "
                       f"to {update['ceiling_dbtp']:.2f} dBTP")
    loudness = failed.get("integrated_loudness")
    if loudness is not None and loudness.measured is not None:
        miss = target.target_lufs - float(loudness.measured)
        update["gain_db"] = plan.gain_db + miss
        reasons.append(f"{settings.codec} encode measured {float(loudness.measured):.2f} LUFS against "
                       f"{target.target_lufs:.1f} LUFS: gain corrected by {miss:+.2f} dB")
    rms = failed.get("rms")
    if rms is not None and rms.measured is not None and target.target_rms_dbfs is not None:
        miss = target.target_rms_dbfs - float(rms.measured)
        update["gain_db"] = update.get("gain_db", plan.gain_db) + miss
        reasons.append(f"{settings.codec} encode measured RMS {float(rms.measured):.2f} dBFS against "
                       f"{target.target_rms_dbfs:.1f} dBFS: gain corrected by {miss:+.2f} dB")
    if not update:
        return plan, None
    if "ceiling_dbtp" not in update and plan.ceiling_dbtp is None and target.ceiling_dbtp is not None:
        update["ceiling_dbtp"] = target.ceiling_dbtp  # a raised gain may now need the limiter
    return plan.model_copy(update=update), "; ".join(reasons) + "; rendered again"


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
    tags: Mapping[str, str] | None = None,
) -> RenditionResult:
    """Render, encode and verify one rendition of a source file.

    Parameters
    ----------
    source : str or path-like
        Read only; never modified.
    out_path : str or path-like
        Written atomically; replaced if it exists.
    settings : EncoderSettings
    target : LoudnessTarget
    analysis : AnalysisReport
        Of the source (gives rate, channels, silence and, when the chain is the identity,
        the loudness to plan from).
    highpass_hz : float, optional
    trim_silence : bool
        Cut leading / trailing silence found by analysis, keeping ``trim_keep_s`` of it.
    tags : mapping, optional
        Tags to carry over (title, artist, album, date); defaults to the source's own
        (``analysis.probe.tags``).

    Returns
    -------
    RenditionResult
        ``verification.passed`` is False when the rendition misses a target after the
        retries; the caller decides whether to publish it.

    Raises
    ------
    InvalidAudioError
        If the source cannot be decoded.
    EncodingError
        If the encoder fails.

    References
    ----------
    ITU-R BS.1770-4; EBU R 128; FFmpeg encoders (libmp3lame, aac, libopus, flac).
    """
    src_rate = analysis.loudness.sample_rate_hz
    trim_start = trim_end = 0
    if trim_silence:
        content = analysis.content
        trim_start = max(0, int((content.leading_silence_s - trim_keep_s) * src_rate))
        trim_end = max(0, int((content.trailing_silence_s - trim_keep_s) * src_rate))
        total = round(analysis.loudness.duration_s * src_rate)
        if trim_start + trim_end >= total:
            trim_start = trim_end = 0
    base = ProcessingPlan(output_sample_rate_hz=settings.sample_rate_hz, output_channels=settings.channels,
                          highpass_hz=highpass_hz, trim_start_samples=trim_start, trim_end_samples=trim_end)
    # Loudness before gain, measured at the source rate: resampling changes it only by what
    # lies above the new Nyquist frequency, negligible after K-weighting; a true-peak rise
    # from resampling is caught by verification, whose retry switches the limiter on.
    if highpass_hz is None and not trim_start and not trim_end and settings.channels == analysis.loudness.channels:
        pre = analysis.loudness
    else:
        meter = LoudnessMeter(sample_rate_hz=src_rate, channels=settings.channels)
        at_source_rate = base.model_copy(update={"output_sample_rate_hz": src_rate})
        for block in process_blocks(iter_blocks(source), sample_rate_hz=src_rate, plan=at_source_rate):
            meter.process(block)
        pre = meter.report()

    gain_db = 0.0
    if target.target_lufs is not None and pre.integrated_lufs is not None:
        gain_db = target.target_lufs - pre.integrated_lufs
    elif target.target_rms_dbfs is not None and math.isfinite(pre.rms_dbfs):
        gain_db = target.target_rms_dbfs - pre.rms_dbfs
    expected_duration_s = (analysis.loudness.duration_s * src_rate - trim_start - trim_end) / src_rate
    ceiling = target.ceiling_dbtp
    needs_limiter = ceiling is not None and pre.true_peak_dbtp + gain_db > ceiling
    plan = base.model_copy(update={"gain_db": gain_db, "ceiling_dbtp": ceiling if needs_limiter else None})
    if needs_limiter and target.target_lufs is not None:
        plan = _compensate_limiter_loss(source, src_rate, plan, target, within_lu=target.tolerance_lu / 4)

    if tags is None:
        tags = analysis.probe.tags if analysis.probe is not None else {}
    carried = {k: v for k, v in tags.items() if k in ("title", "artist", "album", "date")}
    reasons: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        expected_tp = min(pre.true_peak_dbtp + gain_db, plan.ceiling_dbtp or math.inf)
        all_tags = {**carried, **_gain_tags(settings, target.target_lufs if pre.integrated_lufs is not None
                                            else None, expected_tp)}
        stats: list[ProcessingStats] = []
        encoded = encode_blocks(process_blocks(iter_blocks(source), sample_rate_hz=src_rate, plan=plan,
                                               stats_out=stats),
                                out_path, settings=settings, tags=all_tags)
        verification = verify_rendition(out_path, settings=settings, target=target,
                                        expected_duration_s=expected_duration_s)
        if attempt == MAX_ATTEMPTS or settings.lossless or verification.passed:
            break
        plan, reason = _retry_plan(plan, verification, settings=settings, target=target)
        if reason is None:
            break
        reasons.append(f"attempt {attempt}: {reason}")
        if plan.ceiling_dbtp is not None and target.target_lufs is not None:
            # More limiting takes loudness off again: win it back, to within half the tolerance.
            plan = _compensate_limiter_loss(source, src_rate, plan, target, within_lu=target.tolerance_lu / 2)
    return RenditionResult(path=str(out_path), settings=settings, plan=plan, processing=stats[0],
                           encode=encoded, verification=verification, attempts=attempt,
                           retry_reason="; ".join(reasons) or None)


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
