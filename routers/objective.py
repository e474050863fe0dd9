"""The one objective every router's predictions go through: flags in, a ranking out.

utility[q, m] = w_quality * quality[q, m] - sum_k w_k * norm_k[q, m]

for k in {cost, size, recency, latency, verbosity}. Each attribute is normalized the same way for
every router: min-max across the *candidates of that query* (0 = best in the pool, 1 = worst), so a
weight of 1.0 trades the full quality range against the full attribute range of the pool. When all
candidates share a value (or it is unknown for all), that attribute contributes 0.

- cost: expected USD of the call = prompt_tokens x input price + expected output tokens x output price
  (the router's cost estimate when it has one; else the candidate's observed output length, else
  :data:`DEFAULT_OUTPUT_TOKENS`).
- size: parameters in billions (unknown -> the pool's median).
- recency: age in days from the newest candidate (unknown -> the oldest). A weight prefers newer models.
- latency: observed mean latency in ms (unknown -> the pool's median).
- verbosity: expected output tokens.

Hard constraints filter before scoring: ``min_context`` (and the prompt must fit the window),
required ``capabilities``, and ``max_cost_usd`` on the expected cost. If nothing is left,
:class:`ConstraintError` names the constraint that ruled out the last candidates.

Presets (GraphRouter's scenarios): ``quality-first`` (quality 1.0, cost 0.0), ``balanced``
(0.5 / 0.5) and ``cost-first`` (0.2 / 0.8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from routers.base import ModelCard, Prediction

#: output length assumed when neither the router nor the candidate says (tokens)
DEFAULT_OUTPUT_TOKENS = 256.0

WEIGHT_NAMES: tuple[str, ...] = ("quality", "cost", "size", "recency", "latency", "verbosity")
CONSTRAINT_NAMES: tuple[str, ...] = ("max_cost_usd", "min_context", "capabilities")


class FlagError(ValueError):
    """A flag is unknown or has a bad value; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class ConstraintError(ValueError):
    """No candidate satisfies the hard constraints; ``constraint`` names the one that ruled out the rest."""

    def __init__(self, message: str, constraint: str) -> None:
        super().__init__(message)
        self.constraint = constraint


@dataclass(frozen=True)
class Flags:
    """Weights (>= 0) and hard constraints for one decision."""

    quality: float = 1.0
    cost: float = 0.0
    size: float = 0.0
    recency: float = 0.0
    latency: float = 0.0
    verbosity: float = 0.0
    max_cost_usd: float | None = None
    min_context: int | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Flags | None = None) -> Flags:
        """Validate user-supplied flags (wire format) on top of ``base``; :class:`FlagError` on bad input."""
        if not isinstance(data, Mapping):
            raise FlagError("flags must be a JSON object", "flags")
        known = {f.name for f in fields(cls)}
        updates: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise FlagError(f"unknown flag {key!r}; known: {', '.join(sorted(known))}", key)
            updates[key] = _validate_flag(key, value)
        return replace(base or cls(), **updates)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "capabilities":
                v = sorted(v)
            out[f.name] = v
        return out


def _validate_flag(key: str, value: Any) -> Any:
    if key in WEIGHT_NAMES:
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise FlagError(f"flag {key!r} must be a number, got {value!r}", key)
        if value < 0:
            raise FlagError(f"flag {key!r} must be >= 0, got {value}", key)
        return float(value)
    if key == "max_cost_usd":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise FlagError(f"flag 'max_cost_usd' must be a number >= 0, got {value!r}", key)
        return float(value)
    if key == "min_context":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FlagError(f"flag 'min_context' must be an integer >= 0, got {value!r}", key)
        return value
    # capabilities
    if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value):
        raise FlagError(f"flag 'capabilities' must be a list of strings, got {value!r}", key)
    return frozenset(value)


PRESETS: dict[str, Flags] = {
    "quality-first": Flags(quality=1.0, cost=0.0),
    "balanced": Flags(quality=0.5, cost=0.5),
    "cost-first": Flags(quality=0.2, cost=0.8),
}


def preset(name: str) -> Flags:
    try:
        return PRESETS[name]
    except KeyError:
        raise FlagError(f"unknown objective preset {name!r}; known: {', '.join(PRESETS)}", "preset") from None


@dataclass
class Scores:
    """Everything :func:`score` computes for a batch: ``[n_queries, n_candidates]`` arrays."""

    utility: np.ndarray
    feasible: np.ndarray
    expected_cost_usd: np.ndarray
    quality: np.ndarray


