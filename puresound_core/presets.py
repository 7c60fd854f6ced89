"""Presets: what a delivery needs (limits, loudness, processing, renditions), built in or YAML.

A :class:`Preset` has a ``version`` that enters every cache key and lineage row, together
with a fingerprint of its whole content, so editing a preset re-renders what it produced.

Built-in presets and the public specifications they follow:

=================  ===========================================================================
``podcast``        Apple Podcasts: -16 LUFS +-1 LU, true peak <= -1 dBTP; MP3 128 kbps stereo
                   44.1 kHz and Opus 48 kbps mono
``music-streaming`` -14 LUFS +-1 LU, <= -1 dBTP (Spotify / YouTube / Tidal reference level);
                   AAC 256 kbps M4A, Opus 160 kbps, MP3 320 kbps
``audiobook-acx``  ACX audio submission requirements: RMS -23 to -18 dBFS, peak <= -3 dBFS,
                   noise floor <= -60 dBFS, MP3 192 kbps CBR 44.1 kHz mono, <= 120 min a file,
                   head room tone 0.5-1 s and tail room tone 1-5 s (reported)
``broadcast-r128`` EBU R 128 (2020): -23 LUFS +-0.5 LU, <= -1 dBTP; WAV 48 kHz 24-bit
``archive-flac``   no processing; FLAC at the source's rate / channels, proven bit-exact
                   by a hash of the decoded samples
``voice``          speech (AES TD1008: -18 LUFS for speech streams): high-pass 80 Hz,
                   silence trim, Opus 32 kbps mono
=================  ===========================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import PresetError
from .specs import EncoderSettings, LoudnessTarget, ValidationLimits

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
#: A preset version becomes part of paths and cache keys: letters, digits, ``.``, ``_``, ``-``.
VersionSlug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")]

#: Fields an ``output_naming`` template may use.
NAMING_FIELDS = ("stem", "sha8", "sha16", "preset", "version")
_NAMING_TOKEN = re.compile(r"\{([^{}]*)\}")
_NAMING_LITERAL = re.compile(r"^[A-Za-z0-9._-]*$")
#: Longest source stem that enters a folder name (characters).
STEM_MAX_CHARS = 80


def check_output_naming(template: str) -> str:
    """Check an ``output_naming`` template: known ``{field}`` tokens and slug characters only.

    Parameters
    ----------
    template : str
        E.g. ``"{stem}-{sha8}"``; fields are :data:`NAMING_FIELDS`; the literal text between
        them may hold letters, digits, ``.``, ``_`` and ``-``; ``{sha8}`` or ``{sha16}`` must
        appear so that different sources never share a folder.

    Returns
    -------
    str
        The template, unchanged.

    Raises
    ------
    ValueError
        Naming the unknown field or the refused character.
    """
    if not 1 <= len(template) <= 64:
        raise ValueError(f"must be 1 to 64 characters, got {len(template)}")
    fields = _NAMING_TOKEN.findall(template)
    for field in fields:
        if field not in NAMING_FIELDS:
            raise ValueError(f"unknown field {{{field}}}; known: {', '.join('{' + f + '}' for f in NAMING_FIELDS)}")
    literal = _NAMING_TOKEN.sub("", template)
    if not _NAMING_LITERAL.match(literal):
        bad = sorted({c for c in literal if not _NAMING_LITERAL.match(c)})
        raise ValueError(f"characters {bad!r} are not allowed outside fields (letters, digits, '.', '_', '-')")
    if "sha8" not in fields and "sha16" not in fields:
        raise ValueError("must contain {sha8} or {sha16} so different sources never collide")
    if template.startswith("."):
        raise ValueError("must not start with '.' (hidden folders are skipped as inputs)")
    return template


def safe_stem(name: str) -> str:
    """A file name's stem reduced to slug characters, whatever its bytes.

    Parameters
    ----------
    name : str
        A file name; may hold undecodable bytes as surrogate escapes (``os.fsdecode``).

    Returns
    -------
    str
        At most :data:`STEM_MAX_CHARS` of ``[A-Za-z0-9._-]``, not starting with ``.``;
        ``"source"`` when nothing is left.
    """
    stem = name.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:STEM_MAX_CHARS].lstrip(".")
    return cleaned or "source"


class Rendition(BaseModel):
    """One deliverable file of a preset.

    Attributes
    ----------
    name : str
        Lower-case slug; the file is ``{name}.{extension}`` in the source's output folder.
    encoder : EncoderSettings
    source_format : bool
        Replace the encoder's sample rate, channel count and (lossless) bit depth by the
        source's (archive presets).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Slug
    encoder: EncoderSettings
    source_format: bool = False

    @model_validator(mode="after")
    def _verifiable(self) -> Rendition:
        # An Ogg Opus file always decodes at 48 kHz (RFC 7845 s. 5.1: the rate in the header
        # is informational), so any other output rate could never pass verification.
        if self.encoder.codec == "opus" and self.encoder.sample_rate_hz != 48000 and not self.source_format:
            raise ValueError(f"encoder.sample_rate_hz: opus renditions decode at 48000 Hz (RFC 7845 s. 5.1), "
                             f"got {self.encoder.sample_rate_hz}; set 48000")
        if self.encoder.codec == "opus" and self.source_format:
            raise ValueError("source_format: opus cannot keep the source's rate (it decodes at 48000 Hz)")
        return self


