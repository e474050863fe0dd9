"""API keys: creation (secret shown once, stored as SHA-256) and lookup with a short cache (:class:`KeyStore`).

Secrets are 256-bit random tokens, so a plain SHA-256 is enough to make a stolen table useless (a slow password
hash would only add milliseconds to every request). The request check (``Authorization: Bearer``, 401 as OpenAI
error JSON, the master key) is the FastAPI dependency ``gateway.api.deps.authenticate``; the master key (settings)
has no limits and is the only key the admin routes accept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import GatewayError
from gateway.limits.base import MAX_BUDGET_USD, MAX_RPM, MAX_TPM, PERIODS, LimitSpec, Period, to_nano
from gateway.store.models import ApiKey
from routers.objective import FlagError, Flags

log = logging.getLogger("poolgate.auth")

SECRET_PREFIX = "pg-"
MASTER_KEY_ID = "master"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """One API key as the gateway sees it (never the secret)."""

    id: str
    name: str
    key_prefix: str = ""
    budget_usd: float | None = None
    budget_period: Period = "month"
    rpm: int | None = None
    tpm: int | None = None
    pools: frozenset[str] | None = None
    default_flags: Mapping[str, Any] | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_master(self) -> bool:
        return self.id == MASTER_KEY_ID

    def limits(self) -> LimitSpec:
        budget = None if self.budget_usd is None else to_nano(self.budget_usd)
        return LimitSpec(self.id, self.rpm, self.tpm, budget, self.budget_period)

    def allows(self, pool: str) -> bool:
        return self.pools is None or pool in self.pools

    def as_dict(self) -> dict[str, Any]:
        """JSON view for the admin API and the CLI."""
        return {
            "id": self.id, "name": self.name, "key_prefix": self.key_prefix, "budget_usd": self.budget_usd,
            "budget_period": self.budget_period, "rpm": self.rpm, "tpm": self.tpm,
            "pools": sorted(self.pools) if self.pools is not None else None,
            "default_flags": dict(self.default_flags) if self.default_flags else None,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


MASTER = KeyRecord(MASTER_KEY_ID, "master key")


#: Bounds of a key's parameters (the admin API's model and the CLI both check them here).
MAX_KEY_NAME_CHARS = 200
MAX_KEY_POOLS = 100
MAX_POOL_NAME_CHARS = 256
#: default_flags are stored as JSON in every key row and merged into every request's flags.
MAX_FLAGS_JSON_CHARS = 4096


class KeyParamError(ValueError):
    """Bad key parameters; ``param`` names the parameter (the message does too)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _count(label: str, value: int | None, largest: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest):
        raise KeyParamError(f"{label} must be an integer between 1 and {largest}, got {value!r}", label)


def validate_key_params(
    name: str, budget_usd: float | None, period: str, rpm: int | None, tpm: int | None,
    pools: Sequence[str] | None, default_flags: Mapping[str, Any] | None,
) -> None:
    """Raise :class:`KeyParamError` naming the first bad parameter. Every bound keeps a value storable (no NUL, the
    database's 32-bit rpm/tpm) and every figure a limiter derives from it exact (``gateway.limits.base``)."""
    if not isinstance(name, str) or not name.strip():
        raise KeyParamError("name must not be empty", "name")
    if len(name) > MAX_KEY_NAME_CHARS:
        raise KeyParamError(f"name must be at most {MAX_KEY_NAME_CHARS} characters, got {len(name)}", "name")
    if "\x00" in name:
        raise KeyParamError("name must not contain NUL characters", "name")
    if budget_usd is not None and (isinstance(budget_usd, bool) or not isinstance(budget_usd, int | float)
                                   or not 0 <= budget_usd <= MAX_BUDGET_USD):
        raise KeyParamError(f"budget_usd must be a number between 0 and {MAX_BUDGET_USD:.0f}, got {budget_usd!r}",
                            "budget_usd")
    if period not in PERIODS:
        raise KeyParamError(f"period must be one of {', '.join(PERIODS)}, got {str(period)[:40]!r}", "period")
    _count("rpm", rpm, MAX_RPM)
    _count("tpm", tpm, MAX_TPM)
    if pools is not None and (isinstance(pools, str) or len(pools) > MAX_KEY_POOLS or not all(
            isinstance(p, str) and 0 < len(p) <= MAX_POOL_NAME_CHARS for p in pools)):
        raise KeyParamError(f"pools must be a list of at most {MAX_KEY_POOLS} pool names", "pools")
    if default_flags is not None:
        try:
            Flags.from_mapping(default_flags)
        except FlagError as exc:
            raise KeyParamError(f"default_flags: {exc}", "default_flags") from None
        encoded = json.dumps(dict(default_flags))
        if len(encoded) > MAX_FLAGS_JSON_CHARS:
            raise KeyParamError(f"default_flags must be at most {MAX_FLAGS_JSON_CHARS} characters of JSON, "
                                f"got {len(encoded)}", "default_flags")
        if "\\u0000" in encoded:
            raise KeyParamError("default_flags must not contain NUL characters", "default_flags")


