"""What a run works with, built once per process and passed down (Dagster's resources pattern).

Settings, the output storage (and its S3 client) and the lineage store are made once per
process, not inside every task call: a rendition's store, its report and its lineage rows
reuse the same S3 client and database engine. Worker processes build their own on first
use (clients are not picklable). The cache is keyed by the environment that configures
them (``PURESOUND_*``, ``AWS_*``, ``PREFECT_API_URL``), so a changed setting builds new ones.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field

from puresound.settings import PureSoundSettings, open_storage, s3_client
from puresound_core.lineage import LineageStore

_PREFIXES = ("PURESOUND_", "AWS_", "PREFECT_API_URL")


@dataclass
class Resources:
    """One process's clients for one configuration.

    Attributes
    ----------
    settings : PureSoundSettings
    """

    settings: PureSoundSettings
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _storages: dict = field(default_factory=dict, repr=False)
    _stores: dict = field(default_factory=dict, repr=False)
    _s3: object = field(default=None, repr=False)

    def storage(self, target: str):
        """The Storage of an output location (a local folder or ``s3://bucket/prefix``), made once.

        Parameters
        ----------
        target : str

        Returns
        -------
        puresound_core.storage.Storage
        """
        with self._lock:
            if target not in self._storages:
                self._storages[target] = open_storage(target, self.settings)
            return self._storages[target]

    def s3(self):
        """The S3 client of these settings (endpoint, region, retries, credentials), made once.

        Returns
        -------
        botocore.client.S3
            Thread-safe; shared by every task of this process.

        Raises
        ------
        StorageError
            When a configured ``AwsCredentials`` block cannot be loaded.
        """
        with self._lock:
            if self._s3 is None:
                self._s3 = s3_client(self.settings)
            return self._s3

    def lineage(self, database_url: str) -> LineageStore:
        """The LineageStore (engine + connection pool) of a database URL, made once.

        Parameters
        ----------
        database_url : str

        Returns
        -------
        LineageStore
        """
        with self._lock:
            if database_url not in self._stores:
                self._stores[database_url] = LineageStore(database_url)
            return self._stores[database_url]


def resources() -> Resources:
    """This process's :class:`Resources` for the current configuration.

    Returns
    -------
    Resources
    """
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_PREFIXES)))
    return _resources_for(key)


@functools.lru_cache(maxsize=8)
def _resources_for(_key: tuple) -> Resources:
    return Resources(settings=PureSoundSettings())