class ProcessingOptions(BaseModel):
    """Processing applied before encoding.

    Attributes
    ----------
    highpass_hz : float or None
        2nd-order Butterworth high-pass corner.
    trim_silence : bool
        Cut leading / trailing silence, keeping ``trim_keep_s`` of it.
    trim_keep_s : float
    downmix : {"bs775", "legacy"}
        How a source with more channels than a rendition is folded down: ``"bs775"``
        (ITU-R BS.775 from the probed layout, LFE dropped; the default) or ``"legacy"``
        (Pure Sound 0.1: mono averages every channel, stereo keeps channel 0).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    highpass_hz: float | None = Field(default=None, gt=0, le=1000)
    trim_silence: bool = False
    trim_keep_s: float = Field(default=0.1, ge=0, le=5)
    downmix: Literal["bs775", "legacy"] = "bs775"


class RoomToneRule(BaseModel):
    """Head / tail room tone a delivery wants (ACX), reported per file.

    Attributes
    ----------
    head_s, tail_s : tuple of float
        Accepted (min, max) seconds of leading / trailing room tone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    head_s: tuple[float, float] = (0.5, 1.0)
    tail_s: tuple[float, float] = (1.0, 5.0)


class Preset(BaseModel):
    """A delivery profile: validation limits, loudness target, processing, renditions.

    Attributes
    ----------
    name : str
        Lower-case slug; also the Prefect flow's name.
    version : str
        Enters every cache key and lineage row.
    description, standard : str
        What it is for, and the public specification it follows.
    validation : ValidationLimits
    loudness : LoudnessTarget
    processing : ProcessingOptions
    renditions : list of Rendition
        At least one; names unique.
    lossless_archive : bool
        No processing; renditions must be lossless and are verified bit-exact.
    room_tone : RoomToneRule or None
    output_naming : str
        Folder name of a source's outputs: a template of :data:`NAMING_FIELDS` (``{stem}``,
        ``{sha8}``, ``{sha16}``, ``{preset}``, ``{version}``) and slug characters, checked
        when the preset loads (:func:`check_output_naming`); see :meth:`output_folder`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Slug
    version: VersionSlug
    description: str = ""
    standard: str = ""
    validation: ValidationLimits = ValidationLimits()
    loudness: LoudnessTarget = LoudnessTarget()
    processing: ProcessingOptions = ProcessingOptions()
    renditions: list[Rendition] = Field(min_length=1)
    lossless_archive: bool = False
    room_tone: RoomToneRule | None = None
    output_naming: str = "{stem}-{sha8}"

    @model_validator(mode="after")
    def _check(self) -> Preset:
        names = [r.name for r in self.renditions]
        if len(set(names)) != len(names):
            raise ValueError(f"rendition names must be unique, got {names}")
        if self.lossless_archive and not all(r.encoder.lossless for r in self.renditions):
            raise ValueError("lossless_archive presets take only flac / wav renditions")
        return self

    @field_validator("output_naming")
    @classmethod
    def _naming(cls, value: str) -> str:
        return check_output_naming(value)

    def summary(self) -> str:
        """str: what the preset delivers, in one line: target, ceiling and renditions (for the UI)."""
        loud = self.loudness
        if loud.target_lufs is not None:
            level = f"{loud.target_lufs:g} LUFS +-{loud.tolerance_lu:g} LU" + (" as played" if loud.dual_mono else "")
        elif loud.target_rms_dbfs is not None:
            level = f"RMS {loud.target_rms_dbfs:g} dBFS"
        else:
            level = "level unchanged"
        ceiling = "" if loud.ceiling_dbtp is None else f", true peak <= {loud.ceiling_dbtp:g} dBTP"
        parts = []
        for r in self.renditions:
            e = r.encoder
            rate = "source rate" if r.source_format else f"{e.sample_rate_hz / 1000:g} kHz"
            channels = "source channels" if r.source_format else ("mono" if e.channels == 1 else "stereo")
            quality = (f"{e.bitrate_kbps} kbps" if e.bitrate_kbps and not e.lossless
                       else f"V{e.vbr_quality}" if e.vbr_quality is not None else f"{e.bit_depth}-bit")
            codec = {"opus": "Opus"}.get(e.codec, e.codec.upper())
            parts.append(f"{r.name} ({codec} {quality}, {rate}, {channels})")
        return f"{level}{ceiling}; renditions: {', '.join(parts)}"

    def output_folder(self, source_name: str, sha256: str) -> str:
        """The folder of one source's outputs, relative to the output root.

        Parameters
        ----------
        source_name : str
            The source's file name (any bytes; reduced by :func:`safe_stem`).
        sha256 : str
            The source's content hash (hex).

        Returns
        -------
        str
            ``{preset name}/{output_naming filled in}``: slug characters only, never ``..``.
        """
        values = {"stem": safe_stem(source_name), "sha8": sha256[:8], "sha16": sha256[:16],
                  "preset": self.name, "version": self.version}
        folder = _NAMING_TOKEN.sub(lambda m: values[m.group(1)], self.output_naming)
        return f"{self.name}/{folder}"

    @property
    def fingerprint(self) -> str:
        """str: first 16 hex digits of the SHA-256 of the preset's canonical JSON."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _mp3(kbps: int, rate: int = 44100, channels: int = 2) -> EncoderSettings:
    return EncoderSettings(codec="mp3", bitrate_kbps=kbps, sample_rate_hz=rate, channels=channels)


