"""Routing service: featurize a request once, ask the pool's router, let the shared objective rank.

A pool's router lives in a :class:`PoolRuntime`. Swapping a runtime (hot reload of a new router
version) is one dict assignment: requests already routed keep the runtime they started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import GatewayError
from gateway.pools import BackendConfig, PoolConfig, PoolFile
from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError
from routers.baselines import CheapestRouter
from routers.exploration import ROUTER_POLICY, Exploration, choose
from routers.extras import require_encoder
from routers.features import text_stats
from routers.objective import Calibration, ConstraintError, FlagError, Flags, decide, preset
from routers.registry import make_router

log = logging.getLogger("poolgate.routing")

#: ``await embed(text, encoder)`` -> the text's embedding by that encoder (see ``gateway.routing.embedding.Embedders``)
Embedder = Callable[[str, str], Awaitable[np.ndarray]]


@dataclass
class PoolRuntime:
    """A pool ready to route: its backends, their cards, the loaded router and default flags."""

    config: PoolConfig
    backends: list[BackendConfig]
    cards: list[ModelCard]
    router: Router
    router_version: str
    base_flags: Flags
    shadows: dict[str, Router] = field(default_factory=dict)
    shadow_versions: dict[str, str] = field(default_factory=dict)
    #: the draw of exploration (``routers.exploration``); seeded from the pool file when it says so
    rng: np.random.Generator = field(default_factory=np.random.default_rng)


@dataclass
class RouteDecision:
    """What routing decided for one request; ``candidates`` is what the log row stores."""

    pool: str | None
    router: str
    router_version: str | None
    ranking: list[BackendConfig]
    candidates: list[dict[str, Any]]
    flags: Flags | None
    fallback: bool
    router_error: str | None = None
    #: P(ranking[0] chosen) under ``policy`` ("router" or "explore:<name>"); 1.0 without exploration
    propensity: float = 1.0
    policy: str = ROUTER_POLICY
    #: the router's top choice (``ranking[0]`` unless exploration drew another): what pairwise judging compares
    top_choice: str | None = None


OPENAI_ONLY = frozenset({"openai"})
#: why a backend of each ``api`` cannot serve a request that leaves it out (the excluded candidate's reason)
API_ROUTES = {"openai": "api openai: the request uses Messages-only parameters (thinking, top_k, ...) that only an "
                        "api: anthropic backend serves",
              "anthropic": "api anthropic: the request needs what the Messages API has no equivalent for (n > 1, "
                           "logprobs, response_format, logit_bias, audio; embeddings)"}


def _wrong_api(model: str, backends: list[BackendConfig]) -> GatewayError:
    reasons = "; ".join(API_ROUTES[k] for k in sorted({b.api for b in backends}))
    return GatewayError(400, f"model {model!r}: no member can serve this route ({reasons})", param="model",
                        code="unsupported_route")


def load_router(config: PoolConfig, base_dir: Path | None = None) -> tuple[Router, str]:
    """Instantiate (and load the artifact of) a pool's router; returns (router, version label)."""
    if config.artifact is None:
        return make_router(config.router, **config.router_params), "builtin"
    path = config.artifact if config.artifact.is_absolute() or base_dir is None else base_dir / config.artifact
    router = Router.load(path)
    if router.name != config.router:
        raise RouterError(
            f"{path}: artifact holds router {router.name!r}, pool {config.name!r} wants {config.router!r}"
        )
    if router.requires_embeddings:  # before the first request: fitted on minilm, served without torch
        require_encoder(router.encoder_, f"pool {config.name!r}: {path.name} (fitted on {router.encoder_!r})")
    return router, path.stem


def member_cards(backends: list[BackendConfig], router: Router) -> list[ModelCard]:
    """The backends' cards, each ``quality`` (expected quality) filled from what the pool's router learned: a
    model's mean true quality on its training data (``Calibration.member_quality``); the pool file's ``quality:``
    stays where the router knows nothing of that backend. ``strongest`` and the caution anchor read it. A card
    without an output length gets the one the router's calibration assumed, so its lambdas price the same calls."""
    calibration = Calibration.of(router)
    learned, lengths = calibration.member_quality, calibration.member_output_tokens
    cards = [b.card() for b in backends]
    cards = [replace(c, quality=learned[c.name]) if c.name in learned else c for c in cards]
    return [replace(c, output_tokens=lengths[c.name]) if c.output_tokens is None and c.name in lengths else c
            for c in cards]


