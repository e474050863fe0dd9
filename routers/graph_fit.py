"""GraphRouter fitting: build the task/query/LLM graph from a ``RoutingDataset``, then learn by edge masking.

Every epoch hides the query-LLM edges of a random ``hide_frac`` of the training queries (with
probability ``llm_mask_prob`` also every edge of one random LLM, so the network learns to score an LLM
node that has no edges, as an unseen LLM at inference) and fits the hidden edges' effect (binary
cross-entropy on the quality in [0, 1]) and cost (squared error on the standardized log cost residual
over the price prior). A fixed ``val_frac`` of queries is always hidden; training keeps the weights
with the best validation loss (checked every 5 epochs, stopping after ``patience`` epochs without gain).

Embeddings: queries use ``dataset.features.embeddings`` when the harness attached them, else the
router's ``text_encoder``, else :func:`default_encoder`. Task and LLM descriptions are embedded with the
same encoder here, at fit time, and stored in the artifact (the router stays pure at inference).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from routers.base import ModelCard, RouterError
from routers.encoders.minilm import MiniLMEncoder
from routers.features import unit_rows
from routers.graph_net import (
    ATTR_NAMES,
    EPS_USD,
    GraphNet,
    GraphState,
    View,
    graph_view,
    nearest,
    price_prior_usd,
    raw_attributes,
    task_shares,
)

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset
    from routers.graph import GraphRouter, TextEncoder

TASK_DESCRIPTIONS = Path(__file__).resolve().parent / "data" / "task_descriptions.yaml"
#: a query whose cosine similarity to another training query exceeds this is its duplicate: not a neighbour
DUPLICATE_SIM = 0.999
#: task label used when a dataset has none
GENERAL_TASK = "general"


def task_description(name: str, dataset: str, table: dict[str, Any]) -> str:
    """The text of a task node: listed description, else the dataset's template, else the default."""
    tasks = table.get("tasks") or {}
    if name in tasks:
        return str(tasks[name])
    template = (table.get("templates") or {}).get(dataset) or table.get("default") or "{name}"
    return str(template).format(name=name.replace("_", " "))


def load_task_table(path: Path = TASK_DESCRIPTIONS) -> dict[str, Any]:
    """The task description file as a mapping; :class:`RouterError` naming the file when it is bad."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RouterError(f"{path}: cannot read task descriptions ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise RouterError(f"{path}: expected a mapping with 'tasks', 'templates' and 'default'")
    return data


def default_encoder() -> TextEncoder:
    """The ``minilm`` encoder in float32, as the featurizer runs it (all-MiniLM-L6-v2, 384-d, unit norm). Model
    descriptions are always embedded with this contextual encoder, whichever encoder the queries use: they are
    few, and fit and ``register`` must agree."""
    return MiniLMEncoder(dtype="float32")


def _llm_nodes(cards: list[ModelCard], encode: TextEncoder, dim: int) -> dict[str, Any]:
    """Description embeddings (mean of the others when a card has none) and raw attributes of the LLMs."""
    described = [i for i, c in enumerate(cards) if c.description.strip()]
    desc = np.zeros((len(cards), dim), dtype=np.float32)
    if described:
        desc[described] = unit_rows(encode([cards[i].description for i in described]))
    mean = desc[described].mean(axis=0) if described else np.zeros(dim, dtype=np.float32)
    desc[[i for i in range(len(cards)) if i not in described]] = mean
    sizes = [np.log1p(c.size_b) for c in cards if c.size_b]
    ctxs = [np.log2(c.context_window / 1024.0 + 1.0) for c in cards if c.context_window]
    size_fill = float(np.median(sizes)) if sizes else 0.0
    ctx_fill = float(np.median(ctxs)) if ctxs else 0.0
    raw = np.stack([raw_attributes(c, size_fill, ctx_fill) for c in cards])
    std = raw.std(axis=0)
    return {
        "llm_desc": desc, "llm_attr": raw, "attr_mean": raw.mean(axis=0),
        "attr_std": np.where(std > 1e-6, std, 1.0).astype(np.float32),
        "size_fill": size_fill, "ctx_fill": ctx_fill, "desc_mean": mean.astype(np.float32),
    }


def _cost_targets(dataset: RoutingDataset) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(cost edge attribute, residual target) ``[n, m]`` and the residual's mean and std."""
    cost = np.where(np.isfinite(dataset.cost_usd), np.maximum(dataset.cost_usd, 0.0), np.nan)
    prior = price_prior_usd(dataset.prompt_tokens, dataset.cards)
    log_cost = np.log(np.where(np.isfinite(cost), cost, prior) + EPS_USD)
    attr = (log_cost - log_cost.mean()) / max(float(log_cost.std()), 1e-6)
    resid = log_cost - np.log(prior + EPS_USD)
    mean, std = float(resid.mean()), float(resid.std())
    std = std if std > 1e-6 else 1.0
    return attr.astype(np.float32), ((resid - mean) / std).astype(np.float32), mean, std


