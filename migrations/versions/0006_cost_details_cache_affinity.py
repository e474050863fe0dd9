"""Exact cost, response cache and session affinity: token details, cache hits and the session on ``requests``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

``cached_tokens`` (input tokens the provider read from its prompt cache: OpenAI
``prompt_tokens_details.cached_tokens``, Anthropic ``cache_read_input_tokens``), ``cache_write_tokens`` (Anthropic
``cache_creation_input_tokens``) and ``reasoning_tokens`` (``completion_tokens_details.reasoning_tokens``), all
64-bit, 0 on older rows. ``cache`` (nullable string) says a response came from poolgate's own response cache
(``exact`` | ``semantic``; NULL when it did not) and ``cache_saved_usd`` what the upstream call would have cost.
``session_id`` (nullable string) is the conversation the request belonged to (the ``x-poolgate-session`` header
or a digest of the message-list prefix) and ``affinity`` whether the backend was taken from that session's
earlier turns instead of the router.

The downgrade drops the columns with plain ``ALTER TABLE ... DROP COLUMN`` (never a batch rebuild of
``requests``: with foreign keys on, SQLite would cascade the old table's DROP into ``feedback``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[object], str | None], ...] = (
    ("cached_tokens", sa.BigInteger(), "0"),
    ("cache_write_tokens", sa.BigInteger(), "0"),
    ("reasoning_tokens", sa.BigInteger(), "0"),
    ("cache", sa.String(16), None),
    ("cache_saved_usd", sa.Float(), "0"),
    ("session_id", sa.String(64), None),
    ("affinity", sa.Boolean(), "0"),
)


def upgrade() -> None:
    for name, type_, default in _COLUMNS:
        server_default = sa.false() if isinstance(type_, sa.Boolean) else default
        op.add_column(
            "requests",
            sa.Column(name, type_, nullable=default is None, server_default=server_default),
        )


def downgrade() -> None:
    for name, _, _ in reversed(_COLUMNS):
        op.drop_column("requests", name)
