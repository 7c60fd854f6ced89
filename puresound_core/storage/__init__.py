"""Where renditions and reports are published: a small Storage protocol and its backends.

Keys are ``/``-separated relative paths (``podcast/episode-1a2b3c4d/mp3-128k.mp3``).
Every write is atomic (temporary object + rename / single PUT) and returns the SHA-256 of
what was stored, so a reader can check it. Sources are never written through a Storage.
"""

from __future__ import annotations

from .base import Storage, StoredObject, sha256_file
from .local import LocalStorage, list_local_files

__all__ = ["LocalStorage", "Storage", "StoredObject", "list_local_files", "sha256_file"]
