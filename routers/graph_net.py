"""The GraphRouter's network: torch-geometric ``HeteroConv`` layers over the ``HeteroData`` of
:mod:`routers.graph_data`, and an edge head scoring (query, model) pairs.

- Inputs: one linear encoder per node type (``HeteroDictLinear``), then ReLU and a LayerNorm per type.
- Each layer is one ``HeteroConv`` (sum over the relations that end at a node type) with one ``GraphConv`` per
  relation: ``lin_rel(sum of weight x source state) + lin_root(x)``, the weights of :mod:`routers.graph_data`
  making each sum a weighted mean (over a node's observed answers, its neighbours, its tasks). A residual
  connection, ReLU and a LayerNorm per type follow.
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
from torch_geometric.nn import GraphConv, HeteroConv, HeteroDictLinear

from routers.graph_data import FAILED, HOLDS, IN_TASK, NEAR, NODE_TYPES, REV_FAILED, REV_SOLVED, SOLVED

States = dict[str, Tensor]


def _hetero_layer(hidden: int) -> HeteroConv:
    relations = (SOLVED, FAILED, REV_SOLVED, REV_FAILED, NEAR, HOLDS, IN_TASK)
    return HeteroConv({etype: GraphConv(hidden, hidden, aggr="add") for etype in relations}, aggr="sum")


class GraphNet(nn.Module):
    """Per-type encoders, ``layers`` heterogeneous message-passing layers and an edge head (see the module doc)."""

    def __init__(self, dim: int, n_attr: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.encoder = HeteroDictLinear({"query": 1, "task": dim, "model": dim + n_attr}, hidden)
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
        out = conv(x, data.edge_index_dict, edge_weight_dict=data.edge_weight_dict)
        return {t: norms[t](x[t] + self.drop(F.relu(out[t]))) for t in x}

    def forward(self, data: HeteroData, last: HeteroData | None = None) -> list[States]:
        """States of every node after each layer (index 0 = encoded inputs) on one whole graph.

        ``last`` (training): the graph of the final layer, when only some of its nodes' states are read (the
        final states of nodes without their incoming edges there are not meaningful)."""
        states = [self.encode(data.x_dict)]
        for i in range(len(self.convs)):
            final = i == len(self.convs) - 1
            states.append(self.step(i, states[-1], last if final and last is not None else data))
        return states

    def attach(self, cache: list[States], data: HeteroData) -> Tensor:
        """Final states of the new queries of an attachment graph (:func:`routers.graph_data.attach_graph`), its
        trained nodes' states taken from ``cache`` at every layer."""
        ids = data["query"].trained_ids
        hq = self.encode({"query": data["query"].x[len(ids):]})["query"]
        for i in range(len(self.convs)):
            x = {"query": torch.cat([cache[i]["query"][ids], hq]), "task": cache[i]["task"],
                 "model": cache[i]["model"]}
            hq = self.step(i, x, data)["query"][len(ids):]
        return hq

    def edge_out(self, hq: Tensor, hm: Tensor) -> Tensor:
        """``[n, m, 2]`` (quality logit, standardized cost residual) for every query x model pair."""
        n, m = hq.size(0), hm.size(0)
        q, l_ = hq[:, None, :].expand(n, m, -1), hm[None, :, :].expand(n, m, -1)
        return self.head(torch.cat([q * l_, q, l_], dim=-1))
