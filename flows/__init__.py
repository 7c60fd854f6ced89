"""One Prefect flow per preset, plus the batch / ingest flow (issue 3)."""
