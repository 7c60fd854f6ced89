"""Imported by the isolation forkserver: the modules its children need, each one on its own.

:data:`puresound_core.isolation.PRELOAD_MODULES` are imported here, once, so that no child
imports them again. Each failure is kept to its module: ``multiprocessing``'s forkserver
catches only ``ImportError`` of a preload, and any other error (librosa imports soundfile,
which raises ``OSError`` without libsndfile; numba raises ``RuntimeError`` when it has no
cache folder) would kill the forkserver, and with it every isolated call. A module that
fails here fails again in the child that needs it, where it becomes that file's verdict.
"""

import importlib

from .isolation import PRELOAD_MODULES

for _name in PRELOAD_MODULES:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001, S110 - see the module docstring
        pass
