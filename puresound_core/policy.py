"""Preset policy that needs a source's probe or analysis: decided in the domain, before rendering.

* :func:`resolve_encoder`: a rendition's encoder settings for one source (archive
  renditions keep the source's rate, channels and depth);
* :func:`rendition_plans` and :func:`render_preset`: every rendition of a preset planned in
  one decode and rendered from one decode (archive renditions proven bit-exact);
* :func:`source_rules` and :func:`plan_rules`: every verdict that can be known before
  rendering, as validation rule results (``lossless_source``, ``source_format``, and the
  loudness rules of :func:`puresound_core.render.plan_renditions`);
* :func:`room_tone_warnings`: ACX head / tail room tone, reported.
"""

from __future__ import annotations

from pathlib import Path

from .analysis import AnalysisReport
from .audio import EncoderSettings, ProbeResult
from .presets import Preset, Rendition
from .render import RenditionPlan, RenditionResult, bit_exact_check, plan_renditions, render_renditions
from .validation import RuleResult

#: Decoders whose output is the exact integer samples that were encoded.
LOSSLESS_INTEGER_CODECS = frozenset({
    "pcm_s8", "pcm_u8", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be",
    "flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd", "pcm_bluray", "pcm_dvd",
})
#: Deepest integer PCM that FLAC / 24-bit WAV renditions hold bit-exact.
ARCHIVE_MAX_BIT_DEPTH = 24


def resolve_encoder(rendition: Rendition, probe: ProbeResult) -> EncoderSettings:
    """The rendition's encoder settings, with the source's format where ``source_format`` asks.

    Parameters
    ----------
    rendition : Rendition
    probe : ProbeResult

    Returns
    -------
    EncoderSettings
        For ``source_format`` renditions: the source's rate and channel count, and 16-bit
        depth for sources of 16 bits or fewer, 24-bit otherwise.
    """
    if not rendition.source_format:
        return rendition.encoder
    depth = 16 if (probe.bit_depth or 24) <= 16 else 24
    # Validated, not model_copy: a source the settings cannot hold is an error here, never an
    # encoder crash later (source_rules rejects such sources before this is called).
    return EncoderSettings.model_validate({**rendition.encoder.model_dump(), "sample_rate_hz": probe.sample_rate_hz,
                                           "channels": probe.channels, "bit_depth": depth})


def lossless_source_rule(probe: ProbeResult) -> RuleResult:
    """Rule ``lossless_source``: can this source be archived bit-exact?

    Parameters
    ----------
    probe : ProbeResult

    Returns
    -------
    RuleResult
        Failed for lossy codecs (MP3, AAC, Vorbis, Opus...: an archive of them is not the
        original), floating-point PCM (FLAC is integer), integer PCM deeper than 24 bits, and
        more than 2 channels (the archive renditions are mono or stereo).

    References
    ----------
    FLAC (RFC 9639 s. 9: integer samples, 4-32 bits; FFmpeg's encoder writes up to 24).
    """
    name = Path(probe.path).name
    reasons = []
    if probe.codec not in LOSSLESS_INTEGER_CODECS:
        reasons.append(f"codec '{probe.codec}' is {'floating-point PCM' if probe.codec.startswith('pcm_f') else 'lossy'}")
    elif probe.bit_depth is not None and probe.bit_depth > ARCHIVE_MAX_BIT_DEPTH:
        reasons.append(f"{probe.bit_depth}-bit samples > {ARCHIVE_MAX_BIT_DEPTH} bits")
    if probe.channels > 2:
        reasons.append(f"{probe.channels} channels > 2")
    if reasons:
        return RuleResult(rule="lossless_source", passed=False, measured=probe.codec,
                          limit="integer PCM / FLAC / ALAC, <= 24 bits, <= 2 channels",
                          message=f"{name}: rule 'lossless_source' failed: {', '.join(reasons)}: "
                                  "it cannot be archived bit-exact")
    return RuleResult(rule="lossless_source", passed=True, measured=probe.codec,
                      limit="integer PCM / FLAC / ALAC, <= 24 bits, <= 2 channels",
                      message=f"{name}: rule 'lossless_source' passed: {probe.codec}, {probe.bit_depth}-bit")


def rendition_plans(preset: Preset, path: str, analysis: AnalysisReport) -> list[RenditionPlan]:
    """Plan every rendition of a preset for one source, in at most one decode (see :func:`plan_renditions`).

    Parameters
    ----------
    preset : Preset
    path : str
        The local source file.
    analysis : AnalysisReport

    Returns
    -------
    list of RenditionPlan
        In the order of ``preset.renditions``.

    Raises
    ------
    InvalidAudioError
        If the source cannot be decoded.
    """
    return plan_renditions(path, [resolve_encoder(r, analysis.probe) for r in preset.renditions],
                           target=preset.loudness, analysis=analysis, highpass_hz=preset.processing.highpass_hz,
                           trim_silence=preset.processing.trim_silence, trim_keep_s=preset.processing.trim_keep_s,
                           downmix=preset.processing.downmix)


