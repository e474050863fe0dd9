"""GraphRouter (Feng et al., ICLR 2025): routing as edge prediction in a heterogeneous graph of queries, tasks and
models, built and run with torch-geometric (``HeteroData`` + ``HeteroConv``).

The graph (:mod:`routers.graph_data`): query nodes (training queries, and each new query at serving time), task
nodes (one per training category) and model nodes; outcome edges between training queries and the models that
answered them (solved / failed, weighted by the observed quality), similarity edges from each query's nearest
training queries, and category edges weighted by ``P(task | query)`` from :class:`routers.category.CategoryModel`.
No task label enters the graph: the category model is trained on the training rows' labels at fit time, the
training queries are attached by its out-of-fold predictions and a new query by its prediction, so training and
serving attach alike. The network (:mod:`routers.graph_net`) computes node states by message passing and scores
every (query, model) pair; fitting (``routers/graph_fit.py``) hides the outcome edges of a share of the
queries and fits the hidden ones.

Inference attaches new queries one-way (trained nodes -> new node, never back): the trained graph's node states
are computed once and cached, and a batch runs the small attachment graph (its neighbours, the tasks, the models)
layer by layer. Candidates are matched to trained model nodes by name. Any other candidate is scored as the
trained models it reads like: their scores weighted by ``exp(model_tau (sim - 1))`` of the cosine similarity of
the descriptions (:func:`routers.graph_data.like_weights`). Its description is embedded with ``text_encoder``
when set (``router.text_encoder = featurizer.embed``; never stored) or found among descriptions registered with
:meth:`GraphRouter.register_models`; an empty or unembeddable one falls back to the mean description embedding
of the trained models (it then reads like all of them, about alike).

Cost: ``Prediction.cost_usd`` is the price prior ``prompt tokens x input price + output tokens x output price``
times exp(predicted residual), in USD per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError
from routers.category import CategoryModel
from routers.features import unit_rows
from routers.graph_data import (
    ATTR_NAMES,
    EPS_USD,
    GraphState,
    attach_graph,
    build_graph,
    like_weights,
    near_weights,
    nearest,
    price_prior_usd,
    query_inputs,
    top_k_shares,
)
from routers.graph_fit import fit_graph_router
from routers.graph_net import GraphNet, States

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

TextEncoder = Callable[[Sequence[str]], np.ndarray]

#: bump when the stored state layout changes; a mismatched artifact fails at load
GRAPH_FORMAT = 2


class GraphRouter(Router):
    """Heterogeneous-GNN router: the quality of (query q, model m) is the edge head's sigmoid of
    ``[h_q * h_m, h_q, h_m]``, the final ``HeteroConv`` states of the two nodes.

    What carries the score. A new query's node has only its prompt length as input; its state ``h_q`` is what its
    two kinds of incoming edges bring. (1) ``HOLDS`` edges from the task nodes, weighted by the category model's
    ``P(task | query)`` (top ``task_top_k``): which category the query looks like, which the head turns into
    per-category model skill learned in its weights. This carries most of the score: on an LLMRouter 80/20 split
    by query, making those weights uniform at inference raises the quality MSE from 0.165 to 0.188. (2) ``NEAR``
    edges from its nearest training queries, whose states hold which model solved or failed them (``SOLVED`` /
    ``FAILED`` edges): the kNN-like part, two hops query -> training query -> model; dropping them at inference
    costs less (0.165 -> 0.167). ``h_m`` holds the model's description embedding, prices and size, and the
    quality-weighted mean state of the queries it solved and failed (``REV_SOLVED`` / ``REV_FAILED``). A model the
    graph never saw takes the scores of the trained models it reads like (see the module doc). The cost residual
    is the head's second output.

    Training parameters, read by ``routers.graph_fit``: ``hidden`` state width, ``layers`` HeteroConv layers,
    ``k_neighbors`` similarity edges per query and ``near_tau`` their sharpness, ``task_top_k`` category edges per
    query, ``category_c`` the category model's C (``None``: its grouped-CV grid, several times slower; 0.1 is
    what that grid picks on LLMRouter) and ``category_folds`` the folds of its out-of-fold predictions for the
    training queries (0: in-sample, which memorizes the labels and so attaches training queries unlike new ones),
    ``epochs``, ``lr``, ``weight_decay``, ``dropout``, ``hide_frac`` share of training queries whose outcome edges
    are hidden per epoch, ``cost_weight`` of the cost loss, ``val_frac``/``patience`` early stopping on
    always-hidden queries, ``center`` (subtract the training mean embedding before the cosine; ``None``: for
    ``minilm-static`` only, as the kNN router), ``seed``, ``threads``. Not for training: ``model_tau``, the
    sharpness of the description similarity an unseen model is scored by.
    """

    name = "graph"
    requires_embeddings = True
    slow_predict = True  # a category model, a neighbour search and a small HeteroConv pass per request

    def __init__(
        self, hidden: int = 32, layers: int = 2, k_neighbors: int = 10, near_tau: float = 20.0,
        model_tau: float = 10.0, task_top_k: int = 3, category_c: float | None = 0.1, category_folds: int = 3,
        epochs: int = 200, lr: float = 5e-3, weight_decay: float = 1e-4, dropout: float = 0.0, hide_frac: float = 0.3,
        cost_weight: float = 0.5, val_frac: float = 0.1, patience: int = 30, center: bool | None = None,
        seed: int = 0, threads: int = 1,
    ) -> None:
        self.hidden = hidden
        self.layers = layers
        self.k_neighbors = k_neighbors
        self.near_tau = near_tau
        self.model_tau = model_tau
        self.task_top_k = task_top_k
        self.category_c = category_c
        self.category_folds = category_folds
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.hide_frac = hide_frac
        self.cost_weight = cost_weight
        self.val_frac = val_frac
        self.patience = patience
        self.center = center
        self.seed = seed
        self.threads = threads
        #: optional ``texts -> [n, d]`` embeddings, for ``fit`` and for unseen models (never stored)
        self.text_encoder: TextEncoder | None = None

    def fit(self, dataset: RoutingDataset) -> Self:
        """Build the graph from ``dataset`` and train the network (see ``routers/graph_fit.py``)."""
        self._record_encoder(dataset)
        fit_graph_router(self, dataset)
        return self

    def set_trained(self, state: GraphState, net: GraphNet, category: CategoryModel | None,
                    info: dict[str, Any]) -> None:
        """Install a trained graph, network and category model (called by the training code and at load)."""
        self.state_ = state
        self.net_ = net.eval()
        self.category_model = category
        self.models_ = list(state.llm_names)
        self.train_info_ = info
        self._cache: list[States] | None = None

    def register_models(self, cards: Sequence[ModelCard], encoder: TextEncoder | None = None) -> None:
        """Embed the descriptions of (new) models now and keep them in the artifact, so that a gateway
        without a text encoder scores them from their real description."""
        state, enc = self._fitted(), encoder or self.text_encoder
        texts = [c.description for c in cards if c.description.strip() and c.description not in state.desc_cache]
        if texts and enc is None:
            raise RouterError("register_models needs a text encoder (argument or router.text_encoder)")
        if texts and enc is not None:
            state.desc_cache.update(zip(texts, self._encode(enc, texts), strict=True))

    def describe(self) -> dict[str, Any]:
        """JSON-safe fit summary: graph size, training epochs, validation loss, fit seconds."""
        if not hasattr(self, "state_"):
            return {"fitted": False}
        state = self.state_
        return {"queries": len(state.query_emb), "tasks": len(state.task_names), "llms": list(state.llm_names),
                "registered_descriptions": len(state.desc_cache), **self.train_info_}

    # -- inference ---------------------------------------------------------------------------------
    def task_shares(self, features: QueryFeatures) -> np.ndarray:
        """``[n, T]`` category edge weights of new queries: the top ``task_top_k`` of ``P(task | query)``."""
        if self.category_model is None:  # trained without two categories: one task node holds every query
            return np.ones((len(features), len(self.state_.task_names)), dtype=np.float32)
        return top_k_shares(self.category_model.proba(features), self.task_top_k)

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        state, n, m = self._fitted(), len(features), len(candidates)
        self._check_encoder(features)
        if n == 0 or m == 0:
            return Prediction(quality=np.zeros((n, m)), cost_usd=np.zeros((n, m)))
        emb = self._check_embeddings(features.embeddings, n)
        tokens = np.maximum(np.asarray(features.prompt_tokens, dtype=np.float64), 0.0)
        shares = self.task_shares(features)
        nb, sim = nearest(emb, state.query_emb, self.k_neighbors)
        data = attach_graph(nb, near_weights(sim, self.near_tau), shares, query_inputs(np.log1p(tokens)),
                            len(state.task_names), len(state.llm_names))
        with torch.no_grad():
            cache = self._trained()
            out = self.net_.edge_out(self.net_.attach(cache, data), cache[-1]["model"]).numpy().astype(np.float64)
        mix = self.model_mixture(candidates)  # [m, L]
        quality = (1.0 / (1.0 + np.exp(-out[..., 0]))) @ mix.T
        resid = (out[..., 1] @ mix.T) * state.resid_std + state.resid_mean
        prior = price_prior_usd(tokens, candidates)
        cost = np.maximum(np.exp(np.log(prior + EPS_USD) + resid) - EPS_USD, 0.0)
        return Prediction(quality=quality, cost_usd=cost)

    def model_mixture(self, candidates: Sequence[ModelCard]) -> np.ndarray:
        """``[m, L]`` which trained models' scores each candidate takes: its own model node (by name), else the
        trained models it reads like (:func:`routers.graph_data.like_weights` of its description embedding)."""
        state = self.state_
        index = {name: j for j, name in enumerate(state.llm_names)}
        mix = np.zeros((len(candidates), len(state.llm_names)))
        for i, card in enumerate(candidates):
            if card.name in index:
                mix[i, index[card.name]] = 1.0
            else:
                mix[i] = like_weights(self.description_embedding(card)[None, :], state.llm_desc, self.model_tau)[0]
        return mix

    def _fitted(self) -> GraphState:
        if not hasattr(self, "state_"):
            raise RouterError("graph router is not fitted")
        return self.state_

    def _check_embeddings(self, emb: np.ndarray | None, n: int) -> np.ndarray:
        if emb is None:
            raise RouterError("graph router needs query embeddings (features.embeddings is None)")
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape != (n, self.state_.dim):
            raise RouterError(f"query embeddings have shape {emb.shape}, the artifact needs ({n}, {self.state_.dim})")
        if not np.isfinite(emb).all():
            raise RouterError("query embeddings contain NaN or inf")
        return self.graph_embeddings(emb)

    def graph_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings as query nodes hold them: unit norm, centred on the training mean when the router centres."""
        emb = unit_rows(emb)
        center = self.state_.center
        return unit_rows(emb - center) if center.size else emb

    def _trained(self) -> list[States]:
        """Per-layer node states of the training graph with every edge visible (computed once)."""
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.net_(build_graph(self.state_, self.near_tau))
        return self._cache

    def description_embedding(self, card: ModelCard) -> np.ndarray:
        """The card's description embedding: registered, else encoded now, else the trained models' mean."""
        state = self.state_
        if not card.description.strip():
            return state.desc_mean
        if card.description in state.desc_cache:
            return state.desc_cache[card.description]
        if self.text_encoder is not None:
            try:
                return self._encode(self.text_encoder, [card.description])[0]
            except Exception:  # a broken encoder must not stop routing; the fallback is documented
                return state.desc_mean
        return state.desc_mean

    def _encode(self, enc: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        vecs = np.asarray(enc(list(texts)), dtype=np.float32)
        if vecs.shape != (len(texts), self.state_.dim):
            raise RouterError(f"text encoder gave shape {vecs.shape}, expected ({len(texts)}, {self.state_.dim})")
        return unit_rows(vecs)

    # -- artifact ----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The graph's arrays, the network's weights and the category model's state as arrays, and the fit
        summary (no torch objects)."""
        if not hasattr(self, "state_"):
            return {}
        return {
            "format_": GRAPH_FORMAT,
            "graph_": {f.name: getattr(self.state_, f.name) for f in dataclass_fields(GraphState)},
            "weights_": {k: v.detach().numpy().copy() for k, v in self.net_.state_dict().items()},
            "category_": {} if self.category_model is None else self.category_model.get_state(),
            "train_info_": self.train_info_,
            "encoder_": self.encoder_,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Rebuild the graph, network and category model from :meth:`get_state`'s output; a mismatch raises
        ValueError."""
        if not state:
            return
        if state.get("format_") != GRAPH_FORMAT:
            raise ValueError(f"graph artifact format {state.get('format_')!r}, this code reads format {GRAPH_FORMAT}")
        graph = GraphState(**state["graph_"])
        n, n_llm = graph.quality.shape
        n_tasks = len(graph.task_names)
        if (len(graph.query_emb) != n or len(graph.llm_names) != n_llm or len(graph.task_x) != n_tasks
                or graph.query_shares.shape != (n, n_tasks)):
            raise ValueError("graph arrays disagree in size (queries, models or tasks)")
        net = GraphNet(graph.dim, len(ATTR_NAMES), self.hidden, self.layers, self.dropout)
        try:
            net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state["weights_"].items()})
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2]) or str(exc)
            raise ValueError(f"graph weights do not match the network: {detail[:200]}") from None
        category = CategoryModel.from_state(state["category_"]) if state.get("category_") else None
        if category is not None and list(category.classes_) != list(graph.task_names):
            raise ValueError("the category model's classes are not the graph's task nodes")
        self.set_trained(graph, net, category, dict(state.get("train_info_", {})))
        self.encoder_ = str(state.get("encoder_", "minilm"))
