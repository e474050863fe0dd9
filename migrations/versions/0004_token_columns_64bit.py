"""Token counts 64-bit and ``usage_estimated``: ``requests.prompt_tokens``/``completion_tokens`` become BIGINT (a
count over 2^31 was refused by PostgreSQL and the row lost to ``rejected.jsonl``), and a new NOT NULL boolean
``usage_estimated`` (false for existing rows) says the gateway counted tokens itself because the backend sent no
usage or implausible counts.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04

SQLite stores every INTEGER in up to 8 bytes already; its column types change too (batch mode rebuilds the
table) so that both databases match the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for column in ("prompt_tokens", "completion_tokens"):
            batch.alter_column(column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
        batch.add_column(sa.Column("usage_estimated", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # counts over 2^31 - 1 cannot go back into INTEGER on PostgreSQL: they are capped first
    if op.get_bind().dialect.name == "postgresql":
        for column in ("prompt_tokens", "completion_tokens"):
            op.execute(f"UPDATE requests SET {column} = 2147483647 WHERE {column} > 2147483647")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("usage_estimated")
        for column in ("prompt_tokens", "completion_tokens"):
            batch.alter_column(column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
