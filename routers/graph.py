"""GraphRouter (Feng et al., ICLR 2025): routing as edge prediction in a graph of tasks, queries and LLMs.

Nodes: task (embedding of a task description), query (query embedding + log prompt tokens) and LLM
(embedding of the model's description + numeric attributes: prices, size, context window). Edges:
task <-> query, query -> query (its k nearest training queries, cosine similarity as attribute) and
query <-> LLM carrying the observed effect (quality) and normalized cost of the training pairs.

The network (:class:`GraphNet`) has two message-passing parts over that graph:

- node states: per-type encoders, then ``layers`` heterogeneous layers (one :class:`AttrConv` per
  relation, summed per destination type as ``HeteroConv(aggr="sum")`` does);
- edge evidence: for a pair (query q, LLM l), the effects of l observed on q's neighbours
  (similarity-weighted with a learned temperature), on q's task, and over all queries (2-hop paths
  q-q'-l and q-task-q'-l), each with how much was observed, plus the neighbours' cost residual for l.

An edge head reads both and outputs the effect (a logit) and a cost residual over the price prior
``prompt tokens x input price + output tokens x output price``. Training (``training/graph_train.py``)
hides the LLM edges of a random share of the queries, and sometimes every edge of one LLM, and fits
the hidden edges from the visible ones.

Inference attaches new queries one-way (trained nodes -> new node, never back), so the trained graph
is computed once and cached; a batch then costs a k-NN lookup and a few small matrix products. A query
is attached to its task node when the artifact knows its task, else to the tasks of its nearest
training queries (weighted by vote share).

Candidates are matched to trained LLM nodes by name. Any other candidate becomes an *inductive* LLM
node built from its attributes alone: it has no edges, so it borrows the edge evidence of the trained
LLMs weighted by description similarity (flagged as borrowed; training does the same for an LLM it
hides). Its description is embedded with ``text_encoder`` when set (``router.text_encoder =
featurizer.embed``; never pickled) or found among descriptions registered in the artifact with
:meth:`GraphRouter.register_models`. Documented fallbacks, so bad input is still scored: an empty or
unembeddable description -> the mean description embedding of the trained LLMs (it then borrows from
all of them alike); unknown size or context window -> the trained LLMs' median, with a "missing" flag;
a task the artifact does not know -> attached through the nearest training queries' tasks.

Cost: ``Prediction.cost_usd`` is the price prior times exp(predicted residual), in USD per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError
from routers.objective import DEFAULT_OUTPUT_TOKENS

if TYPE_CHECKING:
    from training.dataset import RoutingDataset

TextEncoder = Callable[[Sequence[str]], np.ndarray]
Edges = dict[str, tuple[Tensor, Tensor]]
States = dict[str, Tensor]

#: bump when the pickled state layout changes; a mismatched artifact fails at load
GRAPH_FORMAT = 1
#: relations (src, name, dst, edge attribute width); messages flow src -> dst
RELATIONS: tuple[tuple[str, str, str, int], ...] = (
    ("task", "has", "query", 1),
    ("query", "of", "task", 1),
    ("query", "near", "query", 1),
    ("llm", "answered", "query", 2),
    ("query", "asked", "llm", 2),
)
NODE_TYPES = ("task", "query", "llm")
ATTR_NAMES = ("log_in_price", "log_out_price", "log_size_b", "size_missing", "log_context", "ctx_missing")
EVIDENCE_NAMES = (
    "nb_effect", "nb_seen", "task_effect", "task_seen", "llm_effect", "llm_seen", "nb_cost", "borrowed"
)
EPS_USD = 1e-9


def raw_attributes(card: ModelCard, size_fill: float, ctx_fill: float) -> np.ndarray:
    """Unscaled numeric attributes of an LLM node (see :data:`ATTR_NAMES`); unknowns take the fill."""
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
    return (pt * p_in[None, :] + out_tok[None, :] * p_out[None, :]) / 1e6


def nearest(queries: np.ndarray, base: np.ndarray, k: int, max_sim: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours in ``base`` of each row of ``queries`` -> (indices, similarities).

    Neighbours more similar than ``max_sim`` are skipped (training uses it to drop the query itself).
    Similarities are rounded to 1e-6 and ties go to the lower index, so a query gets the same
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


def task_shares(own: np.ndarray, neighbour_tasks: np.ndarray, n_tasks: int) -> np.ndarray:
    """``[n, T]`` attachment of queries to tasks: one-hot where ``own >= 0``, else neighbours' vote shares."""
    shares = np.zeros((len(own), n_tasks), dtype=np.float32)
    known = own >= 0
    shares[np.flatnonzero(known), own[known]] = 1.0
    unknown = np.flatnonzero(~known)
    if neighbour_tasks.shape[1] and len(unknown):
        rows = np.repeat(unknown, neighbour_tasks.shape[1])
        np.add.at(shares, (rows, neighbour_tasks[unknown].ravel()), 1.0 / neighbour_tasks.shape[1])
    return shares


