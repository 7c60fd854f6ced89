"""The first lineage schema: sources, where they were seen, analyses, runs, renditions.

Exactly what the hand-rolled migration 1 of releases before Alembic created, so a database
made by them is stamped at this revision and upgraded from here.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("probe_json", sa.String(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False))
    op.create_index("ix_sources_sha256", "sources", ["sha256"], unique=True)
    op.create_table(
        "source_locations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uri", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("etag", sa.String(), nullable=True),
        sa.Column("version_id", sa.String(), nullable=True),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("uri", "sha256"))
    op.create_index("ix_source_locations_sha256", "source_locations", ["sha256"])
    op.create_index("ix_source_locations_uri", "source_locations", ["uri"])
    op.create_table(
        "analyses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("code_version", sa.String(), nullable=False),
        sa.Column("report_json", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("source_sha256", "code_version"))
    op.create_index("ix_analyses_source_sha256", "analyses", ["source_sha256"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("flow_run_id", sa.String(), nullable=False),
        sa.Column("preset_name", sa.String(), nullable=False),
        sa.Column("preset_version", sa.String(), nullable=False),
        sa.Column("preset_fingerprint", sa.String(), nullable=False),
        sa.Column("package_version", sa.String(), nullable=False),
        sa.Column("pyav_version", sa.String(), nullable=False),
        sa.Column("ffmpeg_version", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(), nullable=False))
    op.create_index("ix_runs_flow_run_id", "runs", ["flow_run_id"])
    op.create_table(
        "renditions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("preset_name", sa.String(), nullable=False),
        sa.Column("preset_version", sa.String(), nullable=False),
        sa.Column("rendition_name", sa.String(), nullable=False),
        sa.Column("uri", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("codec_json", sa.String(), nullable=False),
        sa.Column("integrated_lufs", sa.Float(), nullable=True),
        sa.Column("true_peak_dbtp", sa.Float(), nullable=True),
        sa.Column("lra_lu", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False))
    for column in ("preset_name", "uri", "source_sha256", "run_id", "sha256"):
        op.create_index(f"ix_renditions_{column}", "renditions", [column])


def downgrade() -> None:
    for table in ("renditions", "runs", "analyses", "source_locations", "sources"):
        op.drop_table(table)
