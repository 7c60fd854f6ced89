"""Importable entry points for every preset's flows, built-in or YAML (PEP 562 module ``__getattr__``).

``flows.dynamic.podcast`` is the ``podcast`` preset flow, ``flows.dynamic.ingest__podcast``
its nightly ingestion flow and ``flows.dynamic.part__podcast`` its part flow (some files of a
fanned-out batch, :mod:`flows.fanout`); ``-`` in a preset name becomes ``_`` (preset names never contain
``_``). Deployments use these as entry points, so a worker or ``serve`` subprocess rebuilds
the flow by name, user YAML presets (``PURESOUND_PRESETS_DIR``) included.
"""

from __future__ import annotations

INGEST_PREFIX = "ingest__"
PART_PREFIX = "part__"


def entry_name(preset_name: str, *, ingest: bool = False) -> str:
    """Attribute name of a preset's flow in this module.

    Parameters
    ----------
    preset_name : str
    ingest : bool

    Returns
    -------
    str
    """
    return (INGEST_PREFIX if ingest else "") + preset_name.replace("-", "_")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    from flows.presets import ingest_flow, part_flow, preset_flow
    from puresound.settings import PureSoundSettings
    from puresound_core.presets import load_presets

    build, preset_name = preset_flow, name
    for prefix, builder in ((INGEST_PREFIX, ingest_flow), (PART_PREFIX, part_flow)):
        if name.startswith(prefix):
            build, preset_name = builder, name.removeprefix(prefix)
    preset_name = preset_name.replace("_", "-")
    presets = load_presets(PureSoundSettings().presets_dir)
    if preset_name not in presets:
        raise AttributeError(f"no preset named {preset_name!r} (from {name!r})")
    return build(presets[preset_name])
