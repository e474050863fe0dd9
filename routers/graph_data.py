"""The GraphRouter's graph as torch-geometric ``HeteroData``: node inputs, the stored trained graph, edge builders.

Used by :class:`routers.graph.GraphRouter` (inference) and ``routers/graph_fit.py`` (fit); pure numpy/torch,
no I/O. Node types and their inputs (``data[type].x``):

- ``query``: its log prompt tokens only (:func:`query_inputs`). Its embedding places it -- it decides its
  similarity edges and, through the category model, its category edges -- but is not a node input: a query node
  is what its relations say, so masked training cannot memorize a training query's outcomes from its own
  embedding (with the embedding as input, validation loss turned up after ~30 epochs on LLMRouter, at 0.51
  against 0.47 without);
- ``task``: the embedding of a task description (one node per category the category model predicts);
- ``model``: the embedding of the model's description and its scaled numeric attributes (:func:`raw_attributes`).

Edge types (messages flow source -> destination), each with an ``edge_weight``:

- :data:`SOLVED` / :data:`FAILED` ``model -> query``: one of each per observed (training query, model) pair,
  weighted by the observed quality ``q`` and by ``1 - q`` (one relation per outcome, as graph convolutional matrix
  completion has one per rating level: a query's state becomes a quality-weighted sum of the states of the models
  that solved it, so *which* model reached *what* quality survives aggregation); :data:`REV_SOLVED` /
  :data:`REV_FAILED` the same pairs ``query -> model``;
- :data:`NEAR` ``query -> query``: from each query's ``k`` nearest training queries (cosine), weight
  ``exp(tau (sim - 1))`` normalized over the query's neighbours (a weighted mean);
- :data:`HOLDS` ``task -> query``: weight = the predicted ``P(task | query)`` (top-k, renormalized) from the
  category model -- never a task label, in training as at serving;
- :data:`IN_TASK` ``query -> task``: the same probabilities, normalized per task (a weighted mean of its queries).

:func:`build_graph` makes the training graph with some queries' outcome edges hidden (training predicts those);
:func:`attach_graph` the small graph that attaches new queries to the trained one, whose node states are cached
(see :meth:`routers.graph_net.GraphNet.attach`). A model the graph never saw has no node: it is scored as the
trained models it reads like (:func:`like_weights`, see :class:`routers.graph.GraphRouter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from routers.base import ModelCard
from routers.objective import DEFAULT_OUTPUT_TOKENS
from routers.pricing import token_cost_usd

NODE_TYPES = ("query", "task", "model")
SOLVED = ("model", "solved", "query")
FAILED = ("model", "failed", "query")
REV_SOLVED = ("query", "rev_solved", "model")
REV_FAILED = ("query", "rev_failed", "model")
NEAR = ("query", "near", "query")
HOLDS = ("task", "holds", "query")
IN_TASK = ("query", "in", "task")
EDGE_TYPES = (SOLVED, FAILED, REV_SOLVED, REV_FAILED, NEAR, HOLDS, IN_TASK)
ATTR_NAMES = ("log_in_price", "log_out_price", "log_size_b", "size_missing", "log_context", "ctx_missing")
EPS_USD = 1e-9


def raw_attributes(card: ModelCard, size_fill: float, ctx_fill: float) -> np.ndarray:
    """Unscaled numeric attributes of a model node (see :data:`ATTR_NAMES`); unknowns take the fill."""
    size = card.size_b if card.size_b is not None and card.size_b > 0 else None
    ctx = card.context_window if card.context_window is not None and card.context_window > 0 else None
    return np.asarray(
        [
            np.log1p(max(card.input_price, 0.0)),
            np.log1p(max(card.output_price, 0.0)),
            np.log1p(size) if size is not None else size_fill,
            float(size is None),
            np.log2(ctx / 1024.0 + 1.0) if ctx is not None else ctx_fill,
            float(ctx is None),
        ],
        dtype=np.float32,
    )


def price_prior_usd(prompt_tokens: np.ndarray, cards: Sequence[ModelCard]) -> np.ndarray:
    """``[n, m]`` USD of each call at list prices, with the card's (or the default) output length."""
    out_tok = np.asarray([c.output_tokens or DEFAULT_OUTPUT_TOKENS for c in cards], dtype=np.float64)
    p_in = np.asarray([max(c.input_price, 0.0) for c in cards], dtype=np.float64)
    p_out = np.asarray([max(c.output_price, 0.0) for c in cards], dtype=np.float64)
    pt = np.maximum(np.asarray(prompt_tokens, dtype=np.float64), 0.0)[:, None]
    return token_cost_usd(pt, out_tok[None, :], p_in[None, :], p_out[None, :])