def build_runtime(pool_file: PoolFile, config: PoolConfig, base_dir: Path | None = None) -> PoolRuntime:
    backends = [pool_file.backend(m) for m in config.members]
    router, version = load_router(config, base_dir)
    base = preset(config.objective)
    base_flags = Flags.from_mapping(config.flags, base) if config.flags else base
    shadows = {name: make_router(name) for name in config.shadow_routers if name != config.router}
    return PoolRuntime(config, backends, member_cards(backends, router), router, version, base_flags, shadows,
                       rng=np.random.default_rng(config.exploration.seed))


class RoutingService:
    """Holds one :class:`PoolRuntime` per pool and turns a request into a ranked list of backends."""

    def __init__(self, pool_file: PoolFile, embedder: Embedder | None = None, base_dir: Path | None = None):
        self.pool_file = pool_file
        self.embedder = embedder
        self.base_dir = base_dir
        self.runtimes: dict[str, PoolRuntime] = {}
        self._backends = {b.name: b for b in pool_file.backends}

    async def features(self, router: Router, text: str, prompt_tokens: float) -> QueryFeatures:
        """One query's features for ``router``, with an embedding by the encoder it was fitted with if it needs one."""
        embeddings, encoder = None, None
        if not router.is_fitted:  # fail before embedding: e.g. a shadow router whose first version is not trained
            raise RouterError(f"{router.name} router is not fitted")
        if router.requires_embeddings:
            if self.embedder is None:
                raise RouterError("router needs embeddings but no featurizer is configured")
            encoder = router.encoder_
            embeddings = (await self.embedder(text, encoder))[None, :]
        return QueryFeatures(
            texts=[text], stats=text_stats([text]), prompt_tokens=np.asarray([prompt_tokens], dtype=np.float64),
            embeddings=embeddings, encoder=encoder,
        )

    @staticmethod
    async def predict(router: Router, features: QueryFeatures, cards: list[ModelCard]) -> Prediction:
        """``router.predict``, in a worker thread if the router says it is slow, else right here."""
        if router.slow_predict:
            return await asyncio.to_thread(router.predict, features, cards)
        return router.predict(features, cards)

    def encoders_needed(self) -> set[str]:
        """Encoders of the routers (and shadows) the pools serve now."""
        routers = [r for rt in self.runtimes.values() for r in (rt.router, *rt.shadows.values())]
        return {r.encoder_ for r in routers if r.requires_embeddings and r.is_fitted}

    def encoder_of(self, pool: str) -> str | None:
        """The encoder ``pool``'s router embeds requests with now (None: it embeds nothing, or no such pool)."""
        runtime = self.runtimes.get(pool)
        router = runtime.router if runtime is not None else None
        return router.encoder_ if router is not None and router.requires_embeddings and router.is_fitted else None

    def load(self) -> None:
        """Build every pool's runtime (raises :class:`RouterError` naming a bad artifact)."""
        self.runtimes = {p.name: build_runtime(self.pool_file, p, self.base_dir) for p in self.pool_file.pools}

    def swap_router(self, pool: str, router: Router, version: str) -> None:
        """Serve ``router`` for ``pool`` from the next request on (in-flight requests keep the old one)."""
        old = self.runtimes[pool]
        self.runtimes[pool] = replace(old, router=router, router_version=version,
                                      cards=member_cards(old.backends, router))

    def swap_shadow(self, pool: str, name: str, router: Router, version: str) -> None:
        """Run ``router`` (version ``version``) as ``pool``'s shadow router ``name`` from the next request on."""
        old = self.runtimes[pool]
        shadows, versions = {**old.shadows, name: router}, {**old.shadow_versions, name: version}
        self.runtimes[pool] = replace(old, shadows=shadows, shadow_versions=versions)

    def model_names(self) -> tuple[list[str], list[str]]:
        return list(self.runtimes), list(self._backends)

    async def route(
        self,
        model: str,
        prompt_text: str,
        prompt_tokens: int,
        required_capabilities: frozenset[str] = frozenset(),
        request_flags: Mapping[str, Any] | None = None,
        key_flags: Mapping[str, Any] | None = None,
        router_override: str | None = None,
        adjust_flags: Callable[[Flags], Flags] | None = None,
        apis: frozenset[str] = OPENAI_ONLY,
    ) -> RouteDecision:
        """Rank backends for one request. Flags: request > key > pool preset (each validated); then
        ``adjust_flags`` (the key's budget pressure on the cost weight), which the request cannot override.
        Only backends whose ``api`` is in ``apis`` may serve (``gateway.api.pipeline.chat_apis``); the others
        stay in the candidates, infeasible, with the reason."""
        runtime = self.runtimes.get(model)
        if runtime is None:
            backend = self._backends.get(model)
            if backend is None:
                raise GatewayError(
                    404, f"model {model!r} is neither a pool nor a backend; see GET /v1/models",
                    param="model", code="model_not_found",
                )
            if backend.api not in apis:
                raise _wrong_api(model, [backend])
            return RouteDecision(None, "direct", None, [backend], [{"backend": backend.name}], None, False,
                                 policy="direct")
        flags = runtime.base_flags
        try:
            if key_flags:
                flags = Flags.from_mapping(key_flags, flags)
            if request_flags:
                flags = Flags.from_mapping(request_flags, flags)
        except FlagError as exc:
            raise GatewayError(400, str(exc), param=f"poolgate.flags.{exc.param}", code="invalid_flag") from None
        if adjust_flags is not None:
            flags = adjust_flags(flags)
        router, version = runtime.router, runtime.router_version
        if router_override and router_override != router.name:
            router, version = self._override(router_override), "builtin"
        # a capability the request implies (tools, json, vision) filters only where the pool declares it at all,
        # unless the pool is strict (docs/routing.md, "Capabilities and context windows")
        strict = runtime.config.strict_capabilities
        if not strict:
            declared = frozenset().union(*(c.capabilities for c in runtime.cards))
            required_capabilities = required_capabilities & declared
        prediction, router_error = await self._predict(router, runtime, prompt_text, prompt_tokens)
        name = router.name if router_error is None else f"{router.name}>cheapest"
        try:
            calibration = Calibration.of(router) if router_error is None else Calibration()
            ranking, scores = decide(prediction, runtime.cards, flags, prompt_tokens, required_capabilities,
                                     calibration, strict=strict)
        except ConstraintError as exc:
            raise GatewayError(400, str(exc), param=f"poolgate.flags.{exc.constraint}", code="unsatisfiable") from None
        candidates = [
            {
                "backend": card.name,
                "quality": round(float(scores.quality[0, j]), 4),
                "utility": round(float(scores.utility[0, j]), 6),
                "expected_cost_usd": float(scores.expected_cost_usd[0, j]),
                "feasible": bool(scores.feasible[0, j]),
            }
            for j, card in enumerate(runtime.cards)
        ]
        if any(b.api not in apis for b in runtime.backends):
            ranking = [i for i in ranking if runtime.backends[i].api in apis]
            for card, b in zip(candidates, runtime.backends, strict=True):
                if b.api not in apis:
                    card["feasible"], card["excluded"] = False, API_ROUTES[b.api]
            if not ranking:
                raise _wrong_api(model, runtime.backends)
        # a caller that names a router gets that router's choice: no exploration, and the row says who chose
        exploration = None if router_override else self._exploration(runtime)
        picked = choose(ranking, [float(scores.utility[0, i]) for i in ranking], exploration, runtime.rng)
        if router_override:
            picked = replace(picked, policy=f"override:{router_override}")
        ordered = [runtime.backends[i] for i in picked.order]
        return RouteDecision(
            runtime.config.name, name, version, ordered, candidates, flags, runtime.config.fallback, router_error,
            picked.propensity, picked.policy, runtime.backends[ranking[0]].name,
        )

    @staticmethod
    def _exploration(runtime: PoolRuntime) -> Exploration | None:
        """The pool's exploration policy; None when off (``PoolConfig`` already refuses it under quality-first)."""
        config = runtime.config.exploration
        return config.policy_of() if config.share > 0 and runtime.config.objective != "quality-first" else None

    def _override(self, name: str) -> Router:
        try:
            router = make_router(name)
        except RouterError as exc:
            raise GatewayError(400, str(exc), param="poolgate.router", code="unknown_router") from None
        if router.evaluation_only or type(router).fit is not Router.fit:
            raise GatewayError(
                400, f"router {name!r} needs a trained artifact; set it on a pool instead",
                param="poolgate.router", code="router_not_servable",
            )
        return router

    async def _predict(
        self, router: Router, runtime: PoolRuntime, text: str, prompt_tokens: int
    ) -> tuple[Prediction, str | None]:
        """The router's prediction; on any router failure, the pool default (cheapest) and the reason."""
        try:
            features = await self.features(router, text, prompt_tokens)
            return await self.predict(router, features, runtime.cards), None
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("router %s failed for pool %s, using cheapest: %s", router.name, runtime.config.name, reason)
            fallback = CheapestRouter().predict(
                QueryFeatures([text], text_stats([text]), np.asarray([prompt_tokens], dtype=np.float64)),
                runtime.cards,
            )
            return fallback, reason
