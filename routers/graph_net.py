"""The GraphRouter's network: torch-geometric ``HeteroConv`` layers over the ``HeteroData`` of
:mod:`routers.graph_data`, and an edge head scoring (query, model) pairs.

- Inputs: one linear encoder per node type (``HeteroDictLinear``), then ReLU and a LayerNorm per type.
- Each layer is one ``HeteroConv`` (sum over the relations that end at a node type) with one convolution per
  relation: ``GINEConv`` (mean aggregation) on the answer edges, whose message ``relu(x_src + W edge_attr)`` mixes
  *which* model (or query) with *what* quality and cost was observed, and ``GraphConv`` (weighted sum; the weights
  sum to one per node) on the similarity and category edges. A residual connection, ReLU and a LayerNorm per type
  follow.
- The edge head reads ``[h_q * h_m, h_q, h_m]`` of the last layer and outputs a quality logit and a
  standardized log cost residual over the price prior.

:meth:`GraphNet.forward` runs a whole graph (training, and the trained graph once at inference);
:meth:`GraphNet.attach` runs the small attachment graph layer by layer on the trained graph's cached states, so a
request costs a few small products, not a pass over the training graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GINEConv, GraphConv, HeteroConv, HeteroDictLinear

from routers.graph_data import ANSWERED_BY, ANSWERS, EDGE_DIM, HOLDS, IN_TASK, NEAR, NODE_TYPES

States = dict[str, Tensor]


def _hetero_layer(hidden: int) -> HeteroConv:
    def gine() -> GINEConv:
        return GINEConv(nn.Linear(hidden, hidden), edge_dim=EDGE_DIM, aggr="mean")

    return HeteroConv({
        ANSWERS: gine(),
        ANSWERED_BY: gine(),
        NEAR: GraphConv(hidden, hidden, aggr="add"),
        HOLDS: GraphConv(hidden, hidden, aggr="add"),
        IN_TASK: GraphConv(hidden, hidden, aggr="add"),
    }, aggr="sum")


class GraphNet(nn.Module):
    """Per-type encoders, ``layers`` heterogeneous message-passing layers and an edge head (see the module doc)."""

    def __init__(self, dim: int, n_attr: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.encoder = HeteroDictLinear({"query": dim + 1, "task": dim, "model": dim + n_attr}, hidden)
        self.enc_norm = nn.ModuleDict({t: nn.LayerNorm(hidden) for t in NODE_TYPES})
        self.convs = nn.ModuleList(_hetero_layer(hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.ModuleDict({t: nn.LayerNorm(hidden) for t in NODE_TYPES})
                                   for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 2))

    def encode(self, x_dict: dict[str, Tensor]) -> States:
        """Layer-0 states of the node types present in ``x_dict``."""
        return {t: self.drop(self.enc_norm[t](F.relu(h))) for t, h in self.encoder(x_dict).items()}

    def step(self, i: int, x: States, data: HeteroData) -> States:
        """Layer ``i`` on ``data``'s edges from states ``x`` (every node type has a relation ending at it)."""
        conv: HeteroConv = self.convs[i]  # type: ignore[assignment]
        norms: nn.ModuleDict = self.norms[i]  # type: ignore[assignment]
        out = conv(x, data.edge_index_dict, edge_attr_dict=data.edge_attr_dict,
                   edge_weight_dict=data.edge_weight_dict)
        return {t: norms[t](x[t] + self.drop(F.relu(out[t]))) for t in x}

    def forward(self, data: HeteroData) -> list[States]:
        """States of every node after each layer (index 0 = encoded inputs) on one whole graph."""
        states = [self.encode(data.x_dict)]
        for i in range(len(self.convs)):
            states.append(self.step(i, states[-1], data))
        return states

    def attach(self, cache: list[States], data: HeteroData) -> tuple[Tensor, Tensor]:
        """Final states of the new queries and new models of an attachment graph
        (:func:`routers.graph_data.attach_graph`), its trained nodes' states taken from ``cache`` at every layer."""
        ids = data["query"].trained_ids
        nq, nm = len(ids), int(data["model"].n_trained)
        new = self.encode({"query": data["query"].x[nq:], "model": data["model"].x[nm:]})
        hq, hm = new["query"], new["model"]
        for i in range(len(self.convs)):
            x = {"query": torch.cat([cache[i]["query"][ids], hq]), "task": cache[i]["task"],
                 "model": torch.cat([cache[i]["model"], hm])}
            out = self.step(i, x, data)
            hq, hm = out["query"][nq:], out["model"][nm:]
        return hq, hm

    def edge_out(self, hq: Tensor, hm: Tensor) -> Tensor:
        """``[n, m, 2]`` (quality logit, standardized cost residual) for every query x model pair."""
        n, m = hq.size(0), hm.size(0)
        q, l_ = hq[:, None, :].expand(n, m, -1), hm[None, :, :].expand(n, m, -1)
        return self.head(torch.cat([q * l_, q, l_], dim=-1))
