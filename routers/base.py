"""The router contract: features in, quality (and optionally cost) predictions out.

A router *estimates*; :func:`routers.objective.decide` *decides*. Every router is scored on the
same footing and the user's flags apply to all of them alike.

Routers are pure: no HTTP, no database, no module-level state. Parameters go in ``__init__``
(which does no work), learning happens in :meth:`Router.fit` (which returns ``self``), and a fitted
router round-trips through :meth:`Router.save` / :meth:`Router.load` as one artifact file of arrays and JSON
(:mod:`routers.artifact`; never a pickle).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from routers import artifact
from routers.encoders.static import ENCODER_NAME as STATIC_ENCODER
from routers.encoders.static import TABLE_VERSION as STATIC_TABLE_VERSION
from routers.pricing import cost_usd

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset


@dataclass(frozen=True)
class ModelCard:
    """What a router may know about a candidate model: its attributes, never only an index.

    Prices are USD per 1M tokens. ``size_b`` is billions of parameters. ``latency_ms`` and
    ``output_tokens`` are observed averages (from logs or datasets) when known.
    """

    name: str
    input_price: float = 0.0
    output_price: float = 0.0
    size_b: float | None = None
    release_date: date | None = None
    context_window: int | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)
    description: str = ""
    latency_ms: float | None = None
    output_tokens: float | None = None
    #: expected quality in [0, 1] when known without a router (pool metadata, e.g. a benchmark score); ``strongest``
    #: ranks by it and the caution rule anchors on it for models a router was not trained on
    quality: float | None = None

    def cost_usd(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for one call with the given token counts at this model's prices (:func:`routers.pricing.cost_usd`)."""
        return cost_usd(self, prompt_tokens, completion_tokens)


@dataclass
class QueryFeatures:
    """A batch of featurized queries.

    ``embeddings`` is ``[n, d]`` float32 (unit-normalized sentence embeddings) or ``None`` when the
    caller did not compute them (routers whose ``requires_embeddings`` is False never need them).
    ``stats`` is ``[n, k]`` cheap text statistics (see :mod:`routers.features`).
    ``prompt_tokens`` is the prompt length in tokens per query.
    ``encoder`` names the sentence encoder that made ``embeddings`` (``minilm``, ``minilm-static``), when known.
    """

    texts: list[str]
    stats: np.ndarray
    prompt_tokens: np.ndarray
    embeddings: np.ndarray | None = None
    encoder: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int] | np.ndarray) -> QueryFeatures:
        """The rows ``idx`` of this batch, as a new batch."""
        ix = np.asarray(idx, dtype=np.int64)
        return QueryFeatures(
            texts=[self.texts[i] for i in ix],
            stats=self.stats[ix],
            prompt_tokens=self.prompt_tokens[ix],
            embeddings=None if self.embeddings is None else self.embeddings[ix],
            encoder=self.encoder,
        )


