"""Exploration and judge labels: ``requests.propensity`` and ``requests.policy``; ``feedback.source``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``propensity`` (nullable float) is the probability with which the request's backend was chosen (1.0 when the pool
does not explore; NULL for rows written before this revision, whose propensity is unknown), ``policy`` (nullable
string) which policy chose it (``router``, ``explore:epsilon``, ``explore:softmax``). ``feedback`` gains ``source``
(``user`` | ``judge``, NOT NULL, existing rows are ``user``) and its primary key becomes ``(request_id, source)``, so
a judge label and a human label of one request coexist (readers let the human one win).

The downgrade drops judge labels (the old key holds one label per request) before restoring the old key; human
labels and request rows are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("propensity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("policy", sa.String(), nullable=True))
    with op.batch_alter_table("feedback", recreate="always") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="user"))
        batch.drop_constraint("pk_feedback", type_="primary")
        batch.create_primary_key("pk_feedback", ["request_id", "source"])
        batch.create_check_constraint("ck_feedback_source", "source IN ('user', 'judge')")


def downgrade() -> None:
    op.execute("DELETE FROM feedback WHERE source <> 'user'")
    with op.batch_alter_table("feedback", recreate="always") as batch:
        batch.drop_constraint("ck_feedback_source", type_="check")
        batch.drop_constraint("pk_feedback", type_="primary")
        batch.create_primary_key("pk_feedback", ["request_id"])
        batch.drop_column("source")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 has it), never a batch rebuild of ``requests``: with
    # foreign keys on, SQLite's DROP TABLE of the old copy would cascade into ``feedback`` and delete every label.
    op.drop_column("requests", "policy")
    op.drop_column("requests", "propensity")
