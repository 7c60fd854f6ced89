"""One row per rendition content at a URI, enforced by the database.

Duplicate (uri, sha256) rows that concurrent workers could insert before this revision are
folded into the earliest; a unique index then makes ``INSERT ... ON CONFLICT DO NOTHING``
the only way a rendition is recorded. The hand-rolled ``schema_version`` table is dropped:
Alembic's ``alembic_version`` replaces it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text(
        "DELETE FROM renditions WHERE id NOT IN "
        "(SELECT MIN(id) FROM renditions GROUP BY uri, sha256)"))
    op.create_index("uq_renditions_uri_sha256", "renditions", ["uri", "sha256"], unique=True)
    op.execute(sa.text("DROP TABLE IF EXISTS schema_version"))


def downgrade() -> None:
    op.drop_index("uq_renditions_uri_sha256", table_name="renditions")