def _stored_budget(value: float | None) -> float | None:
    """A budget read back from the table, within the bounds (a row written before they existed may hold 1e308,
    Infinity or NaN: such a budget is the largest there is, not a 500 on every request of the key)."""
    if value is None:
        return None
    if math.isnan(value) or value > MAX_BUDGET_USD:
        return MAX_BUDGET_USD
    return max(0.0, value)


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id, name=row.name, key_prefix=row.key_prefix, budget_usd=_stored_budget(row.budget_usd),
        budget_period=row.budget_period, rpm=row.rpm, tpm=row.tpm,
        pools=frozenset(row.pools) if row.pools is not None else None,
        default_flags=row.default_flags or None, created_at=row.created_at, revoked_at=row.revoked_at,
    )


class KeyStore:
    """API keys in the ``api_keys`` table, with a per-process cache of lookups (``cache_ttl_s``).

    A revocation made through this store (admin API) is seen at once by this process; other processes see it
    at once through the limiter's revocation marker (Redis), or within ``cache_ttl_s`` without Redis.
    """

    def __init__(self, engine: AsyncEngine, cache_ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    async def by_secret(self, secret: str) -> KeyRecord | None:
        """The key whose secret this is (revoked ones included), or None.

        When the database cannot be read, a key seen before is still served from the (expired) cache entry, so a
        database outage does not lock every caller out; a key never seen gets 503.
        """
        digest = hash_secret(secret)
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(ApiKey.__table__).where(ApiKey.key_hash == digest))).first()
        except (SQLAlchemyError, OSError) as exc:
            if hit is not None and hit[1] is not None:
                return hit[1]
            log.warning("API key lookup failed: %s", exc)
            raise GatewayError(503, "API keys cannot be checked right now (key database unavailable)",
                               code="key_store_unavailable", headers={"retry-after": "5"}) from None
        record = _record(row) if row is not None else None
        if len(self._cache) > 100_000:  # a flood of random secrets must not grow memory without bound
            self._cache.clear()
        self._cache[digest] = (now + self.cache_ttl_s, record)
        return record

    async def create(
        self, name: str, *, budget_usd: float | None = None, period: str = "month", rpm: int | None = None,
        tpm: int | None = None, pools: Sequence[str] | None = None, default_flags: Mapping[str, Any] | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key; returns (record, secret). The secret is not kept anywhere: show it once."""
        validate_key_params(name, budget_usd, period, rpm, tpm, pools, default_flags)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        digest = hash_secret(secret)
        values: dict[str, Any] = {
            "id": "key_" + secrets.token_hex(6), "name": name.strip(), "key_hash": digest,
            "key_prefix": secret[:10], "budget_usd": budget_usd, "budget_period": period, "rpm": rpm, "tpm": tpm,
            "pools": list(pools) if pools is not None else None,
            "default_flags": dict(default_flags) if default_flags else None,
            "created_at": datetime.now(UTC), "revoked_at": None,
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(ApiKey).values(**values))
        self._cache.pop(digest, None)
        return _record(SimpleNamespace(**values)), secret

    async def list(self, include_revoked: bool = True) -> list[KeyRecord]:
        query = select(ApiKey.__table__).order_by(ApiKey.created_at)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            return [_record(r) for r in (await conn.execute(query)).all()]

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ApiKey.__table__).where(ApiKey.id == key_id))).first()
        return _record(row) if row is not None else None

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Mark ``key_id`` revoked (idempotent); None when there is no such key."""
        async with self.engine.begin() as conn:
            await conn.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                               .values(revoked_at=datetime.now(UTC)))
        self._cache.clear()  # drop every cached record: the revoked one is among them under its hash
        return await self.get(key_id)


def is_master(secret: str, master_key: str | None) -> bool:
    """True when ``secret`` is the master key (compared in constant time)."""
    return bool(master_key) and hmac.compare_digest(secret.encode(), (master_key or "").encode())