@dataclass
class Prediction:
    """Per-query, per-candidate estimates.

    ``quality`` is ``[n_queries, n_candidates]`` in [0, 1]. ``cost_usd`` (USD per call), ``output_tokens`` and
    ``uncertainty`` are optional: when a router does not model them the objective estimates cost
    from the candidates' prices and their observed or default output length.
    """

    quality: np.ndarray
    cost_usd: np.ndarray | None = None
    output_tokens: np.ndarray | None = None
    #: optional relative uncertainty of each quality estimate (>= 0, about 1 on average; e.g. an ensemble's spread
    #: over its mean spread): the objective's caution margin is scaled by it
    uncertainty: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.quality.ndim != 2:
            raise ValueError(f"quality must be 2-D [queries, candidates], got shape {self.quality.shape}")
        for name in ("cost_usd", "output_tokens", "uncertainty"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != self.quality.shape:
                raise ValueError(f"{name} shape {arr.shape} != quality shape {self.quality.shape}")


class RouterError(Exception):
    """A router cannot be fitted, loaded or applied as asked (message says why)."""


class Router(ABC):
    """Base class of every router. Subclasses set ``name`` and implement :meth:`predict`.

    ``requires_embeddings``: the gateway computes sentence embeddings only for routers that say so.
    ``evaluation_only``: routers such as the oracle that read the answers; never served.
    ``slow_predict``: one query's ``predict`` takes long enough (a millisecond or more) that the gateway runs it in a
    worker thread rather than on its event loop; a hop to a thread costs more than a cheap prediction.
    """

    name: ClassVar[str] = ""
    requires_embeddings: ClassVar[bool] = False
    evaluation_only: ClassVar[bool] = False
    slow_predict: ClassVar[bool] = False

    #: set by ``fit``: the model names seen in training (empty for routers that need no training)
    models_: list[str]
    #: set by ``fit`` of routers that need embeddings: the sentence encoder that made them (``QueryFeatures.encoder``)
    encoder_: str = "minilm"
    #: SHA-256 of the artifact file this router was loaded from (``None`` when it was built in this process)
    artifact_sha256: str | None = None
    #: set by training (``training.calibrate``): the out-of-fold calibration the objective reads
    #: (``routers.objective.Calibration.from_dict``); routers built without it get the objective's defaults
    calibration_: dict[str, Any]

    def fit(self, dataset: RoutingDataset) -> Self:
        """Learn from a dataset. Baselines that need no data keep this default."""
        self.models_ = list(dataset.models)
        return self

    @abstractmethod
    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        """Estimate each candidate's quality (and optionally cost) for each query."""

    @property
    def is_fitted(self) -> bool:
        """True for routers that need no training, and for trained ones (``fit`` sets ``models_``)."""
        return type(self).fit is Router.fit or hasattr(self, "models_")

    def _record_encoder(self, dataset: RoutingDataset) -> None:
        """Remember which encoder made the training embeddings (call from ``fit``)."""
        feats = dataset.features
        self.encoder_ = feats.encoder if feats is not None and feats.encoder else "minilm"

    def _check_encoder(self, features: QueryFeatures) -> None:
        """Refuse embeddings from another encoder than the one seen in ``fit`` (call from ``predict``):
        vectors of two encoders share a shape but not a space, so a mix-up would route silently at random."""
        if features.encoder is not None and features.encoder != self.encoder_:
            raise RouterError(
                f"router {self.name!r} was fitted on {self.encoder_!r} embeddings, got {features.encoder!r} ones"
            )

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (sklearn habit), for reports and artifact metadata."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self" and hasattr(self, p)}

    # -- artifacts -------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The fitted state an artifact stores: public attributes ending in ``_`` (sklearn's habit).

        Values must be arrays, numbers, strings, ``None`` or lists / tuples / dicts of those
        (:mod:`routers.artifact`); a router holding anything else (a torch module) overrides this and
        :meth:`set_state`."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (the inverse; the constructor has already run)."""
        for key, value in state.items():
            if not key.endswith("_") or key.startswith("_"):
                raise RouterError(f"artifact state has a field {key!r} that is not a fitted attribute")
            setattr(self, key, value)

    def save(self, path: str | Path) -> Path:
        """Write this fitted router to one artifact file (arrays + JSON manifest, see :mod:`routers.artifact`)."""
        path = Path(path)
        meta: dict[str, Any] = {"encoder": self.encoder_ if self.requires_embeddings else None,
                                "models": list(getattr(self, "models_", []))}
        if meta["encoder"] == STATIC_ENCODER:
            meta["encoder_version"] = STATIC_TABLE_VERSION
        state = self.get_state()
        if hasattr(self, "calibration_"):  # set by training for every router, whatever its own state
            state.setdefault("calibration_", self.calibration_)
        try:
            data = artifact.dumps(self.name, self.get_params(), state, meta)
        except artifact.ArtifactFormatError as exc:
            raise RouterError(f"{self.name}: cannot write an artifact ({exc})") from None
        artifact.write(path, data)
        return path

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> Router:
        """Read an artifact written by :meth:`save`; with ``sha256``, only if the bytes read have that digest.

        The file is read once and parsed from those bytes; errors name the file and the reason."""
        # why: routers.registry imports this module (for Router), so its table is read at call time
        from routers.registry import get_router_class

        path = Path(path)
        try:
            parsed = artifact.parse(artifact.read_bytes(path), sha256)
        except FileNotFoundError as exc:
            raise RouterError(f"{path}: artifact file not found") from exc
        except OSError as exc:
            raise RouterError(f"{path}: cannot read artifact ({exc.strerror or exc})") from None
        except artifact.ArtifactFormatError as exc:
            raise RouterError(f"{path}: {exc}") from None
        try:
            router_cls = get_router_class(parsed.router)
        except RouterError as exc:
            raise RouterError(f"{path}: {exc}") from None
        if cls is not Router and not issubclass(router_cls, cls):
            raise RouterError(f"{path}: artifact holds router {parsed.router!r}, expected {cls.name!r}")
        _check_table_version(path, parsed.manifest)
        try:
            router = router_cls(**parsed.params)
            router.set_state(parsed.state)
            if "calibration_" in parsed.state:
                router.calibration_ = parsed.state["calibration_"]
        except (TypeError, ValueError, KeyError, RouterError) as exc:
            raise RouterError(f"{path}: artifact does not fit router {parsed.router!r} ({exc})") from None
        router.artifact_sha256 = parsed.sha256
        return router


def _check_table_version(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse an artifact fitted on another ``minilm-static`` table than the packaged one (same name and shape,
    another space: its neighbours and categories would be meaningless)."""
    if manifest.get("encoder") != STATIC_ENCODER:
        return
    found = manifest.get("encoder_version")
    if found != STATIC_TABLE_VERSION:
        was = f"table {found!r}" if found else "the hand-written table used before the Model2Vec one"
        raise RouterError(f"{path}: fitted on {STATIC_ENCODER} embeddings of {was}; this install ships table "
                          f"{STATIC_TABLE_VERSION!r}: refit it (poolgate train-offline, or poolgate train)")
