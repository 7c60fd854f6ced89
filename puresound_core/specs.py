"""What a preset asks for, as plain models: encoder settings, validation limits, loudness target.

Only pydantic here (no numpy, no PyAV), so that loading and listing presets costs nothing;
the modules that act on these models re-export them (``audio.EncoderSettings``,
``validation.ValidationLimits``, ``render.LoudnessTarget``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Codec = Literal["mp3", "aac", "opus", "flac", "wav"]

#: codec -> (FFmpeg encoder, muxer, file extension)
CODECS: dict[str, tuple[str, str, str]] = {
    "mp3": ("libmp3lame", "mp3", "mp3"),
    "aac": ("aac", "ipod", "m4a"),
    "opus": ("libopus", "ogg", "opus"),
    "flac": ("flac", "flac", "flac"),
    "wav": ("pcm_s16le", "wav", "wav"),
}
OPUS_RATES_HZ = (8000, 12000, 16000, 24000, 48000)


class EncoderSettings(BaseModel):
    """How one rendition is encoded.

    Attributes
    ----------
    codec : {"mp3", "aac", "opus", "flac", "wav"}
        MP3 via libmp3lame, AAC-LC in M4A via FFmpeg's native encoder, Opus in Ogg via
        libopus, FLAC, PCM WAV.
    bitrate_kbps : int or None
        Constant / target bitrate of lossy codecs (required for AAC and Opus, and for
        MP3 unless ``vbr_quality`` is set); ignored by FLAC and WAV.
    vbr_quality : int in [0, 9] or None
        MP3 only: LAME VBR quality (``-V``; 0 is best). Overrides ``bitrate_kbps``.
    sample_rate_hz : int
        Output rate; Opus allows 8/12/16/24/48 kHz.
    channels : {1, 2}
    bit_depth : {16, 24}
        FLAC and WAV sample depth.

    References
    ----------
    FFmpeg codecs documentation (libmp3lame, aac, libopus, flac); RFC 7845 (Ogg Opus).
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    codec: Codec
    bitrate_kbps: int | None = Field(default=None, gt=0, le=640)
    vbr_quality: int | None = Field(default=None, ge=0, le=9)
    sample_rate_hz: int = Field(default=48000, ge=8000, le=192000)
    channels: Literal[1, 2] = 2
    bit_depth: Literal[16, 24] = 16

    @model_validator(mode="after")
    def _check(self) -> EncoderSettings:
        if self.codec == "opus" and self.sample_rate_hz not in OPUS_RATES_HZ:
            raise ValueError(f"opus needs sample_rate_hz in {OPUS_RATES_HZ}, got {self.sample_rate_hz}")
        if self.codec in ("aac", "opus") and self.bitrate_kbps is None:
            raise ValueError(f"{self.codec} needs bitrate_kbps")
        if self.codec == "mp3" and self.bitrate_kbps is None and self.vbr_quality is None:
            raise ValueError("mp3 needs bitrate_kbps (CBR) or vbr_quality (VBR)")
        if self.vbr_quality is not None and self.codec != "mp3":
            raise ValueError("vbr_quality applies to mp3 only")
        return self

    @property
    def extension(self) -> str:
        """File extension without the dot (``"mp3"``, ``"m4a"``, ``"opus"``, ``"flac"``, ``"wav"``)."""
        return CODECS[self.codec][2]

    @property
    def lossless(self) -> bool:
        """True for FLAC and WAV."""
        return self.codec in ("flac", "wav")


class ValidationLimits(BaseModel):
    """Limits of the validation rules; presets set their own.

    Attributes
    ----------
    duration_min_s, duration_max_s : float
    file_size_max_bytes : int
    sample_rate_min_hz, sample_rate_max_hz : int
    channels_max : int
    silence_peak_dbfs : float
        A file whose sample peak is at or under this is digital silence (-90 dBFS is just
        under one 16-bit LSB).
    clipping_ratio_max : float
        Largest tolerated share of clipped samples.
    declared_duration_tolerance_s : float
        Largest tolerated difference between declared and decoded duration.
    decode_timeout_s : float
        Wall-clock deadline of the validating decode.
    decode_errors_max : int
        Largest tolerated number of FFmpeg errors / warnings logged during the validating
        decode (benign messages excluded).
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    duration_min_s: float = Field(default=1.0, ge=0, description="Shortest accepted programme (s)")
    duration_max_s: float = Field(default=6 * 3600.0, gt=0, description="Longest accepted programme (s)")
    file_size_max_bytes: int = Field(default=8 * 1024**3, gt=0, description="Largest accepted file (bytes)")
    sample_rate_min_hz: int = Field(default=8000, gt=0)
    sample_rate_max_hz: int = Field(default=192000, gt=0)
    channels_max: int = Field(default=12, ge=1, description="Most channels accepted (12: 7.1.4)")
    silence_peak_dbfs: float = Field(default=-90.0, le=0)
    clipping_ratio_max: float = Field(default=0.01, ge=0, le=1)
    declared_duration_tolerance_s: float = Field(default=0.5, ge=0)
    decode_timeout_s: float = Field(default=600.0, gt=0)
    decode_errors_max: int = Field(default=0, ge=0, description="Tolerated FFmpeg decode errors/warnings")


class LoudnessTarget(BaseModel):
    """Loudness a rendition must meet.

    Attributes
    ----------
    target_lufs : float or None
        Integrated loudness to normalise to, as played (see ``dual_mono``); ``None`` leaves
        the level alone.
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
    dual_mono : bool
        Measure mono renditions as dual-mono (the channel counted twice, +3.01 LU): how a
        mono file sounds on two loudspeakers. ``False`` measures the single channel.
    max_gain_db : float
        Largest gain the preset applies to reach its target (rule ``gain_max``): a source
        that needs more is mostly noise floor and is rejected before rendering.
    max_gain_reduction_db : float or None
        Most peak limiting (dB of gain reduction) the preset accepts; predicted before
        rendering (rule ``max_gain_reduction``) and checked on the render
        (verification check ``gain_reduction``). ``None``: no cap.

    References
    ----------
    EBU R 128 (2020): -23 LUFS +-0.5 LU (+-1 LU live), -1 dBTP; AES TD1008 and Apple Podcasts
    (-16 LUFS, -1 dBTP); FFmpeg ebur128 filter ``dualmono`` option; libebur128 ``EBUR128_DUAL_MONO``.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    target_lufs: float | None = Field(default=None, le=0)
    tolerance_lu: float = Field(default=1.0, gt=0)
    ceiling_dbtp: float | None = Field(default=-1.0, le=0)
    target_rms_dbfs: float | None = Field(default=None, le=0)
    rms_range_dbfs: tuple[float, float] | None = None
    sample_peak_max_dbfs: float | None = Field(default=None, le=0)
    noise_floor_max_dbfs: float | None = Field(default=None, le=0)
    dual_mono: bool = True
    max_gain_db: float = Field(default=40.0, gt=0, le=120)
    max_gain_reduction_db: float | None = Field(default=20.0, gt=0, le=60)

    @model_validator(mode="after")
    def _one_level_target(self) -> LoudnessTarget:
        if self.target_lufs is not None and self.target_rms_dbfs is not None:
            raise ValueError("set target_lufs or target_rms_dbfs, not both")
        return self
