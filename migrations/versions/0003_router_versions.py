"""Router versions: ``router_versions`` (one row per trained router artifact of a pool; which one is live).

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Frozen copy of the schema at this revision (no imports from gateway.store.models, which will move on).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json(nullable: bool) -> sa.JSON:
    return sa.JSON(none_as_null=nullable).with_variant(postgresql.JSONB(none_as_null=nullable), "postgresql")


def upgrade() -> None:
    op.create_table(
        "router_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("router", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("params", _json(True), nullable=True),
        sa.Column("metrics", _json(False), nullable=False),
        sa.Column("datasets", _json(True), nullable=True),
        sa.Column("data_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("data_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('candidate', 'live', 'retired', 'rolled_back')", name=op.f("ck_router_versions_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_router_versions")),
        sa.UniqueConstraint("pool", "version", name=op.f("uq_router_versions_pool")),
    )
    op.create_index(op.f("ix_router_versions_pool"), "router_versions", ["pool"])


def downgrade() -> None:
    op.drop_index(op.f("ix_router_versions_pool"), table_name="router_versions")
    op.drop_table("router_versions")
