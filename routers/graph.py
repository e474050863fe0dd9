"""GraphRouter (Feng et al., ICLR 2025): routing as edge prediction in a graph of tasks, queries and LLMs.

Nodes: task (embedding of a task description), query (query embedding + log prompt tokens) and LLM
(embedding of the model's description + numeric attributes: prices, size, context window). Edges:
task <-> query, query -> query (its k nearest training queries, cosine similarity as attribute) and
query <-> LLM carrying the observed effect (quality) and normalized cost of the training pairs.

The graph state and the network (:class:`~routers.graph_net.GraphNet`: node states by message passing,
edge evidence from neighbours, task and LLM, and an edge head giving effect and cost residual) live in
:mod:`routers.graph_net`; this module is the :class:`~routers.base.Router`: fit, predict, registered
descriptions and the artifact. Training (``routers/graph_fit.py``) hides the LLM edges of a random
share of the queries, and sometimes every edge of one LLM, and fits the hidden edges from the visible ones.

Inference attaches new queries one-way (trained nodes -> new node, never back), so the trained graph
is computed once and cached; a batch then costs a k-NN lookup and a few small matrix products. A query
is attached to its task node when the artifact knows its task, else to the tasks of its nearest
training queries (weighted by vote share).

Candidates are matched to trained LLM nodes by name. Any other candidate becomes an *inductive* LLM
node built from its attributes alone: it has no edges, so it borrows the edge evidence of the trained
LLMs weighted by description similarity (flagged as borrowed; training does the same for an LLM it
hides). Its description is embedded with ``text_encoder`` when set (``router.text_encoder =
featurizer.embed``; never stored) or found among descriptions registered in the artifact with
:meth:`GraphRouter.register_models`. Documented fallbacks, so bad input is still scored: an empty or
unembeddable description -> the mean description embedding of the trained LLMs (it then borrows from
all of them alike); unknown size or context window -> the trained LLMs' median, with a "missing" flag;
a task the artifact does not know -> attached through the nearest training queries' tasks.

Cost: ``Prediction.cost_usd`` is the price prior ``prompt tokens x input price + output tokens x output
price`` times exp(predicted residual), in USD per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch
from torch import Tensor

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError
from routers.features import unit_rows
from routers.graph_fit import fit_graph_router
from routers.graph_net import (
    ATTR_NAMES,
    EPS_USD,
    GraphNet,
    GraphState,
    States,
    View,
    attach_edges,
    graph_view,
    nearest,
    price_prior_usd,
    query_inputs,
    raw_attributes,
    scaled_attr,
    task_shares,
)

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

TextEncoder = Callable[[Sequence[str]], np.ndarray]

#: bump when the stored state layout changes; a mismatched artifact fails at load
GRAPH_FORMAT = 1


class GraphRouter(Router):
    """Heterogeneous-GNN router predicting effect and cost of every (query, LLM) edge; see the module doc.

    Training parameters, read by ``routers.graph_fit``: ``hidden`` state width, ``layers``
    message-passing rounds, ``k_neighbors`` query-query edges, ``epochs``, ``lr`` (node network) and
    ``evidence_lr`` (the linear read of the edge evidence, learned faster), ``weight_decay``,
    ``hide_frac`` share of training queries whose edges are hidden per epoch, ``llm_mask_prob`` chance
    per epoch of hiding one LLM entirely (teaches scoring an LLM with no edges), ``task_drop`` share of
    hidden queries attached through their neighbours' tasks, ``cost_weight`` of the cost loss,
    ``val_frac``/``patience`` early stopping on always-hidden queries, ``seed``, ``threads`` (CPU).
    """

    name = "graph"
    requires_embeddings = True
    slow_predict = True  # message passing over the cached graph: ~1.1-1.5 ms a query on the benchmark machine

    def __init__(
        self, hidden: int = 64, layers: int = 1, k_neighbors: int = 20, epochs: int = 300, lr: float = 5e-4,
        evidence_lr: float = 1e-2, weight_decay: float = 1e-4, hide_frac: float = 0.5, llm_mask_prob: float = 0.3,
        task_drop: float = 0.5, dropout: float = 0.3, cost_weight: float = 0.5, val_frac: float = 0.1,
        patience: int = 30, seed: int = 0, threads: int = 1,
    ) -> None:
        self.hidden = hidden
        self.layers = layers
        self.k_neighbors = k_neighbors
        self.epochs = epochs
        self.lr = lr
        self.evidence_lr = evidence_lr
        self.weight_decay = weight_decay
        self.hide_frac = hide_frac
        self.llm_mask_prob = llm_mask_prob
        self.task_drop = task_drop
        self.dropout = dropout
        self.cost_weight = cost_weight
        self.val_frac = val_frac
        self.patience = patience
        self.seed = seed
        self.threads = threads
        #: optional ``texts -> [n, d]`` embeddings, for ``fit`` and for unseen LLMs (never stored)
        self.text_encoder: TextEncoder | None = None

    def fit(self, dataset: RoutingDataset) -> Self:
        """Build the graph from ``dataset`` and train the network (see ``routers/graph_fit.py``)."""
        self._record_encoder(dataset)
        fit_graph_router(self, dataset)
        return self

    def set_trained(self, state: GraphState, net: GraphNet, info: dict[str, Any]) -> None:
        """Install a trained graph and network (called by the training code and at load)."""
        self.state_ = state
        self.net_ = net.eval()
        self.models_ = list(state.llm_names)
        self.train_info_ = info
        self._cache: tuple[View, list[States]] | None = None
        self._llm_cache: dict[tuple[Any, ...], Tensor] = {}

    def register_models(self, cards: Sequence[ModelCard], encoder: TextEncoder | None = None) -> None:
        """Embed the descriptions of (new) models now and keep them in the artifact, so that a gateway
        without a text encoder scores them from their real description."""
        state, enc = self._fitted(), encoder or self.text_encoder
        texts = [c.description for c in cards if c.description.strip() and c.description not in state.desc_cache]
        if texts and enc is None:
            raise RouterError("register_models needs a text encoder (argument or router.text_encoder)")
        if texts and enc is not None:
            state.desc_cache.update(zip(texts, self._encode(enc, texts), strict=True))
        self._llm_cache = {}

    def describe(self) -> dict[str, Any]:
        """JSON-safe fit summary: graph size, training epochs, validation loss, fit seconds."""
        if not hasattr(self, "state_"):
            return {"fitted": False}
        state = self.state_
        return {"queries": len(state.query_emb), "tasks": len(state.task_names), "llms": list(state.llm_names),
                "registered_descriptions": len(state.desc_cache), **self.train_info_}

    # -- inference ---------------------------------------------------------------------------------
    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        state, n, m = self._fitted(), len(features), len(candidates)
        self._check_encoder(features)
        if n == 0 or m == 0:
            return Prediction(quality=np.zeros((n, m)), cost_usd=np.zeros((n, m)))
        emb = self._check_embeddings(features.embeddings, n)
        tokens = np.maximum(np.asarray(features.prompt_tokens, dtype=np.float64), 0.0)
        index = {name: j for j, name in enumerate(state.llm_names)}
        cols = torch.tensor([index.get(c.name, -1) for c in candidates], dtype=torch.long)
        with torch.no_grad():
            view, layers = self._trained()
            nb, sim = nearest(emb, state.query_emb, self.k_neighbors)
            own = np.full(n, -1, dtype=np.int64)  # serving knows no task label: attach through the neighbours
            shares = task_shares(own, state.query_task[nb], len(state.task_names))
            hq = self.net_.encode_query(query_inputs(emb, np.log1p(tokens).astype(np.float32)))
            edges = attach_edges(shares, nb, sim)
            for i in range(len(layers) - 1):
                hq = self.net_.layer(i, layers[i], {"query": hq}, edges)["query"]
            desc = np.stack([state.llm_desc[j] if j >= 0 else self.description_embedding(c)
                             for c, j in zip(candidates, cols.tolist(), strict=True)])
            ev = self.net_.evidence(view, torch.from_numpy(nb), torch.from_numpy(sim), torch.from_numpy(shares),
                                    cols, torch.from_numpy(desc.astype(np.float32)))
            hl = torch.stack([self._llm_state(c, int(j), layers) for c, j in zip(candidates, cols, strict=True)])
            out = self.net_.edge_out(hq, hl, ev).numpy().astype(np.float64)
        prior = price_prior_usd(tokens, candidates)
        resid = out[..., 1] * state.resid_std + state.resid_mean
        cost = np.maximum(np.exp(np.log(prior + EPS_USD) + resid) - EPS_USD, 0.0)
        return Prediction(quality=1.0 / (1.0 + np.exp(-out[..., 0])), cost_usd=cost)

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
        return unit_rows(emb)

    def _trained(self) -> tuple[View, list[States]]:
        """The training graph with every edge visible and its per-layer node states (computed once)."""
        if self._cache is None:
            with torch.no_grad():
                view = graph_view(self.state_)
                self._cache = (view, self.net_(view.x0, view.edges))
        return self._cache

    def _llm_state(self, card: ModelCard, col: int, layers: list[States]) -> Tensor:
        """A trained LLM node's final state, or an inductive node's (built from attributes, no edges)."""
        if col >= 0:
            return layers[-1]["llm"][col]
        key = (card.name, card.description, card.input_price, card.output_price, card.size_b, card.context_window)
        if key not in self._llm_cache:
            state = self.state_
            desc = torch.from_numpy(self.description_embedding(card)[None, :])
            raw = raw_attributes(card, state.size_fill, state.ctx_fill)[None, :]
            h = self.net_.encode_llm(desc, torch.from_numpy(scaled_attr(state, raw)))
            for i in range(len(layers) - 1):
                h = self.net_.layer(i, layers[i], {"llm": h}, {})["llm"]
            self._llm_cache[key] = h[0]
        return self._llm_cache[key]

    def description_embedding(self, card: ModelCard) -> np.ndarray:
        """The card's description embedding: registered, else encoded now, else the trained LLMs' mean."""
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
        """The graph's arrays, the network's weights as arrays, and the fit summary (no torch objects)."""
        if not hasattr(self, "state_"):
            return {}
        return {
            "format_": GRAPH_FORMAT,
            "graph_": {f.name: getattr(self.state_, f.name) for f in dataclass_fields(GraphState)},
            "weights_": {k: v.detach().numpy().copy() for k, v in self.net_.state_dict().items()},
            "train_info_": self.train_info_,
            "encoder_": self.encoder_,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Rebuild the graph and network from :meth:`get_state`'s output; a mismatch raises ValueError."""
        if not state:
            return
        if state.get("format_") != GRAPH_FORMAT:
            raise ValueError(f"graph artifact format {state.get('format_')!r}, this code reads format {GRAPH_FORMAT}")
        graph = GraphState(**state["graph_"])
        n, n_llm = graph.quality.shape
        if len(graph.query_emb) != n or len(graph.llm_names) != n_llm or len(graph.task_x) != len(graph.task_names):
            raise ValueError("graph arrays disagree in size (queries, LLMs or tasks)")
        net = GraphNet(graph.dim, len(ATTR_NAMES), self.hidden, self.layers, self.dropout)
        try:
            net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state["weights_"].items()})
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2]) or str(exc)
            raise ValueError(f"graph weights do not match the network: {detail[:200]}") from None
        self.set_trained(graph, net, dict(state.get("train_info_", {})))
        self.encoder_ = str(state.get("encoder_", "minilm"))
