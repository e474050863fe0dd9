"""The one objective every router's predictions go through: flags in, a ranking out, traded in money.

For a query and each candidate m::

    utility[m] = quality * q[m] - lambda * cost_usd[m] - size * size_b[m] - recency * age_years[m]
                 - latency * latency_s[m] - verbosity * output_ktokens[m]

Every term is in its own unit, the same for every router and every pool; nothing is normalized per request:

- ``q``: the router's predicted quality in [0, 1] (probability of a right answer, or a score).
- ``lambda`` (flag ``cost``): quality points per USD of expected cost of the call. ``cost_usd`` = prompt tokens x
  input price + expected output tokens x output price (the router's own estimate when it has one; else the
  candidate's observed output length; else :data:`DEFAULT_OUTPUT_TOKENS`). lambda = 100 means one cent more per
  request must buy at least 0.01 (one point) of expected quality.
- ``size_b``: billions of parameters (unknown: the pool's median); ``age_years``: years behind the newest
  candidate (unknown: the oldest); ``latency_s``: observed mean latency in seconds (unknown: the pool's median);
  ``output_ktokens``: expected output tokens / 1000.

lambda comes from, in order: an explicit ``cost`` flag; else ``quality_target`` t in (0, 1], the fraction of the
pool's best member's quality to keep. A router fitted by poolgate's training carries an *operating curve*
(:class:`OperatingCurve`: for a grid of lambdas, the realized quality and cost of its choices on out-of-fold
training queries, relative to the best single member), and t resolves to the largest lambda whose curve still
keeps t -- the least expected cost that keeps t of the best member's quality. A router without a curve (the
baselines, an uncalibrated artifact) uses the documented rule ``lambda = (1 - t) / max_m cost_usd[m]``: paying
the dearest candidate's whole price is worth (1 - t) quality points, so a member r times dearer than another
must be predicted better by (1 - t)(1 - 1/r) -- a rule that still depends on the real price ratio (1.1x or 50x
count differently). Presets: ``quality-first`` (lambda 0), ``balanced`` (t = 0.97), ``cost-first`` (t = 0.90).

``caution`` (a margin in quality points per lambda, from the router's out-of-fold calibration, or 0): the ranking
departs from the *anchor* -- the candidate the objective picks from each member's mean training quality, i.e. the
best single choice at these flags -- only for a candidate whose utility beats the anchor's by more than the
margin (scaled by the router's per-query uncertainty when it reports one). This is where routers lose on queries
unlike their training data.

Hard constraints filter before scoring: ``min_context`` (and the prompt must fit the window), required
``capabilities``, and ``max_cost_usd`` on the expected cost. If nothing is left, :class:`ConstraintError` names
the constraint that ruled out the last candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from routers.base import ModelCard, Prediction
from routers.pricing import call_costs_usd

#: output length assumed when neither the router nor the candidate says (tokens)
DEFAULT_OUTPUT_TOKENS = 256.0
#: the attribute weights and their units (documented in docs/flags.md)
WEIGHT_NAMES: tuple[str, ...] = ("quality", "size", "recency", "latency", "verbosity")
CONSTRAINT_NAMES: tuple[str, ...] = ("max_cost_usd", "min_context", "capabilities")
#: quality targets of the presets (fraction of the best member's quality kept)
PRESET_TARGETS: dict[str, float | None] = {"quality-first": None, "balanced": 0.97, "cost-first": 0.90}
_DAYS_PER_YEAR = 365.25


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
    """Weights, the money trade-off and hard constraints for one decision (see the module docstring).

    ``cost`` is lambda (quality points per USD) when set; ``quality_target`` is used only when ``cost`` is
    ``None``; with neither, lambda is 0. ``budget_quality_target`` is set by the gateway under budget pressure
    (never by a user): lambda is then at least the lambda of that target."""

    quality: float = 1.0
    cost: float | None = 0.0
    quality_target: float | None = None
    size: float = 0.0
    recency: float = 0.0
    latency: float = 0.0
    verbosity: float = 0.0
    max_cost_usd: float | None = None
    min_context: int | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)
    budget_quality_target: float | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Flags | None = None) -> Flags:
        """Validate user-supplied flags (wire format) on top of ``base``; :class:`FlagError` on bad input.

        ``cost`` and ``quality_target`` are two ways to say one thing: a layer that sets one clears the other
        from the layers below, and a layer may not set both."""
        if not isinstance(data, Mapping):
            raise FlagError("flags must be a JSON object", "flags")
        known = {f.name for f in fields(cls)} - {"budget_quality_target"}
        updates: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise FlagError(f"unknown flag {key!r}; known: {', '.join(sorted(known))}", key)
            updates[key] = _validate_flag(key, value)
        if updates.get("cost") is not None and updates.get("quality_target") is not None:
            raise FlagError("give either 'cost' (lambda, quality per USD) or 'quality_target', not both", "cost")
        if updates.get("quality_target") is not None:
            updates.setdefault("cost", None)
        elif updates.get("cost") is not None:
            updates["quality_target"] = None
        return replace(base or cls(), **updates)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "capabilities":
                v = sorted(v)
            out[f.name] = v
        return out


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FlagError(f"flag {key!r} must be a finite number, got {value!r}", key)
    return float(value)


def _validate_flag(key: str, value: Any) -> Any:
    if key in WEIGHT_NAMES or key == "cost":
        if key == "cost" and value is None:
            return None
        v = _number(key, value)
        if v < 0:
            raise FlagError(f"flag {key!r} must be >= 0, got {v:g}", key)
        return v
    if key == "quality_target":
        if value is None:
            return None
        v = _number(key, value)
        if not 0.0 < v <= 1.0:
            raise FlagError(f"flag 'quality_target' is the fraction of the best member's quality to keep: "
                            f"a number in (0, 1], got {v:g}", key)
        return v
    if key == "max_cost_usd":
        if value is None:
            return None
        v = _number(key, value)
        if v < 0:
            raise FlagError(f"flag 'max_cost_usd' must be a number >= 0, got {value!r}", key)
        return v
    if key == "min_context":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
            raise FlagError(f"flag 'min_context' must be an integer >= 0, got {value!r}", key)
        return value
    # capabilities
    if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value):
        raise FlagError(f"flag 'capabilities' must be a list of strings, got {value!r}", key)
    return frozenset(value)


def preset(name: str) -> Flags:
    """The flags of objective preset ``name`` (:data:`PRESET_TARGETS`)."""
    if name not in PRESET_TARGETS:
        raise FlagError(f"unknown objective preset {name!r}; known: {', '.join(PRESET_TARGETS)}", "preset")
    target = PRESET_TARGETS[name]
    return Flags(cost=0.0) if target is None else Flags(cost=None, quality_target=target)


PRESETS: dict[str, Flags] = {name: preset(name) for name in PRESET_TARGETS}


# -- the operating curve ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatingCurve:
    """Realized outcome of a router's choices on out-of-fold training queries, per lambda (increasing).

    ``quality_fraction[i]`` / ``cost_fraction[i]``: mean true quality / cost of the choices at ``lambdas[i]``
    divided by the best single member's (the member of highest mean quality on the same queries); ``caution[i]``:
    the caution margin that gave the best realized utility at that lambda (empty: no caution)."""

    lambdas: tuple[float, ...]
    quality_fraction: tuple[float, ...]
    cost_fraction: tuple[float, ...]
    caution: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.lambdas)
        if n == 0 or len(self.quality_fraction) != n or len(self.cost_fraction) != n:
            raise ValueError("an operating curve needs equally many lambdas, quality and cost fractions (>= 1)")
        if self.caution and len(self.caution) != n:
            raise ValueError("an operating curve's caution margins must match its lambdas")
        if any(b < a for a, b in zip(self.lambdas, self.lambdas[1:], strict=False)) or self.lambdas[0] < 0:
            raise ValueError("operating curve lambdas must be >= 0 and increasing")

    def lambda_for(self, target: float) -> float:
        """The largest lambda whose (running-minimum) quality fraction still keeps ``target``; 0 if none does."""
        kept = np.minimum.accumulate(np.asarray(self.quality_fraction, dtype=np.float64))
        ok = np.flatnonzero(kept >= target - 1e-12)
        return float(self.lambdas[int(ok[-1])]) if len(ok) else 0.0

    def margin_at(self, lam: np.ndarray) -> np.ndarray:
        """Per lambda, the caution margin of the largest grid lambda at or below it (0 without margins)."""
        if not self.caution:
            return np.zeros_like(np.asarray(lam, dtype=np.float64))
        i = np.searchsorted(np.asarray(self.lambdas), np.asarray(lam, dtype=np.float64), side="right") - 1
        return np.asarray(self.caution, dtype=np.float64)[np.clip(i, 0, len(self.lambdas) - 1)]

    def as_dict(self) -> dict[str, list[float]]:
        return {"lambdas": list(self.lambdas), "quality_fraction": list(self.quality_fraction),
                "cost_fraction": list(self.cost_fraction), "caution": list(self.caution)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> OperatingCurve:
        return cls(tuple(map(float, data["lambdas"])), tuple(map(float, data["quality_fraction"])),
                   tuple(map(float, data["cost_fraction"])), tuple(map(float, data.get("caution", ()))))


@dataclass(frozen=True)
class Calibration:
    """What a router's training measured out of fold for the objective (stored in its artifact as
    ``calibration_``): the operating curve, the caution margin (quality points) and each training model's mean
    true quality (which defines the caution rule's anchor, the best single choice)."""

    curve: OperatingCurve | None = None
    caution: float = 0.0
    member_quality: Mapping[str, float] = field(default_factory=dict)
    #: each training model's mean output tokens on the training data: the length the curve's costs assumed, which
    #: the gateway uses for a backend whose own length it does not know (so that lambda means what it meant)
    member_output_tokens: Mapping[str, float] = field(default_factory=dict)

    def margin(self, lam: np.ndarray) -> np.ndarray:
        """Caution margin per query for the lambdas it resolved to: the curve's per-lambda margin, else ``caution``."""
        if self.curve is not None and self.curve.caution:
            return self.curve.margin_at(lam)
        return np.full(np.shape(lam), self.caution, dtype=np.float64)

    @property
    def cautious(self) -> bool:
        return self.caution > 0 or (self.curve is not None and any(m > 0 for m in self.curve.caution))

    def anchor_quality(self, candidates: Sequence[ModelCard]) -> np.ndarray | None:
        """Per candidate, its mean quality on the training data (else the card's ``quality``); ``None`` when
        some candidate has neither (then no anchor and no caution)."""
        out = [self.member_quality.get(c.name, c.quality) for c in candidates]
        return None if any(v is None for v in out) else np.asarray(out, dtype=np.float64)

    def as_dict(self) -> dict[str, Any]:
        return {"curve": None if self.curve is None else self.curve.as_dict(), "caution": self.caution,
                "member_quality": dict(self.member_quality), "member_output_tokens": dict(self.member_output_tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Calibration:
        """The calibration an artifact stored (``None`` or ``{}``: none)."""
        if not data:
            return NO_CALIBRATION
        curve = data.get("curve")
        return cls(curve=OperatingCurve.from_dict(curve) if curve else None, caution=float(data.get("caution", 0.0)),
                   member_quality={str(k): float(v) for k, v in (data.get("member_quality") or {}).items()},
                   member_output_tokens={str(k): float(v)
                                         for k, v in (data.get("member_output_tokens") or {}).items()})

    @classmethod
    def of(cls, router: Any) -> Calibration:
        """The calibration a (fitted) router carries, or none."""
        return cls.from_dict(getattr(router, "calibration_", None))


NO_CALIBRATION = Calibration()


def resolve_lambda(flags: Flags, calibration: Calibration, cost: np.ndarray) -> np.ndarray:
    """lambda per query (``[n]``) for ``flags`` (see the module docstring); ``cost`` is ``[n, m]`` USD."""
    n = cost.shape[0]

    def of_target(t: float) -> np.ndarray:
        if calibration.curve is not None:
            return np.full(n, calibration.curve.lambda_for(t))
        dearest = cost.max(axis=1) if cost.shape[1] else np.zeros(n)
        return np.where(dearest > 0, (1.0 - t) / np.where(dearest > 0, dearest, 1.0), 0.0)

    if flags.cost is not None:
        lam = np.full(n, flags.cost)
    elif flags.quality_target is not None:
        lam = of_target(flags.quality_target)
    else:
        lam = np.zeros(n)
    if flags.budget_quality_target is not None:
        lam = np.maximum(lam, of_target(flags.budget_quality_target))
    return lam


# -- scoring ---------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Everything :func:`score` computes for a batch: ``[n_queries, n_candidates]`` arrays, ``lam`` ``[n]``."""

    utility: np.ndarray
    feasible: np.ndarray
    expected_cost_usd: np.ndarray
    quality: np.ndarray
    lam: np.ndarray


def _fill(values: list[float | None], default: str) -> np.ndarray:
    known = [v for v in values if v is not None]
    if not known:
        return np.zeros(len(values))
    fill = float(np.median(known)) if default == "median" else float(max(known))
    return np.asarray([fill if v is None else v for v in values], dtype=np.float64)


def _age_years(candidates: Sequence[ModelCard]) -> np.ndarray:
    ords = [c.release_date.toordinal() if c.release_date else None for c in candidates]
    known = [o for o in ords if o is not None]
    if not known:
        return np.zeros(len(candidates))
    newest, oldest = max(known), min(known)
    return np.asarray([(newest - (o if o is not None else oldest)) / _DAYS_PER_YEAR for o in ords])


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
    return call_costs_usd(prompt_tokens, out_tok, candidates), out_tok


def score(prediction: Prediction, candidates: Sequence[ModelCard], flags: Flags, prompt_tokens: np.ndarray,
          calibration: Calibration = NO_CALIBRATION) -> Scores:
    """Utilities (before caution) and feasibility for a batch of queries (vectorized; see the module docstring)."""
    n, m = prediction.quality.shape
    if m != len(candidates):
        raise ValueError(f"prediction has {m} candidates, {len(candidates)} given")
    quality = np.clip(np.nan_to_num(prediction.quality.astype(np.float64), nan=0.0), 0.0, 1.0)
    cost, out_tok = expected_cost(prediction, candidates, prompt_tokens)
    lam = resolve_lambda(flags, calibration, cost)
    utility = flags.quality * quality - lam[:, None] * cost
    if flags.verbosity:
        utility = utility - flags.verbosity * out_tok / 1000.0
    # computed only for a weight that is set: two medians and a date scan per request were ~4 % of a cheapest
    # request's CPU at concurrency 32 (benchmarks/README.md, "Profile")
    static: dict[str, Callable[[], np.ndarray]] = {
        "size": lambda: _fill([c.size_b for c in candidates], "median"),
        "latency": lambda: _fill([c.latency_ms for c in candidates], "median") / 1000.0,
        "recency": lambda: _age_years(candidates),
    }
    for key, values in static.items():
        weight = getattr(flags, key)
        if weight:
            utility = utility - weight * values()[None, :]
    feasible = np.ones((n, m), dtype=bool)
    return Scores(utility=utility, feasible=feasible, expected_cost_usd=cost, quality=quality, lam=lam)


def cautious(utility: np.ndarray, anchor: np.ndarray, margin: float | np.ndarray,
             uncertainty: np.ndarray | None = None) -> np.ndarray:
    """Utilities after the caution rule: a candidate other than the anchor keeps its utility only where it beats
    the anchor's by more than ``margin`` (per query, x the candidate's uncertainty if given); else it drops just
    below the anchor."""
    margins = np.broadcast_to(np.asarray(margin, dtype=np.float64), (len(utility),))[:, None]
    if not (margins > 0).any():
        return utility
    rows = np.arange(len(utility))
    base = utility[rows, anchor][:, None]
    need = margins if uncertainty is None else margins * np.asarray(uncertainty, dtype=np.float64)
    keep = (utility - base > need) | (np.arange(utility.shape[1])[None, :] == anchor[:, None])
    # demoted candidates keep their order among themselves, below the anchor
    return np.where(keep, utility, base - 1e-9 * (1.0 + np.argsort(np.argsort(-utility, axis=1), axis=1)))


def anchor_choice(scores: Scores, mask: np.ndarray | None = None) -> np.ndarray:
    """Per query, the candidate the objective picks from the batch-average predicted quality (the best single
    choice at these flags), among feasible candidates; ties to the cheaper."""
    mean_q = scores.quality.mean(axis=0, keepdims=True) if len(scores.quality) else scores.quality
    util = scores.utility - scores.quality + mean_q
    if mask is not None:
        util = np.where(mask, util, -np.inf)
    return _argmax_cheapest(util, scores.expected_cost_usd)


def _argmax_cheapest(util: np.ndarray, cost: np.ndarray) -> np.ndarray:
    best = util.max(axis=1, keepdims=True)
    tied = np.where(np.isclose(util, best, rtol=0.0, atol=1e-12), cost, np.inf)
    return np.asarray(tied.argmin(axis=1), dtype=np.int64)


# -- decisions -------------------------------------------------------------------------------------
def feasibility(
    candidates: Sequence[ModelCard],
    flags: Flags,
    prompt_tokens: float,
    expected_cost_usd: np.ndarray,
    required_capabilities: frozenset[str] = frozenset(),
    strict: bool = False,
) -> np.ndarray:
    """Boolean mask of candidates that pass every hard constraint for one query.

    ``strict``: a candidate with no declared context window fails a ``min_context`` flag; otherwise it passes
    (the rule is named in the error either way). Raises :class:`ConstraintError` naming the constraint that removed
    the last candidates.
    """
    mask = np.ones(len(candidates), dtype=bool)
    need_caps = flags.capabilities | required_capabilities
    checks: list[tuple[str, np.ndarray, str]] = []
    need_ctx = max(flags.min_context or 0, int(prompt_tokens))
    # strict: an undeclared window fails an asked-for min_context; the prompt-fits check alone never fails it
    unknown_ok = not (strict and flags.min_context)
    ctx_ok = np.asarray([c.context_window >= need_ctx if c.context_window is not None else unknown_ok
                         for c in candidates])
    ctx_rule = ("strict_capabilities: an undeclared context_window fails" if strict
                else "an undeclared context_window passes")
    checks.append(("min_context", ctx_ok, f"a context window of at least {need_ctx} tokens ({ctx_rule})"))
    if need_caps:
        cap_ok = np.asarray([need_caps <= c.capabilities for c in candidates])
        cap_rule = " (strict_capabilities: only declared capabilities count)" if strict else ""
        checks.append(("capabilities", cap_ok, f"capabilities {sorted(need_caps)}{cap_rule}"))
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
    calibration: Calibration = NO_CALIBRATION,
    anchor_quality: np.ndarray | None = None,
    strict: bool = False,
) -> tuple[list[int], Scores]:
    """Rank the candidates for one query (``prediction`` has one row): best first, infeasible dropped.

    ``anchor_quality`` (``[m]``, default :meth:`Calibration.anchor_quality`): each candidate's mean quality, which
    defines the caution rule's anchor; without one, caution does not apply."""
    scores = score(prediction, candidates, flags, np.asarray([prompt_tokens], dtype=np.float64), calibration)
    mask = feasibility(candidates, flags, prompt_tokens, scores.expected_cost_usd[0], required_capabilities, strict)
    scores.feasible[0] = mask
    util = scores.utility
    if anchor_quality is None and calibration.cautious:
        anchor_quality = calibration.anchor_quality(candidates)
    if calibration.cautious and anchor_quality is not None:
        anchor_util = util - scores.quality + np.clip(anchor_quality, 0.0, 1.0)[None, :]
        anchor = _argmax_cheapest(np.where(mask, anchor_util, -np.inf), scores.expected_cost_usd)
        util = cautious(util, anchor, calibration.margin(scores.lam), prediction.uncertainty)
    scores.utility = util
    masked = np.where(mask, util[0], -np.inf)
    # stable tie-break: cheaper first, then pool order
    order = np.lexsort((np.arange(len(candidates)), scores.expected_cost_usd[0], -masked))
    return [int(i) for i in order if mask[i]], scores


def choose_batch(
    prediction: Prediction,
    candidates: Sequence[ModelCard],
    flags: Flags,
    prompt_tokens: np.ndarray,
    calibration: Calibration = NO_CALIBRATION,
    anchor_quality: np.ndarray | None = None,
) -> np.ndarray:
    """Best candidate index per query for a batch (evaluation; no hard constraints).

    Caution anchors on ``anchor_quality`` (``[m]``, default :meth:`Calibration.anchor_quality`), else on this
    batch's mean prediction."""
    scores = score(prediction, candidates, flags, prompt_tokens, calibration)
    util = scores.utility
    if anchor_quality is None and calibration.cautious:
        anchor_quality = calibration.anchor_quality(candidates)
    if calibration.cautious:
        if anchor_quality is None:
            anchor = anchor_choice(scores)
        else:
            anchor_util = util - scores.quality + np.clip(anchor_quality, 0.0, 1.0)[None, :]
            anchor = _argmax_cheapest(anchor_util, scores.expected_cost_usd)
        util = cautious(util, anchor, calibration.margin(scores.lam), prediction.uncertainty)
    return _argmax_cheapest(util, scores.expected_cost_usd)
