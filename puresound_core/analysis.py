"""Content analysis in the same streaming pass as loudness: what is this audio?

From one pass over the decoded blocks:

* content class (speech / music / silence / mixed) with the features that decided it;
* silence ratio, leading and trailing silence (10 ms frames below a threshold);
* noise floor (dBFS), DC offset per channel;
* effective bandwidth in Hz (spots upsampled or low-passed sources);
* tempo for music (librosa's autocorrelation tempo estimator).

Speech vs music
---------------
The programme is cut into ~20 s segments. Each segment gets two classic features:

* low-energy ratio: the share of 50 ms frames whose RMS is under half the RMS of the
  surrounding second. Speech pauses between syllables and phrases; music rarely does
  (Scheirer & Slaney, "Construction and evaluation of a robust multifeature speech/music
  discriminator", ICASSP 1997, feature "percentage of low-energy frames").
* pulse clarity: the highest normalised autocorrelation of the onset-strength envelope
  at lags of 0.25-2 s (30-240 BPM). Music has a beat; speech onsets are irregular
  (Lartillot et al., "Multi-feature modeling of pulse clarity", ISMIR 2008).

A segment is speech when ``(ler - 0.2) / 0.1 + (0.3 - pulse) / 0.15 > 0``, music otherwise,
silence when under 10 % of it is above the silence threshold. The programme is speech or
music when at least 75 % of its non-silent segments agree, mixed otherwise, silence when
every segment is silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import librosa
import numpy as np
import soxr
from pydantic import BaseModel, ConfigDict

from .audio import ProbeResult, iter_blocks, probe
from .loudness import LoudnessMeter, LoudnessReport, LoudnessSeries
from .specs import ValidationLimits
from .validation import ValidationReport, validate_file

ContentClass = Literal["speech", "music", "silence", "mixed"]

FRAME_S = 0.010            # silence / energy frame
SEGMENT_S = 20.0           # classification segment
FEATURE_RATE_HZ = 16000    # onset-envelope analysis rate
_N_FFT = 512
_HOP = 256
_N_MELS = 64
_SPECTRUM_N_FFT = 4096
_MAJORITY = 0.75
_TEMPO_EXCERPT_S = 120.0


class ContentReport(BaseModel):
    """What the programme contains.

    Attributes
    ----------
    content_class : {"speech", "music", "silence", "mixed"}
    decided_by : str
        The features and thresholds behind ``content_class``, in words.
    speech_segment_ratio : float
        Share of non-silent ~20 s segments classified as speech (0 when all are silent).
    low_energy_ratio, pulse_clarity : float
        Medians over non-silent segments (see module docstring).
    segment_classes : str
        One letter a segment: ``S`` speech, ``M`` music, ``-`` silence.
    silence_ratio : float
        Share of 10 ms frames whose RMS is under ``silence_threshold_dbfs``.
    leading_silence_s, trailing_silence_s : float
    silence_threshold_dbfs : float
    noise_floor_dbfs : float or None
        5th percentile of the 50 ms RMS over frames that are not digital zero;
        ``None`` when every frame is digital zero.
    dc_offset : list of float
        Mean sample value per channel (full scale = 1).
    bandwidth_hz : float
        Highest frequency where the long-term spectrum is within 70 dB of its maximum.
    tempo_bpm : float or None
        Estimated for music and mixed programmes of at least 5 s.
    """

    model_config = ConfigDict(frozen=True)

    content_class: ContentClass
    decided_by: str
    speech_segment_ratio: float
    low_energy_ratio: float
    pulse_clarity: float
    segment_classes: str
    silence_ratio: float
    leading_silence_s: float
    trailing_silence_s: float
    silence_threshold_dbfs: float
    noise_floor_dbfs: float | None
    dc_offset: list[float]
    bandwidth_hz: float
    tempo_bpm: float | None


class AnalysisReport(BaseModel):
    """Loudness and content of one programme.

    Attributes
    ----------
    loudness : LoudnessReport
    content : ContentReport
    probe : ProbeResult or None
        Set by :func:`analyze_file`.
    series : LoudnessSeries or None
        Momentary / short-term loudness over time (for the HTML report).
    """

    model_config = ConfigDict(frozen=True)

    loudness: LoudnessReport
    content: ContentReport
    probe: ProbeResult | None = None
    series: LoudnessSeries | None = None


class _Framer:
    """Cuts a stream into frames of ``size`` every ``hop`` samples, across block borders."""

    def __init__(self, size: int, hop: int):
        self.size, self.hop = size, hop
        self._buf = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._buf, samples]) if self._buf.size else samples
        if buf.size < self.size:
            self._buf = buf
            return np.empty((0, self.size), dtype=np.float32)
        count = 1 + (buf.size - self.size) // self.hop
        frames = np.lib.stride_tricks.sliding_window_view(buf, self.size)[::self.hop][:count]
        self._buf = buf[count * self.hop:].copy()
        return frames


class ContentAnalyzer:
    """Streaming content analysis; feed blocks with :meth:`process`, then call :meth:`report`.

    Parameters
    ----------
    sample_rate_hz : int > 0
    channels : int > 0
    silence_threshold_dbfs : float
        10 ms frames with RMS under this level count as silence.

    References
    ----------
    Scheirer & Slaney, ICASSP 1997; Lartillot, Eerola, Toiviainen & Fornari, ISMIR 2008;
    librosa ``feature.tempo`` (Ellis, "Beat tracking by dynamic programming", 2007).
    """

    def __init__(self, *, sample_rate_hz: int, channels: int, silence_threshold_dbfs: float = -60.0):
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.silence_threshold_dbfs = silence_threshold_dbfs
        frame = max(1, round(sample_rate_hz * FRAME_S))
        self._energy_framer = _Framer(frame, frame)
        self._frame_ms: list[np.ndarray] = []           # mean square per 10 ms frame
        self._spectrum_framer = _Framer(_SPECTRUM_N_FFT, _SPECTRUM_N_FFT)
        self._spectrum_window = np.hanning(_SPECTRUM_N_FFT).astype(np.float32)
        self._power_sum = np.zeros(_SPECTRUM_N_FFT // 2 + 1)
        self._power_frames = 0
        self._dc_sum = np.zeros(channels)
        self._samples = 0
        self._resampler = soxr.ResampleStream(sample_rate_hz, FEATURE_RATE_HZ, 1, dtype="float32",
                                              quality="LQ")
        self._stft_framer = _Framer(_N_FFT, _HOP)
        self._stft_window = np.hanning(_N_FFT + 1)[:-1].astype(np.float32)
        self._mel = librosa.filters.mel(sr=FEATURE_RATE_HZ, n_fft=_N_FFT, n_mels=_N_MELS).astype(np.float32)
        self._last_mel_db: np.ndarray | None = None
        self._onset: list[np.ndarray] = []
        self._report: ContentReport | None = None

    def process(self, block: np.ndarray) -> None:
        """Add the next block.

        Parameters
        ----------
        block : np.ndarray [shape=(channels, n)], float32, finite
        """
        if block.shape[1] == 0:
            return
        self._samples += block.shape[1]
        self._dc_sum += block.sum(axis=1, dtype=np.float64)
        frames = self._energy_framer.push(np.mean(np.square(block), axis=0, dtype=np.float32))
        if frames.size:
            self._frame_ms.append(frames.mean(axis=1))
        mono = block.mean(axis=0) if self.channels > 1 else block[0]
        spectra = self._spectrum_framer.push(mono)
        if spectra.size:
            power = np.abs(np.fft.rfft(spectra * self._spectrum_window, axis=1)) ** 2
            self._power_sum += power.sum(axis=0)
            self._power_frames += power.shape[0]
        self._onset_from(self._resampler.resample_chunk(mono))

    def _onset_from(self, samples: np.ndarray) -> None:
        frames = self._stft_framer.push(samples.astype(np.float32, copy=False))
        if not frames.size:
            return
        power = np.abs(np.fft.rfft(frames * self._stft_window, axis=1)) ** 2
        mel_db = 10.0 * np.log10(power @ self._mel.T + 1e-10)          # (frames, mels)
        if self._last_mel_db is not None:
            mel_db_prev = np.vstack([self._last_mel_db[None], mel_db])
        else:
            mel_db_prev = mel_db
        if mel_db_prev.shape[0] > 1:
            # librosa.onset.onset_strength: mean over bands of the positive spectral difference.
            self._onset.append(np.maximum(0.0, np.diff(mel_db_prev, axis=0)).mean(axis=1))
        self._last_mel_db = mel_db[-1]

    def report(self) -> ContentReport:
        """Features and class of everything fed so far.

        Returns
        -------
        ContentReport
            The same object on every call: the first call flushes the feature resampler,
            after which :meth:`process` must not be called again.
        """
        if self._report is not None:
            return self._report
        self._onset_from(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        frame_ms = np.concatenate(self._frame_ms) if self._frame_ms else np.zeros(0)
        onset = np.concatenate(self._onset) if self._onset else np.zeros(0)
        with np.errstate(divide="ignore"):
            frame_db = 10.0 * np.log10(frame_ms)
        silent = frame_db < self.silence_threshold_dbfs
        n = silent.size
        leading = int(np.argmin(silent)) if n and not silent.all() else n
        trailing = int(np.argmin(silent[::-1])) if n and not silent.all() else n

        # Noise floor: 5th percentile of 50 ms RMS, ignoring digital zero.
        five = frame_ms[: frame_ms.size // 5 * 5].reshape(-1, 5).mean(axis=1) if frame_ms.size >= 5 else frame_ms
        nonzero = five[five > 1e-14]
        noise_floor = float(10.0 * np.log10(np.percentile(nonzero, 5))) if nonzero.size else None

        segments = self._segments(frame_ms, onset, silent)
        speech = [s for s in segments if s[2] == "S"]
        music = [s for s in segments if s[2] == "M"]
        active = speech + music
        letters = "".join(s[2] for s in segments)
        if not active:
            content_class: ContentClass = "silence"
            ler = pulse = 0.0
            decided_by = (f"every segment is over 90 % below {self.silence_threshold_dbfs:g} dBFS "
                          f"(silence ratio {silent.mean() if n else 1.0:.2f})")
        else:
            ler = float(np.median([s[0] for s in active]))
            pulse = float(np.median([s[1] for s in active]))
            share = len(speech) / len(active)
            if share >= _MAJORITY:
                content_class = "speech"
            elif share <= 1 - _MAJORITY:
                content_class = "music"
            else:
                content_class = "mixed"
            decided_by = (f"{len(speech)} of {len(active)} non-silent segments speech-like "
                          f"(median low-energy ratio {ler:.2f} vs 0.20, median pulse clarity "
                          f"{pulse:.2f} vs 0.30); {_MAJORITY:.0%} needed for one class")

        tempo = None
        if content_class in ("music", "mixed") and onset.size * _HOP / FEATURE_RATE_HZ >= 5.0:
            keep = int(_TEMPO_EXCERPT_S * FEATURE_RATE_HZ / _HOP)
            mid = max(0, (onset.size - keep) // 2)
            excerpt = onset[mid:mid + keep]
            tempo = float(librosa.feature.tempo(onset_envelope=excerpt, sr=FEATURE_RATE_HZ,
                                                hop_length=_HOP)[0])
        self._report = ContentReport(
            content_class=content_class, decided_by=decided_by,
            speech_segment_ratio=len(speech) / len(active) if active else 0.0,
            low_energy_ratio=ler, pulse_clarity=pulse, segment_classes=letters,
            silence_ratio=float(silent.mean()) if n else 1.0,
            leading_silence_s=leading * FRAME_S, trailing_silence_s=trailing * FRAME_S,
            silence_threshold_dbfs=self.silence_threshold_dbfs, noise_floor_dbfs=noise_floor,
            dc_offset=[float(v) for v in (self._dc_sum / max(self._samples, 1))],
            bandwidth_hz=self._bandwidth_hz(), tempo_bpm=tempo,
        )
        return self._report

    def _segments(self, frame_ms: np.ndarray, onset: np.ndarray, silent: np.ndarray) -> list[tuple]:
        """(low-energy ratio, pulse clarity, letter) for each ~20 s segment."""
        total_s = frame_ms.size * FRAME_S
        count = max(1, round(total_s / SEGMENT_S))
        out = []
        for i in range(count):
            e = frame_ms[i * frame_ms.size // count:(i + 1) * frame_ms.size // count]
            o = onset[i * onset.size // count:(i + 1) * onset.size // count]
            s = silent[i * silent.size // count:(i + 1) * silent.size // count]
            if e.size < 10 or (1.0 - s.mean()) < 0.10:
                out.append((0.0, 0.0, "-"))
                continue
            rms = np.sqrt(e[: e.size // 5 * 5].reshape(-1, 5).mean(axis=1)) if e.size >= 5 else np.sqrt(e)
            local = np.convolve(rms, np.ones(20) / 20, mode="same")[: rms.size]
            ler = float((rms < 0.5 * local).mean())
            pulse = _pulse_clarity(o)
            score = (ler - 0.2) / 0.1 + (0.3 - pulse) / 0.15
            out.append((ler, pulse, "S" if score > 0 else "M"))
        return out

    def _bandwidth_hz(self) -> float:
        if self._power_frames == 0:
            return self.sample_rate_hz / 2.0
        power = self._power_sum / self._power_frames
        bins_per_200hz = max(1, round(200.0 * _SPECTRUM_N_FFT / self.sample_rate_hz))
        smooth = np.convolve(power, np.ones(bins_per_200hz) / bins_per_200hz, mode="same")
        if smooth.max() <= 0:
            return 0.0
        level = 10.0 * np.log10(smooth / smooth.max() + 1e-30)
        above = np.nonzero(level > -70.0)[0]
        return float(above[-1] * self.sample_rate_hz / _SPECTRUM_N_FFT)


def _pulse_clarity(onset: np.ndarray) -> float:
    """Highest normalised autocorrelation of an onset envelope at 0.25-2 s lags."""
    if onset.size < 8:
        return 0.0
    centred = onset - onset.mean()
    ac = librosa.autocorrelate(centred)
    if ac[0] <= 0:
        return 0.0
    ac = ac / ac[0]
    lags_s = np.arange(ac.size) * _HOP / FEATURE_RATE_HZ
    window = (lags_s > 0.25) & (lags_s < 2.0)
    return float(ac[window].max()) if window.any() else 0.0


def analyze_blocks(
    blocks: Iterable[np.ndarray],
    *,
    sample_rate_hz: int,
    channels: int,
    layout: str | None = None,
    silence_threshold_dbfs: float = -60.0,
) -> AnalysisReport:
    """Loudness, LRA, true peak and content features of a block stream, in one pass.

    Parameters
    ----------
    blocks : iterable of np.ndarray [shape=(channels, n)], float32
    sample_rate_hz : int > 0
    channels : int > 0
    layout : str, optional
        FFmpeg channel layout name (for BS.1770-4 channel weights).
    silence_threshold_dbfs : float

    Returns
    -------
    AnalysisReport

    Raises
    ------
    InvalidAudioError
        If a block holds NaN / inf (rule ``finite_samples``).

    References
    ----------
    ITU-R BS.1770-4; EBU Tech 3341, 3342; see :class:`ContentAnalyzer`.
    """
    analyzer = _Analyzer(sample_rate_hz=sample_rate_hz, channels=channels, layout=layout,
                         silence_threshold_dbfs=silence_threshold_dbfs)
    for block in blocks:
        analyzer.process(block)
    return analyzer.report()


class _Analyzer:
    """The loudness meter and the content analyser fed together: what an analysis pass runs."""

    def __init__(self, *, sample_rate_hz: int, channels: int, layout: str | None, silence_threshold_dbfs: float):
        self.meter = LoudnessMeter(sample_rate_hz=sample_rate_hz, channels=channels, layout=layout)
        self.content = ContentAnalyzer(sample_rate_hz=sample_rate_hz, channels=channels,
                                       silence_threshold_dbfs=silence_threshold_dbfs)

    def process(self, block: np.ndarray) -> None:
        self.meter.process(block)  # checks finiteness first
        self.content.process(block)

    def report(self, probe: ProbeResult | None = None) -> AnalysisReport:
        return AnalysisReport(loudness=self.meter.report(), content=self.content.report(), probe=probe,
                              series=self.meter.series())


class Inspection(BaseModel):
    """A source validated and analysed in one decode.

    Attributes
    ----------
    validation : ValidationReport
    analysis : AnalysisReport or None
        ``None`` when a validation rule failed.
    """

    model_config = ConfigDict(frozen=True)

    validation: ValidationReport
    analysis: AnalysisReport | None = None


def inspect_file(path, limits: ValidationLimits | None = None, *,
                 silence_threshold_dbfs: float = -60.0) -> Inspection:
    """Validate and analyse a file in the same decode: every rule, loudness, true peak and content.

    Parameters
    ----------
    path : str or path-like
    limits : ValidationLimits, optional
    silence_threshold_dbfs : float

    Returns
    -------
    Inspection
        Never raises for bad input: a file that fails a rule has ``analysis=None``.

    References
    ----------
    ITU-R BS.1770-4; EBU Tech 3341, 3342; :func:`puresound_core.validation.validate_file`.
    """
    state: dict = {}

    def observe(info: ProbeResult):
        state["probe"] = info
        state["analyzer"] = _Analyzer(sample_rate_hz=info.sample_rate_hz, channels=info.channels,
                                      layout=info.channel_layout, silence_threshold_dbfs=silence_threshold_dbfs)
        return state["analyzer"].process

    validation = validate_file(path, limits, observe=observe)
    if not validation.passed or "analyzer" not in state:
        return Inspection(validation=validation)
    return Inspection(validation=validation, analysis=state["analyzer"].report(state["probe"]))


def analyze_file(path, *, timeout_s: float | None = None, silence_threshold_dbfs: float = -60.0) -> AnalysisReport:
    """Probe, decode and analyse a file in one streaming pass.

    Parameters
    ----------
    path : str or path-like
    timeout_s : float, optional
        Decode deadline (see :func:`puresound_core.audio.iter_blocks`).
    silence_threshold_dbfs : float

    Returns
    -------
    AnalysisReport
        With ``probe`` set.

    Raises
    ------
    InvalidAudioError, DecodeTimeoutError
        When the file cannot be decoded, or holds NaN / inf.
    """
    info = probe(path)
    analyzer = _Analyzer(sample_rate_hz=info.sample_rate_hz, channels=info.channels, layout=info.channel_layout,
                         silence_threshold_dbfs=silence_threshold_dbfs)
    for block in iter_blocks(path, timeout_s=timeout_s, stream_index=info.stream_index):
        analyzer.process(block)
    return analyzer.report(info)

