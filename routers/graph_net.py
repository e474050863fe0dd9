"""The GraphRouter's graph and network: the trained graph's state, query attachment and the GNN.

Used by :class:`routers.graph.GraphRouter` (inference) and ``routers/graph_fit.py`` (fit); pure
numpy/torch, no I/O.

- :class:`GraphState`: the trained graph without the weights (task, query and LLM nodes and the
  query-LLM effect and cost edges), stored as arrays in the artifact;
- node inputs: :func:`raw_attributes` of an LLM card (scaled by :func:`scaled_attr`),
  :func:`query_inputs`, and the price prior :func:`price_prior_usd` the cost residual is relative to;
- attaching query nodes: :func:`nearest` (deterministic cosine top-k), :func:`task_shares` (own task,
  else the neighbours' vote) and :func:`attach_edges`; :func:`graph_view` builds the training graph's
  tensors with some query-LLM edges hidden (a :class:`View`);
- the network :class:`GraphNet`, with two message-passing parts over that graph:

  - node states: per-type encoders, then ``layers`` heterogeneous layers (one :class:`AttrConv` per
    relation, summed per destination type as ``HeteroConv(aggr="sum")`` does);
  - edge evidence: for a pair (query q, LLM l), the effects of l observed on q's neighbours
    (similarity-weighted with a learned temperature), on q's task, and over all queries (2-hop paths
    q-q'-l and q-task-q'-l), each with how much was observed, plus the neighbours' cost residual for l.

  An edge head reads both and outputs the effect (a logit) and a cost residual over the price prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from routers.base import ModelCard
from routers.objective import DEFAULT_OUTPUT_TOKENS
from routers.pricing import token_cost_usd

Edges = dict[str, tuple[Tensor, Tensor]]
States = dict[str, Tensor]

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
    return token_cost_usd(pt, out_tok[None, :], p_in[None, :], p_out[None, :])


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
    """The trained graph without the network weights (numpy; stored as arrays in the artifact)."""

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