def build_state(dataset: RoutingDataset, encode: TextEncoder, k: int) -> GraphState:
    """The training graph of ``dataset`` (embeddings, neighbours, effect and cost edges, LLM nodes)."""
    if dataset.features is not None and dataset.features.embeddings is not None:
        emb = unit_rows(dataset.features.embeddings)
    else:
        emb = unit_rows(encode(list(dataset.queries)))
    tasks = list(dataset.tasks) if dataset.tasks is not None else [GENERAL_TASK] * len(dataset)
    task_names = sorted(set(tasks))
    table = load_task_table()
    task_x = unit_rows(encode([task_description(t, dataset.name, table) for t in task_names]))
    index = {t: i for i, t in enumerate(task_names)}
    near_idx, near_sim = nearest(emb, emb, k, max_sim=DUPLICATE_SIM)
    cost_attr, resid, r_mean, r_std = _cost_targets(dataset)
    quality = np.where(np.isfinite(dataset.quality), np.clip(dataset.quality, 0.0, 1.0), np.nan)
    state = GraphState(
        task_names=task_names, task_x=task_x, query_emb=emb,
        query_logtok=np.log1p(np.maximum(dataset.prompt_tokens, 0.0)).astype(np.float32),
        query_task=np.asarray([index[t] for t in tasks], dtype=np.int64),
        near_idx=near_idx, near_sim=near_sim, llm_names=list(dataset.models),
        quality=quality.astype(np.float32), cost_attr=cost_attr, resid=resid, resid_mean=r_mean, resid_std=r_std,
        **_llm_nodes(list(dataset.cards), encode, emb.shape[1]),
    )
    return state


def _loss(net: GraphNet, view: View, state: GraphState, shares: np.ndarray, rows: np.ndarray,
          targets: dict[str, torch.Tensor], cost_weight: float) -> torch.Tensor:
    """BCE on effect + ``cost_weight`` x squared error on the cost residual, over ``rows`` x every LLM."""
    states = net(view.x0, view.edges)
    idx = torch.from_numpy(rows)
    cols = torch.arange(state.quality.shape[1])
    ev = net.evidence(view, torch.from_numpy(state.near_idx[rows]), torch.from_numpy(state.near_sim[rows]),
                      torch.from_numpy(shares[rows]), cols, view.x0["llm_desc"])
    out = net.edge_out(states[-1]["query"][idx], states[-1]["llm"], ev)
    q, mask, resid = targets["quality"][idx], targets["mask"][idx], targets["resid"][idx]
    bce = F.binary_cross_entropy_with_logits(out[..., 0], q, reduction="none")
    mse = (out[..., 1] - resid) ** 2
    return ((bce + cost_weight * mse) * mask).sum() / mask.sum().clamp(min=1.0)


def _shares(state: GraphState, vote: np.ndarray) -> np.ndarray:
    """Task attachment of the training queries: own task, or the neighbours' tasks where ``vote``."""
    own = np.where(vote, -1, state.query_task)
    return task_shares(own, state.query_task[state.near_idx], len(state.task_names))


