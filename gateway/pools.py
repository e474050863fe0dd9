"""The pool file: backends (OpenAI-compatible endpoints, or ``api: anthropic`` Messages API ones, with their
attributes and prices) and pools over them.

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
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.cache.config import AffinityConfig, CacheConfig
from routers.base import ModelCard
from routers.exploration import Exploration
from routers.registry import ROUTERS

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
KNOWN_CAPABILITIES = frozenset({"tools", "json", "vision", "streaming", "embeddings"})


class PoolFileError(ValueError):
    """The pool file is missing, not YAML, or invalid; the message names the key and line."""


class _RefError(ValueError):
    """A cross-reference error found by :class:`PoolFile`'s validator, with the location it is about (so the
    message can name that line, not the file's first)."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class BackendConfig(BaseModel):
    """One upstream model: an OpenAI-compatible endpoint, or (``api: anthropic``) an Anthropic Messages API one,
    to which ``POST /v1/messages`` is passed through untouched and chat requests are translated
    (``gateway.translate.to_anthropic``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://host:8000/v1 (api: anthropic: the "
                          "Messages API's, e.g. https://api.anthropic.com/v1)")
    api: Literal["openai", "anthropic"] = Field(
        default="openai", description="the API the backend speaks: openai (chat completions, completions, "
        "embeddings) or anthropic (Messages: /v1/messages passed through untouched, chat requests translated)")
    model: str = Field(min_length=1, description="upstream model id sent to the backend")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    input_price: float = Field(default=0.0, ge=0, description="USD per 1M prompt tokens")
    output_price: float = Field(default=0.0, ge=0, description="USD per 1M completion tokens")
    cached_input_price: float | None = Field(
        default=None, ge=0, description="USD per 1M prompt tokens read from the provider's prompt cache "
        "(prompt_tokens_details.cached_tokens, Anthropic cache_read_input_tokens); default: input_price")
    cache_write_price: float | None = Field(
        default=None, ge=0, description="USD per 1M prompt tokens written to the provider's prompt cache "
        "(Anthropic cache_creation_input_tokens); default: input_price")
    reasoning_price: float | None = Field(
        default=None, ge=0, description="USD per 1M reasoning tokens (completion_tokens_details.reasoning_tokens, "
        "part of the completion tokens); default: output_price")
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
        try:
            _ = urlsplit(v).port  # why: an out-of-range port passes the pattern and then fails every request
        except ValueError as exc:
            raise ValueError(f"bad port in {v!r} ({exc})") from None
        return v.rstrip("/")

    @field_validator("capabilities")
    @classmethod
    def _known_caps(cls, v: list[str]) -> list[str]:
        unknown = set(v) - KNOWN_CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(KNOWN_CAPABILITIES)}")
        return v

    @model_validator(mode="after")
    def _api_serves_capabilities(self) -> BackendConfig:
        if self.api == "anthropic" and "embeddings" in self.capabilities:
            raise ValueError(f"backend {self.name!r}: api anthropic serves /v1/messages only, not embeddings")
        return self

    def serves(self) -> str:
        """What the backend serves, in words (``poolgate pools validate``)."""
        if self.api == "anthropic":
            return ("api anthropic: POST /v1/messages passed through untouched; /v1/chat/completions, /v1/responses "
                    "and /v1/completions translated to Messages (not with n > 1, logprobs, response_format, "
                    "logit_bias, audio); no embeddings")
        return "api openai: every route (/v1/messages translated to chat completions)"

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


class JudgeConfig(BaseModel):
    """A pool's judge: a backend that scores a share of the pool's answers off the request path (docs/closed-loop.md,
    "The judge"); its verdicts are ``source: judge`` feedback rows, its calls' cost rows of their own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field(min_length=1, description="the backend (of this file) that judges")
    share: float = Field(default=0.1, ge=0, le=1, description="fraction of answered requests sent to the judge")
    max_usd_per_day: float | None = Field(default=None, ge=0, description="judge spend cap per UTC day (this "
                                          "gateway process, restored at start from the day's judge cost rows); "
                                          "over it, requests go unjudged until the next day")
    queue_size: int = Field(default=1000, ge=1, le=100_000, description="answers waiting for the judge; when full, "
                            "new ones are dropped (counted), never waited for")
    concurrency: int = Field(default=2, ge=1, le=64, description="judge calls in flight at once")
    pair_share: float = Field(default=0.0, ge=0, le=1, description="of the judged requests that exploration sent "
                              "to another backend than the router's top choice, the fraction for which the top "
                              "choice is also asked (off the request path, budgeted) and its answer judged too")


