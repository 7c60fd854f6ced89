"""Channel layouts: channel names, BS.1770-4 channel weights and ITU-R BS.775 down-mix matrices.

A layout is named the way FFmpeg names it (``"stereo"``, ``"5.1"``, ``"5.1(side)"``,
``"7.1"``, ``"7.1.4"``...), which is what :class:`puresound_core.audio.ProbeResult` reports
as ``channel_layout``. PyAV resolves a name to its channels, each with FFmpeg's short name:

====================  =========================================================
``FL FR FC``          front left / right / centre
``LFE LFE2``          low-frequency effects
``SL SR``             side surrounds (5.1(side), 7.1)
``BL BR BC``          back surrounds (5.1, 7.1, 6.1)
``FLC FRC``           front left / right of centre
``TFL TFR TBL TBR``   top (height) front / back left / right; ``TC TFC TBC TSL TSR``
====================  =========================================================

A file without a channel mask (a plain ``WAVE_FORMAT_PCM`` WAV with more than two channels)
has a layout PyAV calls ``"6 channels"``, whose channels are all ``NONE``. Such layouts, an
empty or ``None`` name, and names FFmpeg cannot parse get the default of
:data:`DEFAULT_LAYOUTS` for their channel count: the layout FFmpeg itself assumes
(``av_channel_layout_default``) and the order of WAVEFORMATEXTENSIBLE's channel mask.
10 and 12 channels are taken as 5.1.4 and 7.1.4 (immersive layouts in the same order);
9, 11 and more than 12 have no default: every channel is ``NONE``, treated as a front
channel (weight 1.0, down-mixed like a centre).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import av
import numpy as np

from .errors import InvalidAudioError

#: How :func:`downmix_matrix` folds channels: ``"bs775"`` (ITU-R BS.775-3 coefficients) or
#: ``"legacy"`` (mono = mean of every channel, LFE included; stereo = channel 0 duplicated
#: for more than 2 channels). ``"legacy"`` only reproduces renditions made before BS.775
#: down-mixing; use it only when a preset asks for it.
DownmixMode = Literal["bs775", "legacy"]

#: Layout assumed for a channel count when the source does not say (FFmpeg's defaults).
DEFAULT_LAYOUTS: dict[int, str] = {
    1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1",
    10: "5.1.4", 12: "7.1.4",
}

#: -3 dB, the BS.775-3 coefficient of the centre and surround channels in a down-mix.
MINUS_3_DB = 0.7071067811865476
#: BS.1770-4 Table 3 weight of the surround channels (+1.5 dB).
SURROUND_WEIGHT = 1.41

UNKNOWN_CHANNEL = "NONE"

_LFE = frozenset({"LFE", "LFE2", "LFE3", "LOW_FREQUENCY", "LOW_FREQUENCY_2", "LOW_FREQUENCY_3"})
_SURROUND_LEFT = frozenset({"SL", "BL", "SDL", "LS", "LSS", "LRS", "LB",
                            "SIDE_LEFT", "BACK_LEFT", "SURROUND_DIRECT_LEFT"})
_SURROUND_RIGHT = frozenset({"SR", "BR", "SDR", "RS", "RSS", "RRS", "RB",
                             "SIDE_RIGHT", "BACK_RIGHT", "SURROUND_DIRECT_RIGHT"})
_SURROUND_CENTRE = frozenset({"BC", "CS", "BACK_CENTER"})
_SURROUND = _SURROUND_LEFT | _SURROUND_RIGHT | _SURROUND_CENTRE

# (gain into L', gain into R') of each named channel in the stereo down-mix (see downmix_matrix).
_h = MINUS_3_DB
_STEREO_GAINS: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("FL", "FLC", "WL", "DL", "BFL", "BIL", "L", "FRONT_LEFT", "FRONT_LEFT_OF_CENTER",
                     "WIDE_LEFT", "STEREO_LEFT", "BOTTOM_FRONT_LEFT"), (1.0, 0.0)),
    **dict.fromkeys(("FR", "FRC", "WR", "DR", "BFR", "BIR", "R", "FRONT_RIGHT", "FRONT_RIGHT_OF_CENTER",
                     "WIDE_RIGHT", "STEREO_RIGHT", "BOTTOM_FRONT_RIGHT"), (0.0, 1.0)),
    **dict.fromkeys(("FC", "BFC", "C", "FRONT_CENTER", "BOTTOM_FRONT_CENTER"), (_h, _h)),
    **dict.fromkeys(_SURROUND_LEFT, (_h, 0.0)),
    **dict.fromkeys(_SURROUND_RIGHT, (0.0, _h)),
    **dict.fromkeys(_SURROUND_CENTRE, (_h * _h, _h * _h)),
    **dict.fromkeys(("TFL", "TBL", "TSL", "TOP_FRONT_LEFT", "TOP_BACK_LEFT", "TOP_SIDE_LEFT"), (_h, 0.0)),
    **dict.fromkeys(("TFR", "TBR", "TSR", "TOP_FRONT_RIGHT", "TOP_BACK_RIGHT", "TOP_SIDE_RIGHT"), (0.0, _h)),
    **dict.fromkeys(("TC", "TFC", "TBC", "TOP_CENTER", "TOP_FRONT_CENTER", "TOP_BACK_CENTER"),
                    (_h * _h, _h * _h)),
    **dict.fromkeys(_LFE, (0.0, 0.0)),
}
_UNKNOWN_STEREO_GAINS = (_h, _h)   # like a centre channel


def default_layout(channels: int) -> str | None:
    """FFmpeg layout name assumed for a channel count when the source declares none.

    Parameters
    ----------
    channels : int > 0

    Returns
    -------
    str or None
        ``"mono"``, ``"stereo"``, ``"3.0"``, ``"quad"``, ``"5.0"``, ``"5.1"``, ``"6.1"``,
        ``"7.1"`` for 1-8 channels; ``None`` beyond (every channel is then a front channel).
    """
    return DEFAULT_LAYOUTS.get(int(channels))


def channel_names(channels: int, layout: str | None = None) -> tuple[str, ...]:
    """FFmpeg short names of the channels of a layout, in signal order.

    Parameters
    ----------
    channels : int > 0
        Channel count of the signal.
    layout : str, optional
        FFmpeg layout name (``"5.1"``, ``"7.1.4"``, ``"FL+FR+FC+LFE+SL+SR"``...). ``None``,
        ``""``, a name FFmpeg cannot parse, or an unspecified layout such as ``"6 channels"``
        (a WAV without a channel mask) gives the default of :func:`default_layout`.

    Returns
    -------
    tuple of str [length=channels]
        E.g. ``("FL", "FR", "FC", "LFE", "BL", "BR")`` for ``"5.1"``; ``"NONE"`` for a
        channel of unknown position (more than 8 channels without a layout).

    Raises
    ------
    InvalidAudioError
        If ``channels`` < 1, or the layout names a different number of channels than the
        signal has (rule ``channel_layout``).

    References
    ----------
    FFmpeg ``libavutil/channel_layout.c`` (layout names, ``av_channel_layout_default``);
    ITU-R BS.775-3 (10/2012) and ITU-R BS.2051-3 (loudspeaker configurations).
    """
    channels = int(channels)
    if channels < 1:
        raise InvalidAudioError(f"channel layout: rule 'channel_layout' failed: {channels} channels",
                                rule="channel_layout")
    names: tuple[str, ...] | None = None
    if layout:
        try:
            parsed = av.AudioLayout(layout)
        except (ValueError, TypeError):
            parsed = None   # a name this FFmpeg does not know: fall back to the default
        if parsed is not None:
            names = tuple(c.name.upper() for c in parsed.channels)
            if len(names) != channels:
                raise InvalidAudioError(
                    f"channel layout: rule 'channel_layout' failed: layout '{layout}' has "
                    f"{len(names)} channels, the signal has {channels}", rule="channel_layout")
            if all(n == UNKNOWN_CHANNEL for n in names):
                names = None   # "6 channels": the order is unspecified
    if names is None:
        default = default_layout(channels)
        if default is None:
            return (UNKNOWN_CHANNEL,) * channels
        names = tuple(c.name.upper() for c in av.AudioLayout(default).channels)
    return names


def is_lfe(name: str) -> bool:
    """Whether a channel is a low-frequency effects channel.

    Parameters
    ----------
    name : str
        FFmpeg / PyAV channel name, any case (``LFE``, ``LFE2``, ``LOW_FREQUENCY``...).

    Returns
    -------
    bool
        True for LFE channels, which BS.1770-4 excludes (weight 0) and BS.775 drops.

    References
    ----------
    ITU-R BS.1770-4 Table 3; ITU-R BS.775-3.
    """
    return name.upper() in _LFE


def is_surround(name: str) -> bool:
    """Whether a channel is a side / back surround at ear height.

    Parameters
    ----------
    name : str
        FFmpeg / PyAV channel name, any case (``SL SR BL BR BC SDL SDR`` and long forms).

    Returns
    -------
    bool
        True for the channels BS.1770-4 weights 1.41 (+1.5 dB).

    References
    ----------
    ITU-R BS.1770-4 Table 3 (surrounds at 60-120 degrees azimuth); FFmpeg ebur128 ``BACK_MASK``.
    """
    return name.upper() in _SURROUND


def bs1770_weights(names: Sequence[str]) -> np.ndarray:
    """BS.1770-4 channel weights G_i for named channels.

    Parameters
    ----------
    names : sequence of str
        FFmpeg channel names (see :func:`channel_names`), case-insensitive.

    Returns
    -------
    np.ndarray [shape=(len(names),)], float64
        0.0 for LFE channels (``LFE``, ``LFE2``, ``LOW_FREQUENCY``...); 1.41 (+1.5 dB) for
        side and back surrounds at ear height (``SL``, ``SR``, ``BL``, ``BR``, ``BC``,
        ``SDL``, ``SDR`` and their long forms); 1.0 for everything else: front channels,
        height / top channels (``TFL``, ``TBR``... as in 5.1.2 to 7.1.4) and channels of
        unknown position.

    Notes
    -----
    BS.1770-4 Table 3 gives 1.41 to channels below 30 deg elevation at 60-120 deg azimuth
    and 1.0 to all others. The back surrounds of 7.1 (135-150 deg) are given 1.41 too, as
    FFmpeg's ``ebur128`` filter and libebur128 do, so that a 7.1 mix and its 5.1 fold-down
    (back surrounds into the side ones) measure alike. Height channels are above 30 deg
    elevation: 1.0.

    References
    ----------
    ITU-R BS.1770-4 (10/2015), eq. 2 and Table 3; FFmpeg ``libavfilter/f_ebur128.c``.
    """
    weights = np.ones(len(names), dtype=np.float64)
    for i, name in enumerate(names):
        if is_lfe(name):
            weights[i] = 0.0
        elif is_surround(name):
            weights[i] = SURROUND_WEIGHT
    return weights


def downmix_matrix(names: Sequence[str], out_channels: int, *, mode: DownmixMode = "bs775") -> np.ndarray:
    """Matrix that folds named channels down to mono or stereo.

    ``out = matrix @ audio`` maps ``audio [shape=(len(names), samples)]`` to
    ``[shape=(out_channels, samples)]``.

    Stereo (``mode="bs775"``), ITU-R BS.775-3 Table 2 extended by name:

    * ``L' = L + 0.7071 C + 0.7071 Ls (+ 0.7071 Lb)``, ``R'`` likewise: front left / right
      (also ``FLC``/``FRC``, wide, bottom-front) at 1.0; ``FC`` at 0.7071 (-3 dB) into both;
      side and back surrounds (``SL``/``BL``) at 0.7071 into their side;
    * a single back centre (``BC``) at 0.5 into both (a -3 dB surround split like a centre);
    * height channels into their side at -3 dB (``TFL``/``TBL``/``TSL`` -> L' at 0.7071);
      centred height channels (``TC``, ``TFC``, ``TBC``) at 0.5 into both;
    * LFE channels are dropped (BS.775-3: the LFE is not part of the down-mix);
    * channels of unknown position are mixed like a centre (0.7071 into both).

    Mono: ``M = 0.7071 (L' + R')``, which is BS.775-3's
    ``M = 0.7071 L + 0.7071 R + C + 0.5 Ls + 0.5 Rs`` (and ``0.7071 L + 0.7071 R`` from
    stereo). A centred sound keeps its loudness: identical L and R (two channels of ``s``)
    become ``1.414 s`` in mono, the same BS.1770 energy.

    A mono source is duplicated into both channels of a stereo output (each at 1.0); a
    source already in the output layout (mono -> mono, stereo -> stereo) is unchanged.

    The sums are not normalised: a down-mix of loud surround material may exceed full
    scale, which the float chain carries until the loudness gain and the true-peak limiter.

    Parameters
    ----------
    names : sequence of str
        Channel names of the source (see :func:`channel_names`).
    out_channels : {1, 2}
    mode : {"bs775", "legacy"}
        ``"legacy"``: mono = mean of every channel (LFE included), stereo = channel 0
        duplicated when the source has more than 2 channels, mono duplicated; kept only to
        reproduce older renditions.

    Returns
    -------
    np.ndarray [shape=(out_channels, len(names))], float32

    Raises
    ------
    ValueError
        If ``out_channels`` is not 1 or 2, ``names`` is empty, or ``mode`` is unknown.

    References
    ----------
    ITU-R BS.775-3 (08/2012), Table 2 (down-mixing equations); ATSC A/52 s. 7.8 (a mono
    surround at -3 dB split to both sides).
    """
    in_channels = len(names)
    if out_channels not in (1, 2):
        raise ValueError(f"downmix_matrix: out_channels must be 1 or 2, got {out_channels}")
    if in_channels < 1:
        raise ValueError("downmix_matrix: no input channel")
    if mode not in ("bs775", "legacy"):
        raise ValueError(f"downmix_matrix: unknown mode {mode!r} (expected 'bs775' or 'legacy')")
    if in_channels == out_channels:
        return np.eye(out_channels, dtype=np.float32)
    if in_channels == 1:
        return np.ones((2, 1), dtype=np.float32)          # mono -> stereo: duplicate
    if mode == "legacy":
        if out_channels == 1:
            return np.full((1, in_channels), 1.0 / in_channels, dtype=np.float32)
        matrix = np.zeros((2, in_channels), dtype=np.float32)
        matrix[:, 0] = 1.0
        return matrix
    stereo = np.array([_STEREO_GAINS.get(n.upper(), _UNKNOWN_STEREO_GAINS) for n in names],
                      dtype=np.float64).T                  # (2, in_channels)
    if out_channels == 2:
        return stereo.astype(np.float32)
    return (MINUS_3_DB * stereo.sum(axis=0, keepdims=True)).astype(np.float32)