def train_network(router: GraphRouter, state: GraphState) -> tuple[GraphNet, dict[str, Any]]:
    """Masked edge training (see the module doc); returns the best network and a training summary."""
    rng = np.random.default_rng(router.seed)
    torch.manual_seed(router.seed)
    n, n_llm = state.quality.shape
    net = GraphNet(state.dim, len(ATTR_NAMES), router.hidden, router.layers, router.dropout)
    # the evidence read-out learns fast, the node states slowly: node states can memorize training
    # queries, so early stopping must find the evidence already learned when that starts
    fast = [net.skip.weight, net.skip.bias, net.log_tau, net.log_tau_llm]
    slow = [p for p in net.parameters() if all(p is not f for f in fast)]
    groups = [{"params": fast, "lr": router.evidence_lr}, {"params": slow, "lr": router.lr}]
    opt = torch.optim.Adam(groups, weight_decay=router.weight_decay)
    observed = np.isfinite(state.quality)
    targets = {
        "quality": torch.from_numpy(np.where(observed, state.quality, 0.0).astype(np.float32)),
        "mask": torch.from_numpy(observed.astype(np.float32)),
        "resid": torch.from_numpy(np.where(observed, state.resid, 0.0).astype(np.float32)),
    }
    is_val = np.zeros(n, bool)
    if n >= 20 and router.val_frac > 0:
        is_val[rng.choice(n, size=max(1, int(router.val_frac * n)), replace=False)] = True
    val_vote = is_val & (rng.random(n) < router.task_drop)
    val_shares = _shares(state, val_vote)
    best: tuple[float, int, dict[str, torch.Tensor]] = (np.inf, 0, {})
    epoch = 0
    for epoch in range(1, router.epochs + 1):
        net.train()
        hidden = ~is_val & (rng.random(n) < router.hide_frac)
        if not hidden.any():  # never an empty batch
            hidden[rng.choice(np.flatnonzero(~is_val))] = True
        vis_llm = np.ones(n_llm, bool)
        if n_llm > 1 and rng.random() < router.llm_mask_prob:
            vis_llm[rng.integers(n_llm)] = False
        shares = _shares(state, (hidden & (rng.random(n) < router.task_drop)) | val_vote)
        view = graph_view(state, ~hidden & ~is_val, vis_llm, shares)
        loss = _loss(net, view, state, shares, np.flatnonzero(hidden), targets, router.cost_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % 5 and epoch != router.epochs:
            continue
        score = float(loss.item())
        if is_val.any():
            net.eval()
            with torch.no_grad():
                view = graph_view(state, ~is_val, None, val_shares)
                rows = np.flatnonzero(is_val)
                score = float(_loss(net, view, state, val_shares, rows, targets, router.cost_weight).item())
        if score < best[0] - 1e-4:
            best = (score, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
        elif epoch - best[1] >= router.patience:
            break
    net.load_state_dict(best[2])
    return net.eval(), {"best_epoch": best[1], "epochs_run": epoch, "best_val_loss": round(best[0], 5)}


def fit_graph_router(router: GraphRouter, dataset: RoutingDataset) -> GraphRouter:
    """Build the graph of ``dataset``, train ``router``'s network on it and install both in ``router``."""
    if len(dataset) < 2 or not dataset.models:
        raise RouterError(f"graph router needs >= 2 queries and >= 1 model, got {len(dataset)} x {len(dataset.models)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, router.threads))
    started = time.perf_counter()
    try:
        encode = router.text_encoder or default_encoder()
        state = build_state(dataset, encode, router.k_neighbors)
        net, info = train_network(router, state)
    finally:
        torch.set_num_threads(threads)
    info.update(fit_seconds=round(time.perf_counter() - started, 2), queries=len(dataset), models=len(dataset.models))
    router.set_trained(state, net, info)
    return router