def render_preset(preset: Preset, path: str, analysis: AnalysisReport, plans: list[RenditionPlan],
                  out_paths: list[Path]) -> list[RenditionResult]:
    """Render, encode and verify every rendition of a preset from one decode (:func:`render_renditions`).

    Archive presets add check ``bit_exact`` to each rendition's verification: its decoded
    samples must hash like the source's (:func:`puresound_core.render.bit_exact_check`).

    Parameters
    ----------
    preset : Preset
    path : str
        The local source file; read only.
    analysis : AnalysisReport
    plans : list of RenditionPlan
        From :func:`rendition_plans`, without problems.
    out_paths : list of Path
        One per rendition, in the order of ``preset.renditions``.

    Returns
    -------
    list of RenditionResult
        ``verification.passed`` says whether each may be published.

    Raises
    ------
    InvalidAudioError, EncodingError, ComplianceError
        From :func:`puresound_core.render.render_renditions`.
    """
    results = render_renditions(path, out_paths, settings=[resolve_encoder(r, analysis.probe)
                                                           for r in preset.renditions],
                                target=preset.loudness, analysis=analysis, planned=plans)
    if not preset.lossless_archive:
        return results
    checked = []
    for out, result in zip(out_paths, results, strict=True):
        check = bit_exact_check(path, out)
        verification = result.verification.model_copy(update={
            "checks": [*result.verification.checks, check], "passed": result.verification.passed and check.passed})
        checked.append(result.model_copy(update={"verification": verification}))
    return checked


def source_rules(preset: Preset, probe: ProbeResult) -> list[RuleResult]:
    """Failures known from the probe alone, before any planning: the source cannot be delivered as asked.

    Parameters
    ----------
    preset : Preset
    probe : ProbeResult

    Returns
    -------
    list of RuleResult
        Only failed rules: ``lossless_source`` (archive presets), and ``source_format``
        when a rendition that keeps the source's format cannot hold it (more than 2 channels).
    """
    failures: list[RuleResult] = []
    if preset.lossless_archive:
        rule = lossless_source_rule(probe)
        if not rule.passed:
            failures.append(rule)
    keeping = [r.name for r in preset.renditions if r.source_format]
    if keeping and probe.channels > 2 and not failures:
        failures.append(RuleResult(
            rule="source_format", passed=False, measured=probe.channels, limit=2,
            message=f"{Path(probe.path).name}: rule 'source_format' failed: renditions {', '.join(keeping)} keep the "
                    f"source's channels, {probe.channels} > 2"))
    return failures


def plan_rules(preset: Preset, plans: list[RenditionPlan]) -> list[RuleResult]:
    """The problems of :func:`rendition_plans`, as rule results (each rule once, naming its renditions).

    Parameters
    ----------
    preset : Preset
    plans : list of RenditionPlan

    Returns
    -------
    list of RuleResult
        Only failed rules (``loudness_measurable``, ``gain_max``, ``max_gain_reduction``).
    """
    seen: dict[str, list[str]] = {}
    first: dict[str, object] = {}
    for rendition, plan in zip(preset.renditions, plans, strict=True):
        for problem in plan.problems:
            seen.setdefault(problem.rule, []).append(rendition.name)
            first.setdefault(problem.rule, problem)
    failures = []
    for rule, names in seen.items():
        problem = first[rule]
        failures.append(RuleResult(rule=rule, passed=False, measured=problem.measured, limit=problem.limit,
                                   message=f"{problem.message} (renditions: {', '.join(names)})"))
    return failures


def room_tone_warnings(preset: Preset, analysis: AnalysisReport) -> list[str]:
    """Head / tail room tone outside the preset's range (ACX), as warnings.

    Parameters
    ----------
    preset : Preset
    analysis : AnalysisReport

    Returns
    -------
    list of str
        Empty when the preset has no room-tone rule or both are within range.
    """
    if preset.room_tone is None:
        return []
    content = analysis.content
    warnings = []
    for label, measured, (low, high) in (("head", content.leading_silence_s, preset.room_tone.head_s),
                                         ("tail", content.trailing_silence_s, preset.room_tone.tail_s)):
        if not low <= measured <= high:
            warnings.append(f"{label} room tone {measured:.2f} s outside {low:g}-{high:g} s")
    return warnings
