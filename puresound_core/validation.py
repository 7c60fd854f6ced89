"""Validation: named rules with limits a preset sets, every failure reported at once.

Rules (name -> what fails it):

=====================  ==========================================================
``decodable``          FFmpeg cannot open or decode the file (empty, text, corrupt); in
                       :func:`~puresound_core.isolation.validate_isolated`, also a decoder
                       that crashed (signal) or ran out of its memory limit
``decode_errors``      FFmpeg logged errors / warnings while opening and decoding (CRC
                       mismatches, invalid frames, corrupt packets), beyond the benign
                       messages of :data:`BENIGN_DECODE_MESSAGES`
``has_audio_stream``   the container holds no audio stream (an image, a text file)
``sample_rate``        the header declares 0 Hz, or the rate is outside the limits
``file_size_max``      the file is larger than the limit
``channels_max``       more channels than the limit
``duration_min``       decoded duration under the limit
``duration_max``       decoded duration over the limit
``finite_samples``     NaN or inf samples
``not_silent``         sample peak at or under the silence limit (digital silence)
``clipping_ratio_max`` share of clipped samples (runs of >= 3 at full scale) over the limit
``declared_duration``  decoded duration differs from what the header declares, or the
                       final frame / data chunk / Ogg page is cut (truncated file)
``decode_timeout``     decoding took longer than its deadline (in-process: checked between
                       packets; isolated: the decoder process is killed)
=====================  ==========================================================

Multi-stream files (a video, a multi-track MKA) are judged on one audio stream, the one
:func:`puresound_core.audio.select_audio_stream` picks (default disposition, else FFmpeg's
best stream); the other audio streams are not decoded. ``report.probe.stream_index`` and
``report.probe.audio_streams`` say which and how many, and the messages of the signal
rules (``not_silent``, ``duration_min``...) name the stream when there are several, so a
file whose chosen track is silent while another is not fails ``not_silent`` on a message
that says the file has other audio streams.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from .audio import DecodeMessage, ProbeResult, iter_blocks, probe
from .errors import InvalidAudioError
from .specs import ValidationLimits  # noqa: F401  (re-exported)
from .true_peak import amplitude_to_db

#: |sample| at or above this is full scale for the clipping rule (-0.0087 dBFS: above the
#: largest 16-bit positive value 32767/32768).
CLIP_LEVEL = 0.999
#: A clipped run is at least this many consecutive full-scale samples.
CLIP_RUN = 3

#: FFmpeg messages that valid files produce and that say nothing about corruption; they do
#: not count for rule ``decode_errors``. Regular expressions matched against the text.
#: Found by decoding every file of the shared corpus (music/, speech/, effects/):
#: libavformat warns that an MP3 or raw GSM duration without a Xing/VBRI header is
#: estimated from the bitrate (the decoded duration is what ``declared_duration`` checks).
BENIGN_DECODE_MESSAGES: tuple[str, ...] = (
    r"^Estimating duration from bitrate, this may be inaccurate$",
)
_BENIGN = [re.compile(pattern) for pattern in BENIGN_DECODE_MESSAGES]


class RuleResult(BaseModel):
    """The outcome of one rule for one file.

    Attributes
    ----------
    rule : str
    passed : bool
    measured : float or str or None
        The measured value (seconds, Hz, ratio, dBFS...) or a description.
    limit : float or str or None
    message : str
        Names the file, the rule and the values.
    """

    model_config = ConfigDict(frozen=True)

    rule: str
    passed: bool
    measured: float | str | None = None
    limit: float | str | None = None
    message: str


class SignalStats(BaseModel):
    """What the validating decode measured.

    Attributes
    ----------
    decoded_samples : int
        Samples per channel.
    decoded_duration_s : float
    sample_peak_dbfs : float
    nonfinite_samples : int
    clipped_ratio : float
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")  # -inf dBFS survives JSON

    decoded_samples: int
    decoded_duration_s: float
    sample_peak_dbfs: float
    nonfinite_samples: int
    clipped_ratio: float