@dataclass
class GraphState:
    """The trained graph without the network weights (numpy; pickled in the artifact)."""

    task_names: list[str]
    task_x: np.ndarray  # [T, d] task description embeddings
    query_emb: np.ndarray  # [N, d]
    query_logtok: np.ndarray  # [N]
    query_task: np.ndarray  # [N] task index
    near_idx: np.ndarray  # [N, k] training neighbours of each training query (itself excluded)
    near_sim: np.ndarray  # [N, k]
    llm_names: list[str]
    llm_desc: np.ndarray  # [L, d]
    llm_attr: np.ndarray  # [L, A] raw attributes
    quality: np.ndarray  # [N, L] observed effect; NaN = no edge
    cost_attr: np.ndarray  # [N, L] standardized log cost of the edge
    resid: np.ndarray  # [N, L] standardized log(cost / price prior)
    attr_mean: np.ndarray
    attr_std: np.ndarray
    size_fill: float
    ctx_fill: float
    resid_mean: float
    resid_std: float
    desc_mean: np.ndarray  # [d] fallback description embedding
    desc_cache: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.query_emb.shape[1])


class AttrConv(MessagePassing):
    """Bipartite conv whose message mixes the source state with the edge attributes.

    ``out_i = W_msg mean_j relu(W_src x_j + W_edge e_ij) + W_root x_i``. The nonlinearity lets a query
    tell *which* LLM reached *which* effect (an additive message would blur the two).
    """

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__(aggr="mean")
        self.lin_src = nn.Linear(hidden, hidden)
        self.lin_edge = nn.Linear(edge_dim, hidden, bias=False)
        self.lin_msg = nn.Linear(hidden, hidden)
        self.lin_root = nn.Linear(hidden, hidden)

    def forward(self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        size = (x_src.size(0), x_dst.size(0))
        agg = self.propagate(edge_index, x=(self.lin_src(x_src), x_dst), edge_attr=edge_attr, size=size)
        return self.lin_msg(agg) + self.lin_root(x_dst)

    def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        return F.relu(x_j + self.lin_edge(edge_attr))


@dataclass
class View:
    """Tensors of the training graph with some query-LLM edges hidden (``obs`` = 1 where visible)."""

    x0: dict[str, Tensor]
    edges: Edges
    eff: Tensor  # [N, L] effect, 0 where hidden
    obs: Tensor  # [N, L]
    resid: Tensor  # [N, L] cost residual, 0 where hidden
    task_sum: Tensor  # [T, L] visible effect summed per (own) task
    task_cnt: Tensor  # [T, L]


def _edge(src: np.ndarray, dst: np.ndarray, attr: np.ndarray, width: int = 1) -> tuple[Tensor, Tensor]:
    ei = torch.from_numpy(np.stack([src, dst]).astype(np.int64).reshape(2, -1))
    ea = torch.from_numpy(np.asarray(attr, dtype=np.float32).reshape(len(src), width))
    return ei, ea


def attach_edges(shares: np.ndarray, nb_idx: np.ndarray, nb_sim: np.ndarray) -> Edges:
    """Edges from trained task and query nodes into a batch of (new or training) query nodes."""
    rows, tasks = np.nonzero(shares)
    n, k = nb_idx.shape
    return {
        "task__has__query": _edge(tasks, rows, shares[rows, tasks]),
        "query__near__query": _edge(nb_idx.ravel(), np.repeat(np.arange(n), k), nb_sim.ravel()),
    }


def graph_view(
    state: GraphState, visible_q: np.ndarray | None = None, visible_llm: np.ndarray | None = None,
    shares: np.ndarray | None = None,
) -> View:
    """The training graph with the LLM edges of ``~visible_q`` queries and ``~visible_llm`` LLMs hidden.

    ``shares`` (default: each query's own task) attaches training queries to task nodes; training
    attaches some hidden queries through their neighbours' tasks, as a request without a task is.
    """
    n, n_llm = state.quality.shape
    vq = np.ones(n, bool) if visible_q is None else visible_q
    vl = np.ones(n_llm, bool) if visible_llm is None else visible_llm
    obs = np.isfinite(state.quality) & vq[:, None] & vl[None, :]
    qi, li = np.nonzero(obs)
    qa_attr = np.stack([state.quality[qi, li], state.cost_attr[qi, li]], axis=1)
    own = task_shares(state.query_task, state.near_idx[:, :0], len(state.task_names))
    edges = attach_edges(own if shares is None else shares, state.near_idx, state.near_sim)
    edges.update({
        "query__of__task": _edge(np.arange(n), state.query_task, np.ones(n, np.float32)),
        "llm__answered__query": _edge(li, qi, qa_attr, 2),
        "query__asked__llm": _edge(qi, li, qa_attr, 2),
    })
    x0 = {
        "task": torch.from_numpy(state.task_x.astype(np.float32)),
        "query": query_inputs(state.query_emb, state.query_logtok),
        "llm_desc": torch.from_numpy(state.llm_desc.astype(np.float32)),
        "llm_attr": torch.from_numpy(scaled_attr(state, state.llm_attr)),
    }
    o = torch.from_numpy(obs.astype(np.float32))
    eff = torch.from_numpy(np.where(obs, state.quality, 0.0).astype(np.float32))
    own_t = torch.from_numpy(own.T.copy())
    return View(x0, edges, eff, o, torch.from_numpy(np.where(obs, state.resid, 0.0).astype(np.float32)),
                own_t @ eff, own_t @ o)


def scaled_attr(state: GraphState, raw: np.ndarray) -> np.ndarray:
    return ((raw - state.attr_mean) / state.attr_std).astype(np.float32)


def query_inputs(emb: np.ndarray, logtok: np.ndarray) -> Tensor:
    return torch.from_numpy(np.concatenate([emb, logtok[:, None] / 10.0], axis=1).astype(np.float32))


class GraphNet(nn.Module):
    """Per-type encoders, ``layers`` heterogeneous message-passing layers, edge evidence and an edge head."""

    def __init__(self, dim: int, n_attr: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.enc_task = nn.Linear(dim, hidden)
        self.enc_query = nn.Linear(dim + 1, hidden)
        self.enc_llm = nn.Linear(dim, hidden)
        self.enc_attr = nn.Linear(n_attr, hidden)
        self.enc_norm = nn.ModuleDict({t: nn.LayerNorm(hidden) for t in NODE_TYPES})
        self.convs = nn.ModuleList(
            nn.ModuleDict({rel_key(r): AttrConv(hidden, r[3]) for r in RELATIONS}) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.ModuleDict({t: nn.LayerNorm(hidden) for t in NODE_TYPES}) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        #: sharpness of the neighbour weights exp(tau * (similarity - 1)), learned
        self.log_tau = nn.Parameter(torch.tensor(float(np.log(20.0))))
        #: sharpness of the description-similarity weights an LLM without edges borrows evidence by
        self.log_tau_llm = nn.Parameter(torch.tensor(float(np.log(10.0))))
        n_ev = len(EVIDENCE_NAMES) + 3
        #: the edge head: a linear read of the evidence plus a correction from the node states that
        #: starts at zero, so training first learns what the graph's labels say, then refines it
        self.skip = nn.Linear(n_ev, 2)
        last = nn.Linear(hidden, 2)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(nn.Linear(hidden + n_ev, hidden), nn.ReLU(), nn.Dropout(dropout), last)

    def encode_query(self, query: Tensor) -> Tensor:
        return self.drop(self.enc_norm["query"](F.relu(self.enc_query(query))))

    def encode_llm(self, desc: Tensor, attr: Tensor) -> Tensor:
        return self.drop(self.enc_norm["llm"](F.relu(self.enc_llm(desc) + self.enc_attr(attr))))

    def encode(self, x0: dict[str, Tensor]) -> States:
        """Layer-0 states of the three node types from a :class:`View`'s inputs."""
        return {
            "task": self.drop(self.enc_norm["task"](F.relu(self.enc_task(x0["task"])))),
            "query": self.encode_query(x0["query"]),
            "llm": self.encode_llm(x0["llm_desc"], x0["llm_attr"]),
        }

    def layer(self, i: int, src: States, dst: States, edges: Edges) -> States:
        """Layer ``i`` for the nodes in ``dst`` given source states ``src`` (HeteroConv-style sum per type).

        Every relation ending at a type contributes (one without edges, its root and bias terms only),
        so a node without edges is treated alike in training and at inference.
        """
        total: dict[str, Tensor] = {}
        convs: nn.ModuleDict = self.convs[i]  # type: ignore[assignment]
        norms: nn.ModuleDict = self.norms[i]  # type: ignore[assignment]
        for rel in RELATIONS:
            s, _, d, width = rel
            if d in dst:
                ei, ea = edges.get(rel_key(rel)) or (torch.zeros((2, 0), dtype=torch.long), torch.zeros((0, width)))
                out = convs[rel_key(rel)](src[s], dst[d], ei, ea)
                total[d] = total[d] + out if d in total else out
        return {t: norms[t](dst[t] + self.drop(F.relu(h))) for t, h in total.items()}

    def forward(self, x0: dict[str, Tensor], edges: Edges) -> list[States]:
        """States of every node after each layer (index 0 = encoded inputs) on one whole graph."""
        states = [self.encode(x0)]
        for i in range(len(self.convs)):
            states.append(self.layer(i, states[-1], states[-1], edges))
        return states

    def evidence(
        self, view: View, nb_idx: Tensor, nb_sim: Tensor, shares: Tensor, cols: Tensor, cand_desc: Tensor
    ) -> Tensor:
        """``[n, m, E]`` edge evidence (see :data:`EVIDENCE_NAMES`) for queries x candidates.

        ``cols`` maps candidates to trained LLM columns (-1: not in the graph). A candidate with no
        observed edges (unseen, or hidden in training) borrows the evidence of the observed LLMs,
        weighted by a softmax over description similarity (``cand_desc`` [m, d]), and is flagged.
        """
        w = torch.exp(self.log_tau.exp() * (nb_sim - 1.0))[..., None]  # [n, k, 1]
        wo = w * view.obs[nb_idx]  # [n, k, L]
        den = wo.sum(1)
        fill = view.eff.sum() / view.obs.sum().clamp_min(1.0)
        nb_eff = torch.where(den > 0, (wo * view.eff[nb_idx]).sum(1) / den.clamp_min(1e-9), fill)
        nb_cost = (wo * view.resid[nb_idx]).sum(1) / den.clamp_min(1e-9)
        t_cnt = shares @ view.task_cnt
        task_eff = torch.where(t_cnt > 0, (shares @ view.task_sum) / t_cnt.clamp_min(1e-9), fill)
        l_cnt = view.obs.sum(0, keepdim=True)
        llm_eff = torch.where(l_cnt > 0, view.eff.sum(0, keepdim=True) / l_cnt.clamp_min(1.0), fill)
        ev = torch.stack([
            nb_eff, den / w.sum(1).clamp_min(1e-9), task_eff, torch.log1p(t_cnt) / 5.0,
            llm_eff.expand_as(nb_eff), (torch.log1p(l_cnt) / 10.0).expand_as(nb_eff), nb_cost,
        ], dim=-1)  # [n, L, E - 1]
        seen = l_cnt[0] > 0
        has = (cols >= 0) & seen[cols.clamp_min(0)]
        logits = self.log_tau_llm.exp() * (cand_desc @ view.x0["llm_desc"].T)  # [m, L]
        weights = torch.softmax(torch.where(seen[None, :], logits, torch.full_like(logits, -1e9)), dim=1)
        borrowed = torch.einsum("nle,ml->nme", ev, weights)
        out = torch.where(has[None, :, None], ev[:, cols.clamp_min(0), :], borrowed)
        flag = (~has).to(out.dtype)[None, :, None].expand(out.size(0), -1, 1)
        return torch.cat([out, flag], dim=-1)

    def edge_out(self, hq: Tensor, hl: Tensor, ev: Tensor) -> Tensor:
        """``[n, m, 2]`` (effect logit, standardized cost residual) for every query x LLM pair."""
        p = ev[..., [0, 2, 4]].clamp(0.02, 0.98)
        ev = torch.cat([ev, torch.log(p / (1 - p))], dim=-1)
        return self.skip(ev) + self.head(torch.cat([hq[:, None, :] * hl[None, :, :], ev], dim=-1))


def rel_key(rel: tuple[str, str, str, int]) -> str:
    return f"{rel[0]}__{rel[1]}__{rel[2]}"


class GraphRouter(Router):
    """Heterogeneous-GNN router predicting effect and cost of every (query, LLM) edge; see the module doc.

    Training parameters, read by ``training.graph_train``: ``hidden`` state width, ``layers``
    message-passing rounds, ``k_neighbors`` query-query edges, ``epochs``, ``lr`` (node network) and
    ``evidence_lr`` (the linear read of the edge evidence, learned faster), ``weight_decay``,
    ``hide_frac`` share of training queries whose edges are hidden per epoch, ``llm_mask_prob`` chance
    per epoch of hiding one LLM entirely (teaches scoring an LLM with no edges), ``task_drop`` share of
    hidden queries attached through their neighbours' tasks, ``cost_weight`` of the cost loss,
    ``val_frac``/``patience`` early stopping on always-hidden queries, ``seed``, ``threads`` (CPU).
    """

    name = "graph"
    requires_embeddings = True

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
        #: optional ``texts -> [n, d]`` embeddings, for ``fit`` and for unseen LLMs (never pickled)
        self.text_encoder: TextEncoder | None = None

    def fit(self, dataset: RoutingDataset) -> Self:
        """Build the graph from ``dataset`` and train the network (see ``training/graph_train.py``)."""
        from training.graph_train import fit_graph_router

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
        if n == 0 or m == 0:
            return Prediction(quality=np.zeros((n, m)), cost_usd=np.zeros((n, m)))
        emb = self._check_embeddings(features.embeddings, n)
        tokens = np.maximum(np.asarray(features.prompt_tokens, dtype=np.float64), 0.0)
        tasks = list(features.tasks) if features.tasks is not None else [None] * n
        index = {name: j for j, name in enumerate(state.llm_names)}
        cols = torch.tensor([index.get(c.name, -1) for c in candidates], dtype=torch.long)
        with torch.no_grad():
            view, layers = self._trained()
            nb, sim = nearest(emb, state.query_emb, self.k_neighbors)
            task_index = {t: i for i, t in enumerate(state.task_names)}
            own = np.asarray([task_index.get(t, -1) if t is not None else -1 for t in tasks], dtype=np.int64)
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
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

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
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    # -- artifact ----------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": GRAPH_FORMAT, "params": self.get_params()}
        if hasattr(self, "state_"):
            out["graph"] = self.state_
            out["weights"] = {k: v.detach().numpy().copy() for k, v in self.net_.state_dict().items()}
            out["train_info"] = self.train_info_
        return out

    def __setstate__(self, data: dict[str, Any]) -> None:
        """Rebuild from an artifact; a mismatch raises ValueError (``Router.load`` names the file)."""
        if not isinstance(data, dict) or data.get("format") != GRAPH_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"graph artifact format {got!r}, this code reads format {GRAPH_FORMAT}")
        self.__init__(**data["params"])  # type: ignore[misc]
        if "graph" not in data:
            return
        state: GraphState = data["graph"]
        n, n_llm = state.quality.shape
        if len(state.query_emb) != n or len(state.llm_names) != n_llm or len(state.task_x) != len(state.task_names):
            raise ValueError("graph arrays disagree in size (queries, LLMs or tasks)")
        net = GraphNet(state.dim, len(ATTR_NAMES), self.hidden, self.layers, self.dropout)
        try:
            net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in data["weights"].items()})
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2]) or str(exc)
            raise ValueError(f"graph weights do not match the network: {detail[:200]}") from None
        self.set_trained(state, net, data.get("train_info", {}))
