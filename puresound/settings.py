"""The one settings class (``PURESOUND_*`` environment variables), read at the edge."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PureSoundSettings(BaseSettings):
    """Pure Sound settings; every field can be set as ``PURESOUND_<FIELD>``.

    Attributes
    ----------
    output_dir : Path
        Where renditions and reports are published (``PURESOUND_OUTPUT_DIR``).
    state_dir : Path
        Work area: content-addressed renders that cached task results point to, and the
        default SQLite lineage database.
    database_url : str or None
        SQLAlchemy URL of the lineage database (``PURESOUND_DATABASE_URL``), e.g.
        ``postgresql+psycopg://user@host/puresound``; default SQLite in ``state_dir``.
    presets_dir : Path or None
        Folder of user YAML presets (``PURESOUND_PRESETS_DIR``).
    workers : int
        Files processed at once.
    """

    model_config = SettingsConfigDict(env_prefix="PURESOUND_", extra="ignore")

    output_dir: Path = Field(default=Path("puresound-out"), description="Published renditions and reports")
    state_dir: Path = Field(default=Path.home() / ".puresound", description="Render cache and default lineage DB")
    database_url: str | None = Field(default=None, description="Lineage database URL (SQLAlchemy)")
    presets_dir: Path | None = Field(default=None, description="Folder of user YAML presets")
    workers: int = Field(default=2, ge=1, le=32, description="Files processed at once")

    @property
    def lineage_url(self) -> str:
        """str: ``database_url``, or SQLite at ``state_dir/lineage.sqlite``."""
        if self.database_url:
            return self.database_url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.state_dir / 'lineage.sqlite').resolve()}"
