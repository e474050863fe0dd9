"""The pool file: backends (OpenAI-compatible endpoints with their attributes) and pools over them.

YAML, validated by pydantic. Errors name the bad key and its line. Strings may use ``${VAR}`` or
``${VAR:-default}``, expanded from the environment when the file is read. API keys are never inline:
a backend names the environment variable that holds its key (``api_key_env``).
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from routers.base import ModelCard
from routers.registry import ROUTERS

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
KNOWN_CAPABILITIES = frozenset({"tools", "json", "vision", "streaming", "embeddings"})


class PoolFileError(ValueError):
    """The pool file is missing, not YAML, or invalid; the message names the key and line."""


class BackendConfig(BaseModel):
    """One OpenAI-compatible upstream model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    model: str = Field(min_length=1, description="upstream model id sent to the backend")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    input_price: float = Field(default=0.0, ge=0, description="USD per 1M prompt tokens")
    output_price: float = Field(default=0.0, ge=0, description="USD per 1M completion tokens")
    size_b: float | None = Field(default=None, gt=0, description="parameters, billions")
    release_date: date | None = None
    context_window: int | None = Field(default=None, gt=0)
    capabilities: list[str] = Field(default_factory=list)
    description: str = ""
    quality: float | None = Field(
        default=None, ge=0, le=1,
        description="expected quality in [0, 1] (e.g. a benchmark score): what 'strongest' ranks by when the pool's "
                    "router was not trained on this backend")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0, description="longest silence while waiting for bytes")
    timeout_s: float = Field(default=600.0, gt=0, description="total time of one attempt, connect to last byte "
                             "(a stream's included): a backend trickling bytes cannot hold a request for ever")
    retries: int = Field(default=1, ge=0, le=10, description="extra tries on connect errors, 429 and 5xx")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("capabilities")
    @classmethod
    def _known_caps(cls, v: list[str]) -> list[str]:
        unknown = set(v) - KNOWN_CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(KNOWN_CAPABILITIES)}")
        return v

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def card(self) -> ModelCard:
        """The attributes a router sees."""
        return ModelCard(
            name=self.name,
            input_price=self.input_price,
            output_price=self.output_price,
            size_b=self.size_b,
            release_date=self.release_date,
            context_window=self.context_window,
            capabilities=frozenset(self.capabilities),
            description=self.description,
            quality=self.quality,
        )


class PoolConfig(BaseModel):
    """A named set of backends and the router that chooses among them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")
    members: list[str] = Field(min_length=1)
    router: str = "cheapest"
    router_params: dict[str, Any] = Field(default_factory=dict)
    artifact: Path | None = Field(default=None, description="fitted router file (learned routers)")
    objective: Literal["quality-first", "balanced", "cost-first"] = "balanced"
    flags: dict[str, Any] = Field(default_factory=dict, description="pool defaults on top of the preset")
    fallback: bool = True
    shadow_routers: list[str] = Field(default_factory=list)


class BreakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_threshold: int = Field(default=3, ge=1)
    reset_after_s: float = Field(default=10.0, gt=0)


class PoolFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: list[BackendConfig] = Field(min_length=1)
    pools: list[PoolConfig] = Field(default_factory=list)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @model_validator(mode="after")
    def _cross_refs(self) -> PoolFile:
        names = [b.name for b in self.backends]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate backend names {sorted(dup)}")
        pool_names = [p.name for p in self.pools]
        if len(set(pool_names)) != len(pool_names):
            raise ValueError("duplicate pool names")
        for p in self.pools:
            if p.name in names:
                raise ValueError(f"pool {p.name!r} has the same name as a backend")
            missing = [m for m in p.members if m not in names]
            if missing:
                raise ValueError(f"pool {p.name!r}: members {missing} are not backends in this file")
            for r in [p.router, *p.shadow_routers]:
                if r not in ROUTERS:
                    raise ValueError(f"pool {p.name!r}: unknown router {r!r}; known: {', '.join(sorted(ROUTERS))}")
        return self

    def backend(self, name: str) -> BackendConfig:
        return next(b for b in self.backends if b.name == name)

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)


def expand_env(text: str) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}`` with the environment's values."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise PoolFileError(f"environment variable {m.group(1)} is not set (referenced as {m.group(0)})")
            return m.group(2)
        return value

    return _ENV_REF.sub(sub, text)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at pydantic location ``loc`` (deepest node found)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
            if nxt is None:  # the key itself may be wrong: point at the mapping
                return line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def parse_pool_file(text: str, source: str = "<pool file>") -> PoolFile:
    """Validate pool-file YAML text. :class:`PoolFileError` lists each problem as ``source:line: key: msg``."""
    try:
        expanded = expand_env(text)
        root = yaml.compose(expanded)
        data = yaml.safe_load(expanded)
    except yaml.YAMLError as exc:
        raise PoolFileError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PoolFileError(f"{source}: expected a mapping with 'backends' and 'pools'")
    try:
        return PoolFile.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(file)"
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {key}: {err['msg']}")
        raise PoolFileError("\n".join(lines)) from None


def load_pool_file(path: str | Path) -> PoolFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PoolFileError(f"{path}: cannot read pool file ({exc.strerror or exc})") from None
    return parse_pool_file(text, str(path))


DEMO_POOL_PATH = Path(__file__).parent / "demo" / "pool.yaml"
