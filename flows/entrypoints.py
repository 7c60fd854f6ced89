"""Module-level flows of the built-in presets, for ``prefect.yaml`` entry points and workers.

``flows/entrypoints.py:podcast`` is the ``podcast`` preset flow, ``ingest_podcast`` its nightly
ingestion flow, and so on (``-`` in a preset name becomes ``_``). User YAML presets are
served by ``puresound serve``, which builds their flows at start-up.
"""

from __future__ import annotations

from flows.presets import ingest_flow, preset_flow
from puresound_core.presets import BUILTIN_PRESETS

podcast = preset_flow(BUILTIN_PRESETS["podcast"])
music_streaming = preset_flow(BUILTIN_PRESETS["music-streaming"])
audiobook_acx = preset_flow(BUILTIN_PRESETS["audiobook-acx"])
broadcast_r128 = preset_flow(BUILTIN_PRESETS["broadcast-r128"])
archive_flac = preset_flow(BUILTIN_PRESETS["archive-flac"])
voice = preset_flow(BUILTIN_PRESETS["voice"])

ingest_podcast = ingest_flow(BUILTIN_PRESETS["podcast"])
ingest_music_streaming = ingest_flow(BUILTIN_PRESETS["music-streaming"])
ingest_audiobook_acx = ingest_flow(BUILTIN_PRESETS["audiobook-acx"])
ingest_broadcast_r128 = ingest_flow(BUILTIN_PRESETS["broadcast-r128"])
ingest_archive_flac = ingest_flow(BUILTIN_PRESETS["archive-flac"])
ingest_voice = ingest_flow(BUILTIN_PRESETS["voice"])
