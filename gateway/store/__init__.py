"""The log store: one row per request (and feedback labels), written off the request path.

``make_engine`` -> ``upgrade`` (Alembic) -> ``LogWriter(engine, settings)``: ``start``, ``submit``, ``stop``;
``ping`` for readiness checks.
"""

from gateway.store.db import StoreError, current_revision, downgrade, make_engine, ping, upgrade, upgrade_embedded
from gateway.store.models import REQUEST_COLUMNS, Base, Feedback, Request
from gateway.store.writer import LogWriter

__all__ = [
    "REQUEST_COLUMNS",
    "Base",
    "Feedback",
    "LogWriter",
    "Request",
    "StoreError",
    "current_revision",
    "downgrade",
    "make_engine",
    "ping",
    "upgrade",
    "upgrade_embedded",
]
