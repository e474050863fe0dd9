"""A pool's response-cache and session-affinity options (the pool file's ``cache:`` and ``affinity:`` blocks).

Both are off unless the pool file turns them on: a cache serves an earlier answer instead of asking a backend, and
affinity overrides the router on later turns, so neither may change what an existing pool does without being asked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The encoders a semantic cache may embed with (``gateway.routing.embedding.Embedders``).
ENCODERS = ("minilm", "minilm-static")


class SemanticCacheConfig(BaseModel):
    """Semantic lookup: an answer to a question whose embedding is at least ``threshold`` cosine-similar, asked
    with the same everything else (earlier messages, parameters, flags), by the same tenant, of the same pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(gt=0, le=1, description="least cosine similarity of the last user messages for a hit")
    requests: Literal["all", "marked"] = Field(
        default="all", description="all: every cacheable request of the pool; marked: only requests whose body "
        "says poolgate: {cache: true}")
    encoder: Literal["minilm", "minilm-static"] | None = Field(
        default=None, description="None: the pool router's own encoder (its request embedding is reused), "
        "minilm-static when the router embeds nothing")
    max_scan: int = Field(default=1000, ge=1, le=100_000, description="most recent entries compared per lookup "
                          "(per tenant, pool and conversation context): the bound on a lookup's work")


class CacheConfig(BaseModel):
    """The pool's response cache: exact match on the normalized request, optionally semantic (``semantic:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exact: bool = True
    semantic: SemanticCacheConfig | None = None
    ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86400, description="an entry is served this long")
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000, description="entries kept (in process: in all; "
                             "Redis: per tenant), least recently used dropped first")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="in process: bytes of entries kept in all")
    max_entry_bytes: int = Field(default=1024 * 1024, ge=256, description="larger answers are not cached")
    sampled: bool = Field(
        default=False, description="also cache requests that sample (temperature unset or above 0, which is every "
        "provider's default): their answer would differ on a second call; a request marked poolgate: {cache: true} "
        "is cached either way")

    @model_validator(mode="after")
    def _something_on(self) -> CacheConfig:
        if not self.exact and self.semantic is None:
            raise ValueError("cache: exact is false and there is no semantic: block, so nothing would be cached "
                             "(remove cache: to turn the cache off)")
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError(f"cache: max_entry_bytes ({self.max_entry_bytes}) is over max_bytes ({self.max_bytes})")
        return self


class AffinityConfig(BaseModel):
    """Session affinity: later turns of a conversation go to the backend that answered its earlier turns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_s: float = Field(default=1800.0, gt=0, le=7 * 86400, description="a session sticks this long after its "
                         "last turn")
    max_sessions: int = Field(default=100_000, ge=1, le=10_000_000, description="in process: sessions kept, least "
                              "recently used dropped first (Redis: expiry only)")
    derive: bool = Field(default=True, description="without an x-poolgate-session header, recognize a "
                         "conversation by the digest of its messages before the last user message")