def nearest(queries: np.ndarray, base: np.ndarray, k: int, max_sim: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours in ``base`` of each row of ``queries`` -> (indices, similarities).

    Neighbours more similar than ``max_sim`` are skipped (training uses it to drop the query itself and its
    duplicates). Similarities are rounded to 1e-6 and ties go to the lower index, so a query gets the same
    neighbours alone or in any batch (BLAS may round a batch's products differently).
    """
    k = min(k, len(base) - (1 if max_sim <= 1.0 else 0))
    base_t = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32)).T
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    idx = np.zeros((len(queries), max(k, 0)), dtype=np.int64)
    sim = np.zeros(idx.shape, dtype=np.float32)
    for start in range(0, len(queries) if k > 0 else 0, 1024):  # bounded memory: 1024 x N at a time
        # torch, not numpy: numpy's BLAS threads stall a one-row product on a busy machine
        s = (torch.from_numpy(queries[start : start + 1024]) @ base_t).numpy().astype(np.float64)
        # rounded, then a tie-breaking nudge far below the rounding step (lower index wins)
        s = np.where(s > max_sim, -np.inf, np.round(s, 6)) - np.arange(len(base)) * (1e-7 / len(base))
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top_s = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-top_s, axis=1)
        idx[start : start + 1024] = np.take_along_axis(top, order, axis=1)
        sim[start : start + 1024] = np.round(np.take_along_axis(top_s, order, axis=1), 6)
    return idx, sim


def top_k_shares(proba: np.ndarray, k: int) -> np.ndarray:
    """``[n, T]`` task attachment: each row's ``k`` most probable tasks, renormalized to sum to one."""
    proba = np.asarray(proba, dtype=np.float64)
    k = max(1, min(k, proba.shape[1]))
    keep = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    out = np.zeros(proba.shape, dtype=np.float64)
    np.put_along_axis(out, keep, np.take_along_axis(proba, keep, axis=1), axis=1)
    return (out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class GraphState:
    """The trained graph without the network weights (numpy; stored as arrays in the artifact).

    It holds no task label: ``query_shares`` is the category model's *predicted* (out-of-fold) distribution."""

    task_names: list[str]
    task_x: np.ndarray  # [T, d] task description embeddings
    query_emb: np.ndarray  # [N, d] unit (and, with a centre, centred) embeddings
    query_logtok: np.ndarray  # [N]
    query_shares: np.ndarray  # [N, T] predicted P(task | query), top-k renormalized
    near_idx: np.ndarray  # [N, k] training neighbours of each training query (itself and duplicates excluded)
    near_sim: np.ndarray  # [N, k]
    llm_names: list[str]
    llm_desc: np.ndarray  # [L, d]
    llm_attr: np.ndarray  # [L, A] raw attributes
    quality: np.ndarray  # [N, L] observed quality; NaN = no edge
    resid: np.ndarray  # [N, L] standardized log(cost / price prior)
    attr_mean: np.ndarray
    attr_std: np.ndarray
    size_fill: float
    ctx_fill: float
    resid_mean: float
    resid_std: float
    desc_mean: np.ndarray  # [d] fallback description embedding
    center: np.ndarray  # [d] mean training embedding subtracted before the cosine, or [0] for none
    desc_cache: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.query_emb.shape[1])


def scaled_attr(state: GraphState, raw: np.ndarray) -> np.ndarray:
    return ((raw - state.attr_mean) / state.attr_std).astype(np.float32)


def query_inputs(logtok: np.ndarray) -> Tensor:
    """``[n, 1]`` query node inputs: log prompt tokens, scaled to about [0, 1]."""
    return torch.from_numpy((np.asarray(logtok, dtype=np.float32)[:, None] / 10.0).astype(np.float32))


def model_inputs(desc: np.ndarray, attr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.concatenate([desc, attr], axis=1).astype(np.float32))


def near_weights(sim: np.ndarray, tau: float, keep: np.ndarray | None = None) -> np.ndarray:
    """``[n, k]`` neighbour weights ``exp(tau (sim - 1))`` over the kept neighbours, each row summing to one."""
    w = np.exp(tau * (sim.astype(np.float64) - 1.0))
    if keep is not None:
        w = np.where(keep, w, 0.0)
    return (w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)


def like_weights(desc: np.ndarray, trained_desc: np.ndarray, tau: float) -> np.ndarray:
    """``[m, L]`` how much each of ``m`` models reads like each trained model: ``exp(tau (sim - 1))`` of the cosine
    similarity of their description embeddings, each row summing to one."""
    sim = np.asarray(desc, np.float64) @ np.asarray(trained_desc, np.float64).T
    w = np.exp(tau * (sim - 1.0))
    return w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)


def _put(data: HeteroData, etype: tuple[str, str, str], src: np.ndarray, dst: np.ndarray,
         weight: np.ndarray) -> None:
    """Edges ``src -> dst`` of ``etype`` with their weights. Edges of weight zero carry no message and are left out;
    an empty type still runs its convolution's root term, as for a node without edges in training."""
    keep = np.asarray(weight).reshape(len(src)) != 0
    data[etype].edge_index = torch.from_numpy(np.stack([src[keep], dst[keep]]).astype(np.int64).reshape(2, -1))
    data[etype].edge_weight = torch.from_numpy(np.asarray(weight, np.float32).reshape(len(src))[keep])


def _empty(data: HeteroData, etype: tuple[str, str, str]) -> None:
    none = np.zeros(0, np.int64)
    _put(data, etype, none, none, np.zeros(0))


def build_graph(state: GraphState, tau: float, visible_q: np.ndarray | None = None) -> HeteroData:
    """The training graph with the outcome edges of the ``~visible_q`` queries hidden.

    Messages into any query come only from visible queries (its ``NEAR`` sources) and tasks only aggregate visible
    queries (``IN_TASK``): a new query at serving time is attached to training queries whose answers are all known,
    so hidden queries are what training's neighbourhoods must not contain."""
    n = len(state.quality)
    vq = np.ones(n, bool) if visible_q is None else visible_q
    data = HeteroData()
    data["query"].x = query_inputs(state.query_logtok)
    data["task"].x = torch.from_numpy(state.task_x.astype(np.float32))
    data["model"].x = model_inputs(state.llm_desc, scaled_attr(state, state.llm_attr))
    obs = np.isfinite(state.quality) & vq[:, None]
    qi, li = np.nonzero(obs)
    q = state.quality[qi, li]
    # weights over the observed pairs of the destination, so a weighted sum is the mean over its answers
    per_query, per_model = 1.0 / obs.sum(axis=1)[qi], 1.0 / obs.sum(axis=0)[li]
    _put(data, SOLVED, li, qi, q * per_query)
    _put(data, FAILED, li, qi, (1.0 - q) * per_query)
    _put(data, REV_SOLVED, qi, li, q * per_model)
    _put(data, REV_FAILED, qi, li, (1.0 - q) * per_model)
    keep = vq[state.near_idx]
    w = near_weights(state.near_sim, tau, keep)
    rows, cols = np.nonzero(keep)
    _put(data, NEAR, state.near_idx[rows, cols], rows, w[rows, cols])
    qs, ts = np.nonzero(state.query_shares)
    _put(data, HOLDS, ts, qs, state.query_shares[qs, ts])
    seen = state.query_shares * vq[:, None]
    per_task = seen / np.maximum(seen.sum(axis=0, keepdims=True), 1e-12)
    qs, ts = np.nonzero(per_task)
    _put(data, IN_TASK, qs, ts, per_task[qs, ts])
    return data


def final_layer_graph(data: HeteroData, targets: np.ndarray) -> HeteroData:
    """``data`` with only the edges the final layer needs to score ``targets`` (query indices) against every model:
    those into the target queries and into the models. Training's loss reads nothing else, and the final layer
    then costs about a third of a whole one."""
    wanted = torch.zeros(int(data["query"].num_nodes), dtype=torch.bool)
    wanted[torch.from_numpy(targets)] = True
    keep = {etype: wanted[data[etype].edge_index[1]] for etype in EDGE_TYPES if etype[2] == "query"}
    keep[IN_TASK] = torch.zeros(data[IN_TASK].num_edges, dtype=torch.bool)
    return data.edge_subgraph(keep)


def attach_graph(nb_idx: np.ndarray, nb_weight: np.ndarray, shares: np.ndarray, query_x: Tensor,
                 n_tasks: int, n_llm: int) -> HeteroData:
    """The graph that attaches ``len(query_x)`` new queries to a trained graph.

    Its ``query`` nodes are the new queries' distinct training neighbours (``query.trained_ids``; their states come
    from the trained graph's cache) followed by the new queries; ``task`` and ``model`` nodes are the trained ones
    (states from the cache too). Edges run only from trained nodes into new ones (``NEAR`` and ``HOLDS``); the
    outcome and ``IN_TASK`` types are present without edges, so a new query gets the same root terms as a training
    query whose outcomes are hidden. ``x`` of trained nodes is left to the cache (zeros)."""
    nb_ids, local = np.unique(nb_idx, return_inverse=True)
    local = local.reshape(nb_idx.shape)
    data = HeteroData()
    data["query"].x = torch.cat([torch.zeros(len(nb_ids), query_x.size(1)), query_x])
    data["query"].trained_ids = torch.from_numpy(nb_ids.astype(np.int64))
    data["task"].num_nodes = n_tasks
    data["model"].num_nodes = n_llm
    for etype in (SOLVED, FAILED, REV_SOLVED, REV_FAILED, IN_TASK):
        _empty(data, etype)
    rows, cols = np.nonzero(nb_weight > 0)
    _put(data, NEAR, local[rows, cols], len(nb_ids) + rows, nb_weight[rows, cols])
    qs, ts = np.nonzero(shares)
    _put(data, HOLDS, ts, len(nb_ids) + qs, shares[qs, ts])
    return data
