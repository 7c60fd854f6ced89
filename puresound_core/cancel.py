"""Cooperative stop: long audio loops check a flag between blocks, so a stop request ends them cleanly.

The domain never installs signal handlers; the edge (a flow, the CLI) calls
:func:`request_stop` from its SIGTERM handler. Loops that check :func:`stoppable` raise
:class:`Cancelled` at the next block, so encoders remove their ``.part`` files and
callers close what they opened.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np

from .errors import PureSoundError

_STOP = threading.Event()
_REASON: list[str] = []
#: Events shared with the other processes of a batch (``multiprocessing.Event``): a stop
#: asked in any of them reaches all.
_SHARED: list = []


class Cancelled(PureSoundError):
    """Work abandoned because a stop was requested (:func:`request_stop`)."""


def request_stop(reason: str) -> None:
    """Ask every running audio loop of this process to stop at its next block.

    Parameters
    ----------
    reason : str
        Said by :class:`Cancelled` (e.g. ``"SIGTERM"``).
    """
    _REASON[:] = [reason]
    _STOP.set()
    for event in _SHARED:
        event.set()


def share_stop(event) -> None:
    """Also stop when ``event`` is set, and set it on :func:`request_stop` (the processes of one batch).

    Parameters
    ----------
    event : multiprocessing.synchronize.Event
        Created by the batch's parent process and handed to each worker process.
    """
    _SHARED[:] = [event]


def clear_stop() -> None:
    """Forget a stop request and any shared event (a new run in the same process starts clean)."""
    _STOP.clear()
    _REASON.clear()
    _SHARED.clear()


def stop_requested() -> bool:
    """bool: whether :func:`request_stop` was called here, or in another process sharing the event."""
    return _STOP.is_set() or any(event.is_set() for event in _SHARED)


def stop_reason() -> str | None:
    """str or None: the reason given to :func:`request_stop` in this process, if it was called here."""
    return _REASON[0] if _REASON and _STOP.is_set() else None


def check_stop() -> None:
    """Raise :class:`Cancelled` when a stop was requested.

    Raises
    ------
    Cancelled
    """
    if stop_requested():
        raise Cancelled(f"stopped: {_REASON[0] if _REASON else 'stop requested'}")


def stoppable(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass blocks through, raising :class:`Cancelled` before the next one once a stop is requested.

    Parameters
    ----------
    blocks : iterable of np.ndarray [shape=(channels, n)]

    Yields
    ------
    np.ndarray [shape=(channels, n)]

    Raises
    ------
    Cancelled
    """
    for block in blocks:
        check_stop()
        yield block