class ValidationReport(BaseModel):
    """Every rule checked for one file.

    Attributes
    ----------
    path : str
    passed : bool
        True when no rule failed.
    rules : list of RuleResult
    probe : ProbeResult or None
        ``None`` when the file could not be opened.
    stats : SignalStats or None
        ``None`` when nothing could be decoded.
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")  # -inf dBFS survives JSON

    path: str
    passed: bool
    rules: list[RuleResult]
    probe: ProbeResult | None = None
    stats: SignalStats | None = None

    @property
    def failures(self) -> list[RuleResult]:
        """list of RuleResult: the failed rules, in check order."""
        return [r for r in self.rules if not r.passed]

    @property
    def failed_rules(self) -> list[str]:
        """list of str: names of the failed rules."""
        return [r.rule for r in self.failures]


class _StatsAccumulator:
    """Sample peak, non-finite count and clipped-run count over a block stream."""

    def __init__(self, channels: int):
        self.samples = 0
        self.peak = 0.0
        self.nonfinite = 0
        self.clipped = 0
        self._carry = np.zeros((channels, CLIP_RUN - 1), dtype=bool)

    def process(self, block: np.ndarray) -> None:
        self.samples += block.shape[1]
        finite = np.isfinite(block)
        if not finite.all():
            self.nonfinite += int(block.size - np.count_nonzero(finite))
            block = np.where(finite, block, 0.0)
        magnitude = np.abs(block)
        if magnitude.size:
            self.peak = max(self.peak, float(magnitude.max()))
        full = np.concatenate([self._carry, magnitude >= CLIP_LEVEL], axis=1)
        runs = full[:, :-2] & full[:, 1:-1] & full[:, 2:]          # a run of 3 starts here
        member = np.zeros_like(full)
        for shift in range(CLIP_RUN):
            member[:, shift:shift + runs.shape[1]] |= runs
        self.clipped += int(member[:, CLIP_RUN - 1:].sum())
        self._carry = full[:, -(CLIP_RUN - 1):]


def _rule(path: Path, rule: str, passed: bool, measured, limit, detail: str) -> RuleResult:
    status = "passed" if passed else "failed"
    return RuleResult(rule=rule, passed=passed, measured=measured, limit=limit,
                      message=f"{path.name}: rule '{rule}' {status}: {detail}")


#: ``observe(probe)`` returns a function that receives every decoded block of the validating pass.
BlockObserver = Callable[[ProbeResult], Callable[[np.ndarray], None]]


def validate_file(path: str | os.PathLike, limits: ValidationLimits | None = None, *,
                  observe: BlockObserver | None = None) -> ValidationReport:
    """Check a file against every validation rule and report all failures.

    The file is probed, then decoded once (block by block, under ``limits.decode_timeout_s``)
    to measure what headers cannot tell: decoded duration, peak, NaN / inf, clipping.

    Parameters
    ----------
    path : str or path-like
    limits : ValidationLimits, optional
        Defaults to ``ValidationLimits()``.
    observe : callable, optional
        Called once with the probe when decoding starts; the function it returns gets every
        decoded block, so that measurements share this decode (see
        :func:`puresound_core.analysis.inspect_file`). When it raises
        :class:`InvalidAudioError` (a meter refusing NaN) it gets no further block; the
        rules are unaffected.

    Returns
    -------
    ValidationReport
        Never raises for bad input: an unreadable file is a report with failed rules.

    References
    ----------
    Rule set after ffmpeg-normalize's input checks and EBU R 128 s4 (true-peak / clipping);
    MPEG frame lengths from ISO/IEC 11172-3.
    """
    limits = limits or ValidationLimits()
    p = Path(path)
    rules: list[RuleResult] = []
    size = p.stat().st_size if p.is_file() else 0
    rules.append(_rule(p, "file_size_max", size <= limits.file_size_max_bytes, size,
                       limits.file_size_max_bytes, f"{size} bytes <= {limits.file_size_max_bytes} bytes"
                       if size <= limits.file_size_max_bytes else
                       f"{size} bytes > {limits.file_size_max_bytes} bytes"))
    try:
        info = probe(p)
    except InvalidAudioError as err:
        rules.append(RuleResult(rule=err.rule or "decodable", passed=False, measured=None, limit=None,
                                message=str(err)))
        return ValidationReport(path=str(p), passed=False, rules=rules)

    rate_ok = limits.sample_rate_min_hz <= info.sample_rate_hz <= limits.sample_rate_max_hz
    rules.append(_rule(p, "sample_rate", rate_ok, info.sample_rate_hz,
                       f"{limits.sample_rate_min_hz}-{limits.sample_rate_max_hz}",
                       f"{info.sample_rate_hz} Hz {'within' if rate_ok else 'outside'} "
                       f"{limits.sample_rate_min_hz}-{limits.sample_rate_max_hz} Hz"))
    ch_ok = info.channels <= limits.channels_max
    rules.append(_rule(p, "channels_max", ch_ok, info.channels, limits.channels_max,
                       f"{info.channels} {'<=' if ch_ok else '>'} {limits.channels_max}"))

    stats = _StatsAccumulator(info.channels)
    decode_failure: InvalidAudioError | None = None
    messages: list[DecodeMessage] = []
    sink = observe(info) if observe is not None else None
    try:
        for block in iter_blocks(p, timeout_s=limits.decode_timeout_s, stream_index=info.stream_index,
                                 on_decode_message=messages.append):
            stats.process(block)
            if sink is not None:
                try:
                    sink(block)
                except InvalidAudioError:
                    sink = None  # e.g. NaN: rule finite_samples reports it
    except InvalidAudioError as err:  # includes DecodeTimeoutError (rule decode_timeout)
        decode_failure = err
    if decode_failure is not None:
        rules.append(RuleResult(rule=decode_failure.rule or "decodable", passed=False,
                                message=str(decode_failure)))
    else:
        rules.append(_rule(p, "decodable", True, None, None, "decoded to the end"))
    counted = [m for m in messages if not any(b.search(m.text) for b in _BENIGN)]
    errors_ok = len(counted) <= limits.decode_errors_max
    rules.append(_rule(p, "decode_errors", errors_ok, len(counted), limits.decode_errors_max,
                       f"{len(counted)} FFmpeg decode errors/warnings {'<=' if errors_ok else '>'} "
                       f"{limits.decode_errors_max}" + (f", first: {counted[0]}" if counted else "")))
    # With several audio streams, say which one the signal rules measured.
    on = (f" (audio stream #{info.stream_index}; the file has {info.audio_streams} audio streams, "
          f"only this one is checked)" if info.audio_streams > 1 else "")

    duration = stats.samples / info.sample_rate_hz
    rules.append(_rule(p, "duration_min", duration >= limits.duration_min_s, round(duration, 6),
                       limits.duration_min_s, f"{duration:.6g} s {'>=' if duration >= limits.duration_min_s else '<'} "
                       f"{limits.duration_min_s:g} s{on}"))
    rules.append(_rule(p, "duration_max", duration <= limits.duration_max_s, round(duration, 6),
                       limits.duration_max_s, f"{duration:.1f} s {'<=' if duration <= limits.duration_max_s else '>'} "
                       f"{limits.duration_max_s:g} s{on}"))
    rules.append(_rule(p, "finite_samples", stats.nonfinite == 0, stats.nonfinite, 0,
                       f"{stats.nonfinite} NaN/inf samples{on}"))
    peak_db = amplitude_to_db(stats.peak)
    silent = stats.samples > 0 and peak_db <= limits.silence_peak_dbfs
    rules.append(_rule(p, "not_silent", not silent, peak_db if math.isfinite(peak_db) else "-inf",
                       limits.silence_peak_dbfs,
                       f"sample peak {peak_db:.1f} dBFS {'<=' if silent else '>'} {limits.silence_peak_dbfs:g} dBFS"
                       + (" (digital silence)" if silent else "") + on))
    total = stats.samples * info.channels
    clipped_ratio = stats.clipped / total if total else 0.0
    clip_ok = clipped_ratio <= limits.clipping_ratio_max
    rules.append(_rule(p, "clipping_ratio_max", clip_ok, round(clipped_ratio, 6), limits.clipping_ratio_max,
                       f"{clipped_ratio:.4f} of samples in full-scale runs {'<=' if clip_ok else '>'} "
                       f"{limits.clipping_ratio_max:g}{on}"))
    if info.integrity_issue is not None:
        rules.append(_rule(p, "declared_duration", False, info.integrity_issue, "whole stream",
                           f"truncated: {info.integrity_issue}"
                           + (f" (declares {info.declared_duration_s:.3f} s, decoded {duration:.3f} s)"
                              if info.declared_duration_s is not None else "")))
    elif info.declared_duration_s is not None:
        gap = abs(info.declared_duration_s - duration)
        ok = gap <= limits.declared_duration_tolerance_s
        rules.append(_rule(p, "declared_duration", ok, round(gap, 6), limits.declared_duration_tolerance_s,
                           f"declared {info.declared_duration_s:.3f} s, decoded {duration:.3f} s "
                           f"(difference {gap:.3f} s {'<=' if ok else '>'} {limits.declared_duration_tolerance_s:g} s){on}"))
    signal = SignalStats(decoded_samples=stats.samples, decoded_duration_s=duration,
                         sample_peak_dbfs=peak_db, nonfinite_samples=stats.nonfinite,
                         clipped_ratio=clipped_ratio)
    return ValidationReport(path=str(p), passed=all(r.passed for r in rules), rules=rules,
                            probe=info, stats=signal)