class ExplorationConfig(BaseModel):
    """A pool's exploration (``routers.exploration``): ``share`` of requests drawn from ``policy`` over the ranked
    feasible members instead of the top one; off (share 0) by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["epsilon", "softmax"] = "epsilon"
    share: float = Field(default=0.0, ge=0, le=1, description="fraction of requests that explore")
    temperature: float = Field(default=0.1, gt=0, description="softmax only: utility scale of the draw")
    seed: int | None = Field(default=None, description="seed of the draw (tests); None: fresh entropy")

    def policy_of(self) -> Exploration:
        return Exploration(self.policy, self.share, self.temperature)


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
    strict_capabilities: bool = Field(
        default=False, description="true: a backend lacks what it does not declare (a capability such as vision, "
        "a context window for min_context); false: a capability no member declares filters nothing, and an "
        "undeclared context window passes min_context")
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    judge: JudgeConfig | None = None
    cache: CacheConfig | None = Field(default=None, description="response cache (README, 'Response cache and "
                                      "session affinity'); None: off")
    affinity: AffinityConfig | None = Field(default=None, description="session affinity; None: off")

    @field_validator("judge")
    @classmethod
    def _judge_is_a_backend(cls, v: JudgeConfig | None, info: ValidationInfo) -> JudgeConfig | None:
        # the file's backend names come in the validation context (parse_pool_file), so the error has this line
        names = (info.context or {}).get("backends")
        if v is not None and names is not None and v.backend not in names:
            raise ValueError(f"judge backend {v.backend!r} is not a backend in this file")
        return v

    @model_validator(mode="after")
    def _no_exploration_when_quality_first(self) -> PoolConfig:
        # quality-first promises the best member every time: exploring would break that promise
        if self.objective == "quality-first" and self.exploration.share > 0:
            raise ValueError(f"pool {self.name!r}: exploration must stay off under objective quality-first "
                             "(set exploration.share to 0 or pick another objective)")
        return self


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
        for i, p in enumerate(self.pools):
            if p.name in names:
                raise _RefError(("pools", i, "name"), f"pool {p.name!r} has the same name as a backend")
            missing = [m for m in p.members if m not in names]
            if missing:
                raise _RefError(("pools", i, "members", p.members.index(missing[0])),
                                f"pool {p.name!r}: members {missing} are not backends in this file")
            if p.judge is not None and p.judge.backend not in names:
                raise _RefError(("pools", i, "judge"),
                                f"pool {p.name!r}: judge backend {p.judge.backend!r} is not a backend in this file")
            for key, r in [("router", p.router), *(("shadow_routers", r) for r in p.shadow_routers)]:
                if r not in ROUTERS:
                    raise _RefError(("pools", i, key), f"pool {p.name!r}: unknown router {r!r}; "
                                    f"known: {', '.join(sorted(ROUTERS))}")
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


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    """One line naming where the YAML broke, instead of PyYAML's multi-line dump."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    if "block" in problem or "mapping values are not allowed" in problem:  # PyYAML's words for bad indentation
        return (f"{where}: not valid YAML: this line's indentation does not line up with the lines above "
                f"(indent each level alike, list items as '- '; quote values holding ': ' or ' #')")
    what = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {what}"


def parse_pool_file(text: str, source: str = "<pool file>") -> PoolFile:
    """Validate pool-file YAML text. :class:`PoolFileError` lists each problem as ``source:line: key: msg``."""
    try:
        expanded = expand_env(text)
        root = yaml.compose(expanded)
        data = yaml.safe_load(expanded)
    except yaml.YAMLError as exc:
        raise PoolFileError(_yaml_message(exc, source)) from None
    if not isinstance(data, dict):
        raise PoolFileError(f"{source}: expected a mapping with 'backends' and 'pools'")
    try:
        backends = data.get("backends")
        names = [b.get("name") for b in backends if isinstance(b, dict)] if isinstance(backends, list) else None
        return PoolFile.model_validate(data, context={"backends": names})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            ref = (err.get("ctx") or {}).get("error")
            loc = ref.loc if isinstance(ref, _RefError) else tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(file)"
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {key}: {err['msg'].removeprefix('Value error, ')}")
        raise PoolFileError("\n".join(lines)) from None


def load_pool_file(path: str | Path) -> PoolFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PoolFileError(f"{path}: cannot read pool file ({exc.strerror or exc})") from None
    return parse_pool_file(text, str(path))


def lint_pool_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Problems that parse but fail later, as (errors, warnings) lines ``path:line: key: msg``.

    Errors: a learned router with no ``artifact:`` (every request would fall back to cheapest), an artifact
    file that is not there or does not load, a router or encoder whose extra is not installed
    (``poolgate[minilm]``, ``poolgate[graph]``). Warnings: an ``api_key_env`` variable not set here (requests
    would go upstream unauthenticated; it may well be set where the gateway runs)."""
    # why: the registry imports a router's module (a learned one may load numpy or torch) only for this check
    from gateway.routing.service import load_router
    from routers.base import RouterError
    from routers.extras import MissingExtraError
    from routers.registry import build_router

    path = Path(path)
    pf = load_pool_file(path)
    root = yaml.compose(expand_env(path.read_text(encoding="utf-8")))

    def at(loc: tuple[int | str, ...], msg: str) -> str:
        return f"{path}:{_line_of(root, loc)}: {'.'.join(map(str, loc))}: {msg}"

    errors, warnings = [], []
    for i, p in enumerate(pf.pools):
        if p.artifact is None:
            try:
                fitted = build_router(p.router, p.router_params).is_fitted
            except MissingExtraError as exc:
                errors.append(at(("pools", i, "router"), str(exc)))
                continue
            except RouterError as exc:
                errors.append(at(("pools", i, "router_params"), str(exc)))
                continue
            if not fitted:
                errors.append(at(("pools", i, "router"), f"router {p.router!r} learns from data and the pool has "
                                 "no artifact: (every request would fall back to cheapest); give artifact: FILE "
                                 "(poolgate train-offline), or serve a builtin router and promote a trained "
                                 "version (poolgate train --promote)"))
        elif not (p.artifact if p.artifact.is_absolute() else path.resolve().parent / p.artifact).exists():
            errors.append(at(("pools", i, "artifact"), f"no such file {p.artifact}"))
        else:
            try:
                load_router(p, path.resolve().parent)
            except MissingExtraError as exc:
                errors.append(at(("pools", i, "router"), str(exc)))
            except RouterError as exc:
                errors.append(at(("pools", i, "artifact"), str(exc)))
    for i, b in enumerate(pf.backends):
        if b.api_key_env and b.api_key_env not in os.environ:
            warnings.append(at(("backends", i, "api_key_env"), f"{b.api_key_env} is not set here: requests to "
                               f"{b.name} go upstream without an API key unless the gateway's environment sets it"))
    return errors, warnings


DEMO_POOL_PATH = Path(__file__).parent / "demo" / "pool.yaml"
