"""Gain tags written from what a rendition measured after encoding: ReplayGain 2.0 and Opus R128.

Players that honour them (foobar2000, mpv, VLC, most podcast apps for Opus) re-level a
file to their own reference. The tags must describe the file as it is, so they are written
*after* verification, from the decoded measurement, by editing the container's tag block
in place with mutagen: the audio packets are not touched, so the verification stands.

References
----------
ReplayGain 2.0 specification (reference -18 LUFS, BS.1770 loudness);
RFC 7845 s. 5.2.1 (``R128_TRACK_GAIN``: Q7.8 dB relative to -23 LUFS, EBU R 128).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import EncodingError

#: ReplayGain 2.0 reference level (LUFS).
REPLAYGAIN_REFERENCE_LUFS = -18.0
#: Opus ``R128_*_GAIN`` tags are relative to EBU R 128's -23 LUFS (RFC 7845 s. 5.2.1).
R128_REFERENCE_LUFS = -23.0


def gain_tags(codec: str, *, integrated_lufs: float | None, true_peak_dbtp: float | None) -> dict[str, str]:
    """Gain tags for a rendition from its measured loudness and true peak.

    Parameters
    ----------
    codec : str
        ``"opus"`` gets ``R128_TRACK_GAIN``; every other codec ReplayGain 2.0 tags.
    integrated_lufs : float or None
        Measured integrated loudness of the encoded file (as played: dual-mono for mono).
        ``None`` (not measurable) gives no tags.
    true_peak_dbtp : float or None
        Measured true peak; written as ``REPLAYGAIN_TRACK_PEAK`` (linear) when finite.

    Returns
    -------
    dict of str to str

    References
    ----------
    ReplayGain 2.0 specification; RFC 7845 s. 5.2.1.
    """
    if integrated_lufs is None or not math.isfinite(integrated_lufs):
        return {}
    if codec == "opus":
        q78 = round((R128_REFERENCE_LUFS - integrated_lufs) * 256)
        return {"R128_TRACK_GAIN": str(int(max(-32768, min(32767, q78))))}
    tags = {"REPLAYGAIN_TRACK_GAIN": f"{REPLAYGAIN_REFERENCE_LUFS - integrated_lufs:+.2f} dB"}
    if true_peak_dbtp is not None and math.isfinite(true_peak_dbtp):
        tags["REPLAYGAIN_TRACK_PEAK"] = f"{10 ** (true_peak_dbtp / 20):.6f}"
    return tags


def write_tags(path: str | os.PathLike, tags: dict[str, str], *, codec: str) -> None:
    """Add tags to an encoded file in place, without touching its audio.

    mutagen rewrites the tag block only: ID3v2 ``TXXX`` frames for MP3 and WAV, Vorbis
    comments for Opus and FLAC, freeform iTunes atoms for M4A. The edit is not atomic: call
    it on a file nobody reads yet (``render_rendition`` tags its hidden attempt file before
    renaming it into place), so that no second copy of the audio is written.

    Parameters
    ----------
    path : str or path-like
    tags : dict of str to str
    codec : {"mp3", "aac", "opus", "flac", "wav"}

    Raises
    ------
    EncodingError
        If mutagen cannot read or write the container's tags.

    References
    ----------
    mutagen documentation (ID3, OggOpus, FLAC, MP4, WAVE).
    """
    if not tags:
        return
    import mutagen
    from mutagen.id3 import TXXX

    target = Path(path)
    try:
        if codec in ("mp3", "wav"):
            if codec == "mp3":
                from mutagen.mp3 import MP3 as Kind
            else:
                from mutagen.wave import WAVE as Kind
            audio = Kind(target)
            if audio.tags is None:
                audio.add_tags()
            for key, value in tags.items():
                audio.tags.add(TXXX(encoding=3, desc=key, text=[value]))
        elif codec == "aac":
            from mutagen.mp4 import MP4, MP4FreeForm

            audio = MP4(target)
            if audio.tags is None:
                audio.add_tags()
            for key, value in tags.items():
                audio.tags[f"----:com.apple.iTunes:{key}"] = [MP4FreeForm(value.encode())]
        else:  # opus, flac: Vorbis comments
            audio = mutagen.File(target)
            if audio is None:
                raise EncodingError(f"{target.name}: mutagen does not recognise the file")
            if audio.tags is None:
                audio.add_tags()
            for key, value in tags.items():
                audio.tags[key] = value
        audio.save()
    except EncodingError:
        raise
    except Exception as err:  # mutagen raises its own MutagenError subclasses and OSError
        raise EncodingError(f"{target.name}: cannot write gain tags ({type(err).__name__}: {err})") from err
