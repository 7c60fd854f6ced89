"""Probe, block-wise decode and streaming encode: the only module that opens media files.

Decoding and encoding go through PyAV (FFmpeg in-process; its wheels carry libmp3lame,
libopus, the native AAC and FLAC encoders). No system ``ffmpeg`` or ``ffprobe`` is used.

Signals are ``np.ndarray [shape=(channels, samples)]``, float32, nominally in [-1, 1];
long signals travel as iterators of such blocks (see :func:`iter_blocks`).

FFmpeg runs in this process: a native crash in a demuxer or decoder kills it. Untrusted
media is probed and first decoded through :mod:`puresound_core.isolation` instead.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Literal, Self

import av
import av.logging
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import DecodeTimeoutError, EncodingError, InvalidAudioError
from .specs import CODECS as _CODECS
from .specs import Codec, EncoderSettings  # noqa: F401  (re-exported)

#: Default decode block length in samples (per channel): ~1.4 s at 48 kHz.
DEFAULT_BLOCK_SIZE = 1 << 16

#: libavcodec version string, recorded in lineage and cache keys.
FFMPEG_VERSION = ".".join(str(v) for v in av.library_versions["libavcodec"])


def check_audio(audio: np.ndarray, *, name: str = "audio") -> np.ndarray:
    """Check the house audio layout and return the signal as float32.

    Parameters
    ----------
    audio : np.ndarray [shape=(channels, samples)]
        Signal; any real floating dtype is accepted and converted to float32.
    name : str
        Name used in error messages.

    Returns
    -------
    np.ndarray [shape=(channels, samples)], float32

    Raises
    ------
    InvalidAudioError
        If ``audio`` is not 2-D, has no channel, or is not a real floating array.
    """
    if not isinstance(audio, np.ndarray) or audio.ndim != 2 or audio.shape[0] < 1:
        shape = getattr(audio, "shape", None)
        raise InvalidAudioError(f"{name}: expected shape (channels, samples), got {shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise InvalidAudioError(f"{name}: expected a floating dtype, got {audio.dtype}")
    return audio.astype(np.float32, copy=False)


class ProbeResult(BaseModel):
    """What a container declares about the audio stream it is judged and decoded on.

    The stream is chosen by :func:`select_audio_stream` (default disposition, else FFmpeg's
    best audio stream); :func:`iter_blocks` decodes the same one.

    Attributes
    ----------
    path : str
    file_size_bytes : int
    container : str
        FFmpeg demuxer name (``"wav"``, ``"ogg"``, ``"mp3"``, ``"mov,mp4,m4a,3gp,3g2,mj2"``...).
    codec : str
        FFmpeg decoder name (``"pcm_s16le"``, ``"vorbis"``, ``"mp3float"``...).
    sample_rate_hz, channels : int
    channel_layout : str
    declared_duration_s : float or None
        Duration the header declares (RIFF ``data`` size for WAV, else the container's);
        ``None`` when the container declares none.
    bit_depth : int or None
        Bits per sample of PCM / FLAC sources; ``None`` for lossy codecs.
    bitrate_kbps : float or None
    tags : dict of str to str
        Container and stream tags, keys lower-cased.
    integrity_issue : str or None
        A structural defect found without decoding (a truncated ``data`` chunk, a cut final
        MPEG frame, a cut or unterminated final Ogg page); ``None`` when none was found.
    stream_index : int
        Container index of the audio stream used (``0`` for single-stream files).
    audio_streams : int
        How many audio streams the container holds; only ``stream_index`` is judged.
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    path: str
    file_size_bytes: int
    container: str
    codec: str
    sample_rate_hz: int
    channels: int
    channel_layout: str
    declared_duration_s: float | None
    bit_depth: int | None
    bitrate_kbps: float | None
    tags: dict[str, str] = Field(default_factory=dict)
    integrity_issue: str | None = None
    stream_index: int = Field(default=0, ge=0)
    audio_streams: int = Field(default=1, ge=1)


class DecodeMessage(BaseModel):
    """A warning or error FFmpeg logged while a file was opened or decoded.

    Attributes
    ----------
    level : {"panic", "fatal", "error", "warning"}
    source : str
        The FFmpeg component that logged it (``"flac"``, ``"mp3float"``, ``"ogg"``...).
    text : str
    """

    model_config = ConfigDict(frozen=True)

    level: Literal["panic", "fatal", "error", "warning"]
    source: str
    text: str

    def __str__(self) -> str:
        return f"[{self.source}] {self.text}" if self.source else self.text


# --------------------------------------------------------------------------- probing


#: WAVE format tags whose ``data`` size / ``block_align`` is a sample count (Microsoft
#: RIFF/WAVE: WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT; for WAVE_FORMAT_EXTENSIBLE the
#: SubFormat GUID's first two bytes carry the same tag).
_WAVE_PCM_TAGS = (0x0001, 0x0003)
_WAVE_EXTENSIBLE = 0xFFFE
_KSDATAFORMAT_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def _riff_header(path: Path) -> dict | None:
    """Parse a RIFF/WAVE header: format, rate, channels, block align, ``fact`` and data bytes.

    Returns ``None`` for files that are not RIFF/WAVE. Follows the Microsoft RIFF spec
    (chunks are word-aligned); a ``data`` size of 0 or 0xFFFFFFFF (streamed WAV) is
    reported as undeclared. ``pcm`` is true only for PCM / IEEE-float data (format tag 1
    or 3, or WAVE_FORMAT_EXTENSIBLE with a PCM / float SubFormat): only then is
    ``data`` size / ``block_align`` a sample count. ``fact_samples`` is the ``fact``
    chunk's sample count (compressed formats: ADPCM, GSM 6.10, MPEG), when present.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        info: dict = {"pcm": False, "fact_samples": None}
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"fmt ":
                fmt = fh.read(min(chunk_size, 40))
                if len(fmt) >= 16:
                    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
                    if tag == _WAVE_EXTENSIBLE and len(fmt) >= 40 and fmt[26:40] == _KSDATAFORMAT_GUID_TAIL:
                        tag = struct.unpack("<H", fmt[24:26])[0]
                    info.update(format_tag=tag, pcm=tag in _WAVE_PCM_TAGS, sample_rate_hz=rate,
                                channels=channels, block_align=block_align, bits=bits)
            elif chunk_id == b"fact" and chunk_size >= 4:
                (info["fact_samples"],) = struct.unpack("<I", fh.read(4))
            elif chunk_id == b"data":
                present = size - (offset + 8)
                declared = None if chunk_size in (0, 0xFFFFFFFF) else chunk_size
                info.update(data_declared=declared, data_present=present)
                break
            offset += 8 + chunk_size + (chunk_size & 1)
        return info


def _ogg_tail_truncation(path: Path, *, tail_bytes: int = 1 << 17) -> str | None:
    """Describe a cut or unterminated final Ogg page, or return ``None`` when the tail is whole.

    Finds the first page header in the last ``tail_bytes`` from which a chain of pages
    reaches the end of the file (RFC 3533 s. 6: 27-byte header, segment table, body) and
    checks that the last page fits in the file and carries the end-of-stream flag (0x04),
    which every finished logical stream's last page sets. A cut Ogg file declares the
    shorter duration of its last granule position, so only this check catches it.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        start = max(0, size - tail_bytes)
        fh.seek(start)
        tail = fh.read()
    end = len(tail)

    def page_length(pos: int) -> int | None:
        if tail[pos:pos + 4] != b"OggS" or pos + 27 > end or tail[pos + 4] != 0:
            return None
        segments = tail[pos + 26]
        if pos + 27 + segments > end:
            return -1  # header itself cut
        return 27 + segments + sum(tail[pos + 27:pos + 27 + segments])

    pos = tail.find(b"OggS")
    while pos != -1:
        chain, last = pos, None
        while True:
            length = page_length(chain)
            if length is None:
                break
            if length < 0:
                return f"final Ogg page header is cut ({end - chain} bytes)"
            if chain + length > end:
                return f"final Ogg page has {end - chain} of {length} bytes"
            last, chain = chain, chain + length
            if chain == end:
                if not tail[last + 5] & 0x04:
                    return "final Ogg page lacks the end-of-stream flag"
                return None
        pos = tail.find(b"OggS", pos + 1)
    return None


def select_audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    """The audio stream a file is judged and decoded on.

    The audio stream with the *default* disposition (the first of them when several
    carry it, unless FFmpeg's best stream is among them), else FFmpeg's best audio stream
    (``av_find_best_stream``: default disposition, then frames seen while probing, then
    bitrate), else the first audio stream.

    Parameters
    ----------
    container : av.container.InputContainer

    Returns
    -------
    av.audio.stream.AudioStream or None
        ``None`` when the container holds no audio stream.

    References
    ----------
    FFmpeg ``av_find_best_stream`` (libavformat/avformat.c); Matroska ``FlagDefault``.
    """
    audio = list(container.streams.audio)
    if not audio:
        return None
    try:
        best = container.streams.best("audio")
    except (av.error.FFmpegError, ValueError):
        best = None
    defaults = [s for s in audio if s.disposition & av.stream.Disposition.default]
    if defaults:
        return best if best is not None and any(best.index == d.index for d in defaults) else defaults[0]
    return best if best is not None else audio[0]


# MPEG audio frame header tables (ISO/IEC 11172-3 and 13818-3), Layer III and II.
_MPEG_BITRATES_KBPS = {
    (1, 3): [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],
    (1, 2): [0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384],
    (2, 3): [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    (2, 2): [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
}
_MPEG_RATES_HZ = {3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000]}


def _flac_streaminfo(path: Path) -> dict | None:
    """Bits per sample and total samples from a native FLAC file's STREAMINFO block.

    Returns ``None`` for files that do not start with ``fLaC`` (FLAC format spec, RFC 9639 s. 8.2).
    """
    with path.open("rb") as fh:
        head = fh.read(42)
    if len(head) < 26 or head[:4] != b"fLaC" or (head[4] & 0x7F) != 0:
        return None
    info = head[8:]
    rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
    bits = (((info[12] & 0x01) << 4) | (info[13] >> 4)) + 1
    total = ((info[13] & 0x0F) << 32) | int.from_bytes(info[14:18], "big")
    return {"bits": bits, "total_samples": total or None, "sample_rate_hz": rate}


def _mpeg_frame_length(header: bytes) -> int | None:
    """Length in bytes of the MPEG-1/2/2.5 Layer II/III frame whose 4-byte header is given."""
    if len(header) < 4 or header[0] != 0xFF or (header[1] & 0xE0) != 0xE0:
        return None
    version_bits = (header[1] >> 3) & 3
    layer_bits = (header[1] >> 1) & 3
    if version_bits == 1 or layer_bits not in (1, 2):  # reserved version; Layer I unsupported
        return None
    layer = 3 if layer_bits == 1 else 2
    bitrate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 3
    if bitrate_index in (0, 15) or rate_index == 3:
        return None
    table_version = 1 if version_bits == 3 else 2
    bitrate = _MPEG_BITRATES_KBPS[(table_version, layer)][bitrate_index] * 1000
    rate = _MPEG_RATES_HZ[version_bits][rate_index]
    padding = (header[2] >> 1) & 1
    coefficient = 72 if (layer == 3 and table_version == 2) else 144
    return coefficient * bitrate // rate + padding


def _mpeg_tail_truncation(path: Path, *, tail_bytes: int = 16384) -> str | None:
    """Describe a cut final MPEG audio frame, or return ``None`` when the tail is whole.

    Walks the frame chain through the last ``tail_bytes`` of the file (after dropping an
    ID3v1 tag) and checks that the last frame's declared length fits in the file.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        start = max(0, size - tail_bytes)
        fh.seek(start)
        tail = fh.read()
    if len(tail) >= 128 and tail[-128:-125] == b"TAG":
        tail = tail[:-128]
    end = len(tail)
    for i in range(end - 4):
        length = _mpeg_frame_length(tail[i:i + 4])
        if not length:
            continue
        nxt = _mpeg_frame_length(tail[i + length:i + length + 4]) if i + length + 4 <= end else None
        if i + length < end and not nxt:
            continue  # a false sync: no frame follows where one must
        pos = i
        while True:
            length = _mpeg_frame_length(tail[pos:pos + 4])
            if not length:
                return None  # trailing non-audio data (e.g. an APE tag): not a cut frame
            if pos + length > end:
                return f"final MPEG frame has {end - pos} of {length} bytes"
            if pos + length == end:
                return None
            pos += length
    return None


def probe(path: str | os.PathLike) -> ProbeResult:
    """Read what the container declares about its audio stream, without decoding.

    Parameters
    ----------
    path : str or path-like
        Any file FFmpeg can demux. With several audio streams (a video, a multi-track
        MKA) the one :func:`select_audio_stream` picks is described; ``audio_streams``
        and ``stream_index`` say how many there are and which one that is.

    Returns
    -------
    ProbeResult
        ``declared_duration_s`` is, for WAV, the ``data`` size / ``block_align`` of PCM and
        IEEE-float data, else the ``fact`` chunk's sample count, else the container's
        duration; for native FLAC the STREAMINFO sample count; else the container's.

    Raises
    ------
    InvalidAudioError
        ``rule="decodable"`` when FFmpeg cannot open the file (empty, text, unknown format),
        ``rule="has_audio_stream"`` when it holds no audio stream, ``rule="sample_rate"``
        when the header declares a sample rate of 0 Hz.

    Notes
    -----
    This runs FFmpeg's demuxer in-process; probe untrusted files with
    :func:`puresound_core.isolation.probe_isolated`.

    References
    ----------
    FFmpeg formats documentation (libavformat); Microsoft RIFF/WAVE (``fmt``, ``fact``,
    WAVE_FORMAT_EXTENSIBLE); ISO/IEC 11172-3; RFC 3533 (Ogg); RFC 9639 (FLAC).
    """
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise InvalidAudioError(f"{name}: rule 'decodable' failed: no such file", rule="decodable", path=str(p))
    size = p.stat().st_size
    if size == 0:
        raise InvalidAudioError(f"{name}: rule 'decodable' failed: file is empty (0 bytes)",
                                rule="decodable", path=str(p))
    riff = _riff_header(p)
    if riff is not None and riff.get("sample_rate_hz") == 0:
        raise InvalidAudioError(f"{name}: rule 'sample_rate' failed: header declares 0 Hz",
                                rule="sample_rate", path=str(p))
    try:
        container = av.open(str(p), metadata_errors="replace")
    except av.error.FFmpegError as err:
        raise InvalidAudioError(f"{name}: rule 'decodable' failed: FFmpeg cannot open it ({err.strerror})",
                                rule="decodable", path=str(p)) from err
    with container:
        stream = select_audio_stream(container)
        if stream is None:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise InvalidAudioError(
                f"{name}: rule 'has_audio_stream' failed: container '{container.format.name}' "
                f"has no audio stream (streams: {kinds})", rule="has_audio_stream", path=str(p))
        cc = stream.codec_context
        if not cc.sample_rate:
            raise InvalidAudioError(f"{name}: rule 'sample_rate' failed: stream declares 0 Hz",
                                    rule="sample_rate", path=str(p))
        declared = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            declared = container.duration / av.time_base
        integrity = None
        if riff is not None and riff.get("sample_rate_hz"):
            if riff["pcm"] and riff.get("data_declared") and riff.get("block_align"):
                declared = riff["data_declared"] / riff["block_align"] / riff["sample_rate_hz"]
            elif not riff["pcm"] and riff["fact_samples"]:
                declared = riff["fact_samples"] / riff["sample_rate_hz"]
            if riff.get("data_declared") and riff["data_present"] < riff["data_declared"]:
                integrity = (f"WAV data chunk declares {riff['data_declared']} bytes, "
                             f"file holds {riff['data_present']}")
        if container.format.name == "mp3":
            integrity = _mpeg_tail_truncation(p)
        elif container.format.name == "ogg":
            integrity = _ogg_tail_truncation(p)
        flac = _flac_streaminfo(p) if container.format.name == "flac" else None
        bit_depth = None
        if riff is not None and riff.get("bits") and riff["pcm"]:
            bit_depth = int(riff["bits"])
        elif flac is not None:
            bit_depth = flac["bits"]
            if flac["total_samples"] and flac["sample_rate_hz"]:
                declared = flac["total_samples"] / flac["sample_rate_hz"]
        elif cc.name.startswith("pcm_") or cc.name in ("flac", "alac"):
            raw = getattr(stream, "bits_per_raw_sample", None) or getattr(cc, "bits_per_raw_sample", None)
            bit_depth = int(raw) if raw else (cc.format.bytes * 8 if cc.format else None)
        tags = {str(k).lower(): str(v) for k, v in {**container.metadata, **stream.metadata}.items()}
        bit_rate = cc.bit_rate or container.bit_rate
        return ProbeResult(
            path=str(p), file_size_bytes=size, container=container.format.name, codec=cc.name,
            sample_rate_hz=int(cc.sample_rate), channels=int(cc.channels),
            channel_layout=cc.layout.name, declared_duration_s=declared, bit_depth=bit_depth,
            bitrate_kbps=(bit_rate / 1000.0) if bit_rate else None, tags=tags,
            integrity_issue=integrity, stream_index=int(stream.index),
            audio_streams=len(container.streams.audio),
        )


# --------------------------------------------------------------------------- decoding

#: What the validating decode asks decoders to check (libavcodec ``err_detect``): CRCs
#: (FLAC frame CRC-8/16, MPEG CRC-16 when present) and bitstream deviations.
STRICT_ERR_DETECT = "crccheck+bitstream"

_LEVEL_NAMES = {av.logging.PANIC: "panic", av.logging.FATAL: "fatal", av.logging.ERROR: "error",
                av.logging.WARNING: "warning"}
_log_lock = threading.Lock()
_log_users = 0
_log_saved: tuple[int | None, bool] = (None, True)


@contextmanager
def _ffmpeg_logging() -> Iterator[None]:
    """Route FFmpeg warnings and errors to PyAV's log callback while any decode collects them.

    PyAV discards FFmpeg's log by default; :class:`av.logging.Capture` only sees messages
    once a level is set. The level (at least WARNING) and "do not fold repeated messages"
    are process-wide, so they are reference-counted across threads and the previous
    settings restored when the last collecting decode ends.
    """
    global _log_users, _log_saved
    with _log_lock:
        if _log_users == 0:
            _log_saved = (av.logging.get_level(), av.logging.get_skip_repeated())
            if _log_saved[0] is None or _log_saved[0] < av.logging.WARNING:
                av.logging.set_level(av.logging.WARNING)
            av.logging.set_skip_repeated(False)
        _log_users += 1
    try:
        yield
    finally:
        with _log_lock:
            _log_users -= 1
            if _log_users == 0:
                av.logging.set_level(_log_saved[0])
                av.logging.set_skip_repeated(_log_saved[1])


def _collect(on_message: Callable[[DecodeMessage], None] | None, fn: Callable, *args):
    """Call ``fn(*args)``, passing what FFmpeg logs from this thread meanwhile to ``on_message``."""
    if on_message is None:
        return fn(*args)
    with av.logging.Capture(local=True) as logs:
        try:
            return fn(*args)
        finally:
            for level, source, text in list(logs):
                if level <= av.logging.WARNING:
                    on_message(DecodeMessage(level=_LEVEL_NAMES.get(level, "panic" if level < 8 else "error"),
                                             source=source or "", text=text.strip()))


def iter_blocks(
    path: str | os.PathLike,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    timeout_s: float | None = None,
    stream_index: int | None = None,
    on_decode_message: Callable[[DecodeMessage], None] | None = None,
) -> Iterator[np.ndarray]:
    """Decode one audio stream in fixed-size blocks at its native rate and layout.

    Parameters
    ----------
    path : str or path-like
    block_size : int > 0
        Samples per channel in every block but the last (which may be shorter).
    timeout_s : float > 0, optional
        Wall-clock budget for the whole decode, checked between packets (a decoder stuck
        inside one FFmpeg call is only stopped by :mod:`puresound_core.isolation`).
    stream_index : int, optional
        Container index of the stream to decode; by default the one
        :func:`select_audio_stream` picks, i.e. the one :func:`probe` describes.
    on_decode_message : callable, optional
        Called with each :class:`DecodeMessage` (warning or worse) FFmpeg logs from this
        thread while opening, demuxing and decoding. Giving it also turns on the decoder's
        CRC and bitstream checks (``err_detect=crccheck+bitstream``) and single-threaded
        decoding, so that every decoder message is seen. While such a decode runs, PyAV's
        process-wide log level is at least WARNING (see :func:`_ffmpeg_logging`).

    Yields
    ------
    np.ndarray [shape=(channels, n <= block_size)], float32
        At the rate and layout the decoder reports when the stream is opened (its header):
        frames of another rate or layout are resampled to them.

    Raises
    ------
    InvalidAudioError
        ``rule="decodable"`` when the stream cannot be opened or a packet cannot be decoded,
        ``rule="has_audio_stream"`` when there is no audio stream (or ``stream_index`` is
        not one).
    DecodeTimeoutError
        ``rule="decode_timeout"`` when decoding takes longer than ``timeout_s``.
    ValueError
        If ``block_size`` is not positive (on the first block asked for).

    Notes
    -----
    Memory is O(block_size) whatever the duration. Decoders apply codec priming
    (MP3 LAME/Xing delay, AAC edit lists, Opus pre-skip) as FFmpeg does. Frames in float,
    16- or 32-bit integer formats, at the stream's rate and layout, are copied straight into
    the blocks (integers scaled as libswresample does, so the values are the same). Other
    frames go through libswresample to packed float (``flt``): other sample formats, frames
    of another rate or layout than the header's (concatenated MP3s change both mid-stream),
    and planar frames of 8 or more channels, whose ``AudioFrame.planes`` / ``to_ndarray``
    in PyAV 18 reads past the plane-pointer array and crashes the process.
    """
    p = Path(path)
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _ffmpeg_logging() if on_decode_message is not None else nullcontext():
        try:
            container = _collect(on_decode_message, lambda: av.open(str(p), metadata_errors="replace"))
        except av.error.FFmpegError as err:
            raise InvalidAudioError(f"{p.name}: rule 'decodable' failed: FFmpeg cannot open it ({err.strerror})",
                                    rule="decodable", path=str(p)) from err
        with container:
            if stream_index is None:
                stream = select_audio_stream(container)
            else:
                candidates = [s for s in container.streams.audio if s.index == stream_index]
                stream = candidates[0] if candidates else None
            if stream is None:
                what = "no audio stream" if stream_index is None else f"stream #{stream_index} is not audio"
                raise InvalidAudioError(f"{p.name}: rule 'has_audio_stream' failed: {what}",
                                        rule="has_audio_stream", path=str(p))
            cc = stream.codec_context
            if on_decode_message is not None:
                cc.options = {**cc.options, "err_detect": STRICT_ERR_DETECT}
                cc.thread_count = 1
            layout, rate = cc.layout, cc.sample_rate  # the decoder's context follows each frame: read it once
            layout_name = layout.name
            demuxer = container.demux(stream)
            decoded_frames = 0
            resampler: av.AudioResampler | None = None
            resampler_input: tuple | None = None

            def resampled(frame: av.AudioFrame | None) -> list[tuple[list[np.ndarray], float | None]]:
                """``frame`` converted to the header's rate and layout (``None``: flush).

                libswresample is set up for one input format: a change flushes it and starts another.
                """
                nonlocal resampler, resampler_input
                out = []
                given = None if frame is None else (frame.format.name, frame.layout.name, frame.sample_rate)
                if resampler is not None and given != resampler_input:
                    out.extend(resampler.resample(None))
                    resampler = None
                if frame is not None:
                    if resampler is None:
                        resampler = av.AudioResampler(format="flt", layout=layout, rate=rate)
                        resampler_input = given
                    out.extend(resampler.resample(frame))
                return [_resampled_views(f, p) for f in out if f is not None]  # a passthrough flush gives [None]

            def step() -> list[tuple[list[np.ndarray], float | None]] | None:
                """Demux and decode one packet into per-channel sample views; ``None`` at the end."""
                nonlocal decoded_frames
                packet = next(demuxer, None)
                if packet is None:
                    return None
                out = []
                for frame in packet.decode():
                    decoded_frames += 1
                    direct = (_channel_views(frame)
                              if frame.sample_rate == rate and frame.layout.name == layout_name else None)
                    if direct is None:
                        out.extend(resampled(frame))
                    else:
                        if resampler is not None:  # what it still holds comes first
                            out.extend(resampled(None))
                        out.append(direct)
                return out

            block = np.empty((0, 0), np.float32)
            filled = 0
            flushed = False
            while not flushed:
                if deadline is not None and time.monotonic() > deadline:
                    raise DecodeTimeoutError(
                        f"{p.name}: rule 'decode_timeout' failed: decode exceeded {timeout_s:g} s",
                        rule="decode_timeout", path=str(p))
                try:
                    frames = _collect(on_decode_message, step)
                    if frames is None:
                        frames = _collect(on_decode_message, resampled, None)
                        flushed = True
                except av.error.FFmpegError as err:
                    raise InvalidAudioError(
                        f"{p.name}: rule 'decodable' failed: decode error after {decoded_frames} frames "
                        f"({err.strerror})", rule="decodable", path=str(p)) from err
                for views, scale in frames:
                    n, pos = len(views[0]), 0
                    while pos < n:
                        if filled == 0:
                            block = np.empty((len(views), block_size), np.float32)
                        take = min(block_size - filled, n - pos)
                        part = block[:, filled:filled + take]
                        for row, view in zip(part, views, strict=True):
                            row[:] = view[pos:pos + take]  # int to float32 rounds as FFmpeg's swresample does
                        if scale is not None:
                            part *= np.float32(scale)
                        filled += take
                        pos += take
                        if filled == block_size:
                            yield block
                            filled = 0
            if filled:
                yield np.ascontiguousarray(block[:, :filled])


#: Sample formats read straight from a decoded frame: numpy dtype and the scale to [-1, 1)
#: (``libswresample/audioconvert.c``: ``s16 * (1.0f / (1 << 15))``, ``s32 * (1.0f / (1U << 31))``).
_DIRECT_FORMATS: dict[str, tuple[type, float | None]] = {
    "flt": (np.float32, None), "fltp": (np.float32, None),
    "s16": (np.int16, 2.0 ** -15), "s16p": (np.int16, 2.0 ** -15),
    "s32": (np.int32, 2.0 ** -31), "s32p": (np.int32, 2.0 ** -31),
}


def _channel_views(frame: av.AudioFrame) -> tuple[list[np.ndarray], float | None] | None:
    """One view per channel into a decoded frame's sample buffers, and their scale to float.

    ``None`` for a format not in :data:`_DIRECT_FORMATS`, and for planar frames of 8 or more
    channels: PyAV 18's ``AudioFrame.planes`` reads past the plane-pointer array there and
    crashes the process (those go through the resampler, which outputs packed ``flt``).
    Views, not copies: :func:`iter_blocks` copies them into its blocks, once.
    """
    fmt = _DIRECT_FORMATS.get(frame.format.name)
    channels = frame.layout.nb_channels
    if fmt is None or channels == 0 or (frame.format.is_planar and channels >= 8):
        return None
    dtype, scale = fmt
    samples = frame.samples
    if frame.format.is_planar:
        return [np.frombuffer(plane, dtype, samples) for plane in frame.planes], scale
    interleaved = np.frombuffer(frame.planes[0], dtype, samples * channels).reshape(samples, channels)
    return [interleaved[:, c] for c in range(channels)], scale


def _resampled_views(frame: av.AudioFrame, path: Path) -> tuple[list[np.ndarray], float | None]:
    """:func:`_channel_views` of the resampler's packed float output; a frame with no channels is refused."""
    views = _channel_views(frame)
    if views is None:
        raise InvalidAudioError(f"{path.name}: rule 'decodable' failed: decoded audio has no channels "
                                f"(layout {frame.layout.name!r})", rule="decodable", path=str(path))
    return views


def decode(path: str | os.PathLike, *, timeout_s: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole file into memory (tests and short files; use :func:`iter_blocks` otherwise).

    Parameters
    ----------
    path : str or path-like
    timeout_s : float, optional
        See :func:`iter_blocks`.

    Returns
    -------
    audio : np.ndarray [shape=(channels, samples)], float32
    sample_rate_hz : int

    Raises
    ------
    InvalidAudioError, DecodeTimeoutError
        As :func:`probe` and :func:`iter_blocks`.
    """
    info = probe(path)
    blocks = list(iter_blocks(path, timeout_s=timeout_s))
    if not blocks:
        return np.zeros((info.channels, 0), dtype=np.float32), info.sample_rate_hz
    return np.concatenate(blocks, axis=1), info.sample_rate_hz


def blocks_of(audio: np.ndarray, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[np.ndarray]:
    """Split an in-memory signal into blocks, the form the streaming functions take.

    Parameters
    ----------
    audio : np.ndarray [shape=(channels, samples)]
    block_size : int > 0

    Yields
    ------
    np.ndarray [shape=(channels, n <= block_size)], float32
    """
    audio = check_audio(audio)
    for start in range(0, audio.shape[1], block_size):
        yield audio[:, start:start + block_size]


# --------------------------------------------------------------------------- encoding

_FF_QP2LAMBDA = 118  # libavutil/avutil.h


class EncodeResult(BaseModel):
    """What :func:`encode_blocks` wrote.

    Attributes
    ----------
    path : str
    size_bytes : int
    samples_in : int
        Samples per channel fed to the encoder.
    encoder : str
        FFmpeg encoder name plus libavcodec version.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    size_bytes: int
    samples_in: int
    encoder: str


def _tags_for(codec: str, tags: Mapping[str, str]) -> dict[str, str]:
    """Map our tag names to what each muxer writes (ID3v2 TXXX, Vorbis comments, iTunes atoms)."""
    out = {k: v for k, v in tags.items() if v is not None and v != ""}
    if codec == "aac":
        # FFmpeg's mp4 muxer writes only the iTunes keys it knows.
        out = {k: v for k, v in out.items() if k in ("title", "artist", "album", "date", "comment", "genre")}
    return out


def _quantize(block: np.ndarray, bit_depth: int) -> np.ndarray:
    """Round to the nearest ``bit_depth`` integer step and clip to full scale.

    FFmpeg's float -> s32 path truncates the low bits of 24-bit output; rounding here first
    makes 16- and 24-bit output round-to-nearest (error <= 1/2 LSB) and exact for sources
    that were already at that depth (int -> float32 -> int is lossless).
    """
    scale = float(2 ** (bit_depth - 1))
    return (np.clip(np.round(block * scale), -scale, scale - 1) / scale).astype(np.float32)


class Encoder:
    """Encode a block stream to a file, block by block, atomically (temporary file + rename).

    Push form of :func:`encode_blocks`: one decoded stream can feed several encoders in the
    same pass. Use as a context manager, or call :meth:`close` (success) / :meth:`abort`.
    Output is deterministic: the same samples and settings give the same bytes (FFmpeg's
    ``bitexact`` flag: a fixed Ogg stream serial, no version strings or creation times).

    Parameters
    ----------
    path : str or path-like
        Final file; it appears only when :meth:`close` succeeds.
    settings : EncoderSettings
    tags : mapping of str to str, optional
        ``title``, ``artist``, ``album``, ``date`` and gain tags; written where the
        container has a place for them.

    Raises
    ------
    EncodingError
        If FFmpeg cannot open the encoder or muxer.

    References
    ----------
    FFmpeg libavcodec / libavformat documentation (``-fflags +bitexact``); LAME ``-V`` VBR scale.
    """

    def __init__(self, path: str | os.PathLike, *, settings: EncoderSettings, tags: Mapping[str, str] | None = None):
        encoder_name, muxer, _ = _CODECS[settings.codec]
        if settings.codec == "wav" and settings.bit_depth == 24:
            encoder_name = "pcm_s24le"
        self.settings = settings
        self.encoder_name = encoder_name
        self.target = Path(path)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # A unique name beside the target (same filesystem, so the rename is atomic); created by
        # the muxer with the process umask, unlike mkstemp's 0600.
        self._tmp = str(self.target.parent / f".{self.target.name}.{uuid.uuid4().hex}.part")
        self._layout = "mono" if settings.channels == 1 else "stereo"
        self._pts = 0
        self._done = False
        try:
            self._out = av.open(self._tmp, "w", format=muxer, options={"fflags": "+bitexact"})
            self._stream = self._out.add_stream(encoder_name, rate=settings.sample_rate_hz, layout=self._layout)
            cc = self._stream.codec_context
            if settings.codec in ("flac", "wav"):
                cc.format = "s16" if settings.bit_depth == 16 else "s32"
            if settings.codec == "flac" and settings.bit_depth == 24:
                cc.options = {"bits_per_raw_sample": "24"}
            if settings.codec == "mp3" and settings.vbr_quality is not None:
                cc.qscale = True
                cc.global_quality = settings.vbr_quality * _FF_QP2LAMBDA
            elif settings.bitrate_kbps is not None and not settings.lossless:
                cc.bit_rate = settings.bitrate_kbps * 1000
            muxed_tags = _tags_for(settings.codec, tags or {})
            self._out.metadata.update(muxed_tags)
            self._stream.metadata.update(muxed_tags)
        except av.error.FFmpegError as err:
            self.abort()
            raise EncodingError(f"{self.target.name}: {encoder_name} failed: {err}") from err
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.close()

    def write(self, block: np.ndarray) -> None:
        """Encode the next block.

        Parameters
        ----------
        block : np.ndarray [shape=(settings.channels, n)], float32, n >= 0
            At ``settings.sample_rate_hz``; samples outside [-1, 1] are clipped by the
            sample-format conversion.

        Raises
        ------
        EncodingError
            If the block has the wrong channel count or FFmpeg fails (the file is removed).
        """
        settings = self.settings
        if block.ndim != 2 or block.shape[0] != settings.channels:
            self.abort()
            raise EncodingError(f"{self.target.name}: encoder expects {settings.channels} channels, "
                                f"got block of shape {block.shape}")
        if block.shape[1] == 0:
            return
        if settings.lossless:
            block = _quantize(block, settings.bit_depth)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, dtype=np.float32), format="fltp",
                                           layout=self._layout)
        frame.sample_rate = settings.sample_rate_hz
        frame.pts = self._pts
        self._pts += block.shape[1]
        try:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
        except av.error.FFmpegError as err:
            self.abort()
            raise EncodingError(f"{self.target.name}: {self.encoder_name} failed: {err}") from err

    def close(self) -> EncodeResult:
        """Flush the encoder, close the file and move it to its final name.

        Returns
        -------
        EncodeResult

        Raises
        ------
        EncodingError
            If FFmpeg fails to flush or mux (the file is removed).
        """
        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
            self._out.close()
            os.replace(self._tmp, self.target)
        except av.error.FFmpegError as err:
            self.abort()
            raise EncodingError(f"{self.target.name}: {self.encoder_name} failed: {err}") from err
        except BaseException:
            self.abort()
            raise
        self._done = True
        return EncodeResult(path=str(self.target), size_bytes=self.target.stat().st_size, samples_in=self._pts,
                            encoder=f"{self.encoder_name} (libavcodec {FFMPEG_VERSION})")

    def abort(self) -> None:
        """Stop and remove the temporary file; the target is left as it was. Safe to call twice."""
        if self._done:
            return
        self._done = True
        out = getattr(self, "_out", None)
        if out is not None:
            with suppress(Exception):  # closing a half-written file; it is deleted next
                out.close()
        Path(self._tmp).unlink(missing_ok=True)


def encode_blocks(
    blocks: Iterable[np.ndarray],
    path: str | os.PathLike,
    *,
    settings: EncoderSettings,
    tags: Mapping[str, str] | None = None,
) -> EncodeResult:
    """Encode a block stream to a file, atomically (:class:`Encoder` in pull form).

    Parameters
    ----------
    blocks : iterable of np.ndarray [shape=(settings.channels, n)], float32
        Audio already at ``settings.sample_rate_hz`` with ``settings.channels`` channels;
        samples outside [-1, 1] are clipped by the sample-format conversion.
    path : str or path-like
        Final file; it appears only when encoding succeeded.
    settings : EncoderSettings
    tags : mapping of str to str, optional
        ``title``, ``artist``, ``album``, ``date`` and gain tags; written where the
        container has a place for them.

    Returns
    -------
    EncodeResult

    Raises
    ------
    EncodingError
        If a block has the wrong channel count, or FFmpeg fails to encode or mux.

    References
    ----------
    FFmpeg libavcodec / libavformat documentation; LAME ``-V`` VBR scale.
    """
    with Encoder(path, settings=settings, tags=tags) as encoder:
        for block in blocks:
            encoder.write(block)
        return encoder.close()
