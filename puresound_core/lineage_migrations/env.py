"""Alembic environment of the lineage database, run by :func:`puresound_core.lineage.migrate`.

The caller passes an open connection inside a transaction (``config.attributes["connection"]``),
already holding the migration lock, so migrations and the caller's checks are one transaction
on PostgreSQL (transactional DDL). SQLite runs in batch mode (copy-and-move for ALTERs).
"""

from alembic import context
from sqlmodel import SQLModel

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