def _minmax(values: np.ndarray) -> np.ndarray:
    """Min-max across the last axis; constant rows give zeros."""
    lo = values.min(axis=-1, keepdims=True)
    span = values.max(axis=-1, keepdims=True) - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (values - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out


def _fill(values: list[float | None], default: str) -> np.ndarray:
    known = [v for v in values if v is not None]
    if not known:
        return np.zeros(len(values))
    fill = float(np.median(known)) if default == "median" else float(max(known))
    return np.asarray([fill if v is None else v for v in values], dtype=np.float64)


def expected_cost(
    prediction: Prediction, candidates: Sequence[ModelCard], prompt_tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(expected cost USD, expected output tokens), each ``[n, m]``."""
    n, m = prediction.quality.shape
    if prediction.output_tokens is not None:
        out_tok = prediction.output_tokens.astype(np.float64)
    else:
        per_model = [c.output_tokens if c.output_tokens is not None else DEFAULT_OUTPUT_TOKENS for c in candidates]
        out_tok = np.broadcast_to(np.asarray(per_model, dtype=np.float64), (n, m))
    if prediction.cost_usd is not None:
        return prediction.cost_usd.astype(np.float64), out_tok
    p_in = np.asarray([c.input_price for c in candidates], dtype=np.float64) / 1e6
    p_out = np.asarray([c.output_price for c in candidates], dtype=np.float64) / 1e6
    cost = np.asarray(prompt_tokens, dtype=np.float64)[:, None] * p_in[None, :] + out_tok * p_out[None, :]
    return cost, out_tok


def score(
    prediction: Prediction,
    candidates: Sequence[ModelCard],
    flags: Flags,
    prompt_tokens: np.ndarray,
) -> Scores:
    """Utilities and feasibility for a batch of queries (vectorized; see the module docstring)."""
    n, m = prediction.quality.shape
    if m != len(candidates):
        raise ValueError(f"prediction has {m} candidates, {len(candidates)} given")
    quality = np.clip(prediction.quality.astype(np.float64), 0.0, 1.0)
    cost, out_tok = expected_cost(prediction, candidates, prompt_tokens)
    utility = flags.quality * quality
    if flags.cost:
        utility = utility - flags.cost * _minmax(cost)
    if flags.verbosity:
        utility = utility - flags.verbosity * _minmax(out_tok)
    static = {
        "size": _fill([c.size_b for c in candidates], "median"),
        "latency": _fill([c.latency_ms for c in candidates], "median"),
        "recency": _age_days(candidates),
    }
    for key, values in static.items():
        weight = getattr(flags, key)
        if weight:
            utility = utility - weight * _minmax(values)[None, :]
    feasible = np.ones((n, m), dtype=bool)
    return Scores(utility=utility, feasible=feasible, expected_cost_usd=cost, quality=quality)


def _age_days(candidates: Sequence[ModelCard]) -> np.ndarray:
    ords = [c.release_date.toordinal() if c.release_date else None for c in candidates]
    known = [o for o in ords if o is not None]
    if not known:
        return np.zeros(len(candidates))
    newest, oldest = max(known), min(known)
    return np.asarray([newest - (o if o is not None else oldest) for o in ords], dtype=np.float64)


def feasibility(
    candidates: Sequence[ModelCard],
    flags: Flags,
    prompt_tokens: float,
    expected_cost_usd: np.ndarray,
    required_capabilities: frozenset[str] = frozenset(),
) -> np.ndarray:
    """Boolean mask of candidates that pass every hard constraint for one query.

    Raises :class:`ConstraintError` naming the constraint that removed the last candidates.
    """
    mask = np.ones(len(candidates), dtype=bool)
    need_caps = flags.capabilities | required_capabilities
    checks: list[tuple[str, np.ndarray, str]] = []
    need_ctx = max(flags.min_context or 0, int(prompt_tokens))
    ctx_ok = np.asarray([c.context_window is None or c.context_window >= need_ctx for c in candidates])
    checks.append(("min_context", ctx_ok, f"a context window of at least {need_ctx} tokens"))
    if need_caps:
        cap_ok = np.asarray([need_caps <= c.capabilities for c in candidates])
        checks.append(("capabilities", cap_ok, f"capabilities {sorted(need_caps)}"))
    if flags.max_cost_usd is not None:
        cost_ok = expected_cost_usd <= flags.max_cost_usd
        checks.append(("max_cost_usd", cost_ok, f"an expected cost <= ${flags.max_cost_usd:g}"))
    for name, ok, what in checks:
        if not (mask & ok).any():
            raise ConstraintError(f"no backend in the pool satisfies {name}: none has {what}", name)
        mask &= ok
    return mask


def decide(
    prediction: Prediction,
    candidates: Sequence[ModelCard],
    flags: Flags,
    prompt_tokens: float,
    required_capabilities: frozenset[str] = frozenset(),
) -> tuple[list[int], Scores]:
    """Rank the candidates for one query (``prediction`` has one row): best first, infeasible dropped."""
    scores = score(prediction, candidates, flags, np.asarray([prompt_tokens], dtype=np.float64))
    mask = feasibility(candidates, flags, prompt_tokens, scores.expected_cost_usd[0], required_capabilities)
    scores.feasible[0] = mask
    util = np.where(mask, scores.utility[0], -np.inf)
    # stable tie-break: cheaper first, then pool order
    order = np.lexsort((np.arange(len(candidates)), scores.expected_cost_usd[0], -util))
    return [int(i) for i in order if mask[i]], scores


def choose_batch(
    prediction: Prediction,
    candidates: Sequence[ModelCard],
    flags: Flags,
    prompt_tokens: np.ndarray,
) -> np.ndarray:
    """Best candidate index per query for a batch (evaluation; no hard constraints)."""
    scores = score(prediction, candidates, flags, prompt_tokens)
    util = scores.utility
    best = util.max(axis=1, keepdims=True)
    # among ties, the cheapest
    tied_cost = np.where(np.isclose(util, best), scores.expected_cost_usd, np.inf)
    return np.asarray(tied_cost.argmin(axis=1), dtype=np.int64)
