"""Router registry: one name -> one class, imported lazily so heavy routers cost nothing until used.

A new router is one file in ``routers/`` plus one line in :data:`ROUTERS`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from routers.base import Router, RouterError
from routers.extras import require_router

#: name -> "module:Class". Keep one line per router.
ROUTERS: dict[str, str] = {
    "random": "routers.baselines:RandomRouter",
    "cheapest": "routers.baselines:CheapestRouter",
    "strongest": "routers.baselines:StrongestRouter",
    "best-single": "routers.baselines:BestSingleRouter",
    "oracle": "routers.baselines:OracleRouter",
    "knn": "routers.knn:KNNRouter",
    "complexity": "routers.complexity:ComplexityRouter",
    "tryage": "routers.tryage:TryageRouter",
    "graph": "routers.graph:GraphRouter",
    "category": "routers.category:CategoryRouter",
    "irt": "routers.irt:IRTRouter",
    "linucb": "routers.linucb:LinUCBRouter",
}


def router_names() -> list[str]:
    """All registered router names, sorted."""
    return sorted(ROUTERS)


def get_router_class(name: str) -> type[Router]:
    """The class registered under ``name``; :class:`RouterError` naming the choices if unknown."""
    try:
        target = ROUTERS[name]
    except KeyError:
        raise RouterError(f"unknown router {name!r}; known: {', '.join(router_names())}") from None
    require_router(name)  # a clear "pip install 'poolgate[graph]'" instead of torch's ModuleNotFoundError
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Router)):
        raise RouterError(f"registry entry {name!r} -> {target} is not a Router subclass")
    return cls


def make_router(name: str, **params: Any) -> Router:
    """Instantiate the router registered under ``name`` with constructor ``params``."""
    return get_router_class(name)(**params)


def build_router(name: str, params: Mapping[str, Any] | None = None, seed: int | None = None) -> Router:
    """Instantiate router ``name``; ``seed`` is passed when its constructor takes one. Unknown params: RouterError."""
    cls = get_router_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    kwargs = dict(params or {})
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise RouterError(f"router {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(accepted) or '(none)'}")
    if seed is not None and "seed" in accepted:
        kwargs.setdefault("seed", seed)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RouterError(f"router {name!r}: bad parameters ({exc})") from None