def _opus(kbps: int, channels: int) -> EncoderSettings:
    return EncoderSettings(codec="opus", bitrate_kbps=kbps, sample_rate_hz=48000, channels=channels)


BUILTIN_PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset(
        name="podcast", version="1",
        description="Spoken-word podcast episodes for Apple Podcasts, Spotify and RSS.",
        standard="Apple Podcasts audio requirements: -16 LUFS +-1 LU, true peak <= -1 dBTP",
        loudness=LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0),
        renditions=[Rendition(name="mp3-128k", encoder=_mp3(128)),
                    Rendition(name="opus-48k-mono", encoder=_opus(48, 1))],
    ),
    Preset(
        name="music-streaming", version="1",
        description="Music masters normalised for streaming services.",
        standard="Streaming reference level -14 LUFS +-1 LU, true peak <= -1 dBTP (AES TD1008 s. 5)",
        loudness=LoudnessTarget(target_lufs=-14.0, tolerance_lu=1.0, ceiling_dbtp=-1.0),
        renditions=[Rendition(name="aac-256k", encoder=EncoderSettings(codec="aac", bitrate_kbps=256,
                                                                       sample_rate_hz=44100, channels=2)),
                    Rendition(name="opus-160k", encoder=_opus(160, 2)),
                    Rendition(name="mp3-320k", encoder=_mp3(320))],
    ),
    Preset(
        name="audiobook-acx", version="1",
        description="Audiobook chapters for ACX / Audible.",
        standard=("ACX audio submission requirements: RMS -23 to -18 dBFS, peak <= -3 dBFS, noise floor "
                  "<= -60 dBFS, MP3 192 kbps CBR 44.1 kHz, <= 120 min per file, room tone 0.5-1 s / 1-5 s"),
        validation=ValidationLimits(duration_max_s=120 * 60.0),
        loudness=LoudnessTarget(target_lufs=None, target_rms_dbfs=-20.0, rms_range_dbfs=(-23.0, -18.0),
                                ceiling_dbtp=-3.0, sample_peak_max_dbfs=-3.0, noise_floor_max_dbfs=-60.0),
        renditions=[Rendition(name="mp3-192k-mono", encoder=_mp3(192, channels=1))],
        room_tone=RoomToneRule(),
    ),
    Preset(
        name="broadcast-r128", version="1",
        description="Broadcast delivery to EBU R 128.",
        standard="EBU R 128 (2020): -23 LUFS +-0.5 LU, true peak <= -1 dBTP",
        loudness=LoudnessTarget(target_lufs=-23.0, tolerance_lu=0.5, ceiling_dbtp=-1.0),
        renditions=[Rendition(name="wav-48k-24bit", encoder=EncoderSettings(codec="wav", bit_depth=24,
                                                                            sample_rate_hz=48000, channels=2))],
    ),
    Preset(
        name="archive-flac", version="1",
        description="Lossless archive copy: no processing, verified bit-exact.",
        standard="FLAC (RFC 9639); bit-exactness by SHA-256 of decoded samples",
        validation=ValidationLimits(channels_max=2),
        loudness=LoudnessTarget(target_lufs=None, ceiling_dbtp=None),
        renditions=[Rendition(name="flac", source_format=True,
                              encoder=EncoderSettings(codec="flac", bit_depth=24, sample_rate_hz=48000))],
        lossless_archive=True,
    ),
    Preset(
        name="voice", version="1",
        description="Speech for voice apps and low-bandwidth streams.",
        standard="AES TD1008 (2021): -18 LUFS for speech, true peak <= -1 dBTP",
        loudness=LoudnessTarget(target_lufs=-18.0, tolerance_lu=1.0, ceiling_dbtp=-1.0),
        processing=ProcessingOptions(highpass_hz=80.0, trim_silence=True),
        renditions=[Rendition(name="opus-32k-mono", encoder=_opus(32, 1))],
    ),
]}


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_preset_file(path: str | os.PathLike) -> Preset:
    """Load one YAML preset.

    Parameters
    ----------
    path : str or path-like
        A YAML mapping with the fields of :class:`Preset`.

    Returns
    -------
    Preset

    Raises
    ------
    PresetError
        Naming the file and the field path, e.g.
        ``"radio.yaml: renditions.0.encoder.bitrate_kbps: Input should be greater than 0"``.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise PresetError(f"{p.name}: cannot read YAML: {err}") from err
    if not isinstance(data, dict):
        raise PresetError(f"{p.name}: (top level): expected a mapping of preset fields, got {type(data).__name__}")
    try:
        return Preset.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in err.errors())
        raise PresetError(f"{p.name}: {problems}") from err


def load_presets(presets_dir: str | os.PathLike | None = None) -> dict[str, Preset]:
    """Built-in presets plus every ``*.yaml`` / ``*.yml`` in a folder (a user preset may replace a built-in).

    Parameters
    ----------
    presets_dir : str or path-like, optional

    Returns
    -------
    dict of str to Preset

    Raises
    ------
    PresetError
        For the first invalid file (naming the file and field), or a folder that does not exist.
    """
    presets = dict(BUILTIN_PRESETS)
    if presets_dir is None:
        return presets
    folder = Path(presets_dir)
    if not folder.is_dir():
        raise PresetError(f"{folder}: presets folder does not exist")
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        preset = load_preset_file(path)
        presets[preset.name] = preset
    return presets
