"""GraphRouter fitting: build the query/task/model graph from a ``RoutingDataset``, then learn by edge masking.

**Category attachment.** A :class:`routers.category.CategoryModel` is fitted on the training rows' task labels
(the only place labels are read). Each training query is attached to the task nodes by its *out-of-fold*
``P(task | query)`` (``category_folds`` folds grouped by query text, so a query's distribution comes from a model
that never saw it, as a new query's does), top ``task_top_k`` renormalized. A data set with fewer than two task
labels gets one task node holding every query with weight one, and no category model.

**Training.** Every epoch hides the outcome edges of a random ``hide_frac`` of the training queries and fits the
hidden edges' quality (binary cross-entropy on the quality in [0, 1]) and cost (squared error on the standardized
log cost residual over the price prior). A fixed ``val_frac`` of queries is always hidden; training keeps the
weights with the best validation loss (checked every 5 epochs, stopping after ``patience`` epochs without gain).

Embeddings: queries use ``dataset.features.embeddings`` when the harness attached them, else the router's
``text_encoder``, else :func:`default_encoder`. Task and model descriptions are embedded with the same encoder
here, at fit time, and stored in the artifact (the router stays pure at inference).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch_geometric.data import HeteroData

from routers.base import ModelCard, QueryFeatures, RouterError
from routers.category import CategoryModel, group_folds
from routers.encoders.minilm import MiniLMEncoder
from routers.features import text_stats, unit_rows
from routers.graph_data import (
    ATTR_NAMES,
    EPS_USD,
    GraphState,
    build_graph,
    final_layer_graph,
    nearest,
    price_prior_usd,
    raw_attributes,
    top_k_shares,
)
from routers.graph_net import GraphNet

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset
    from routers.graph import GraphRouter, TextEncoder

TASK_DESCRIPTIONS = Path(__file__).resolve().parent / "data" / "task_descriptions.yaml"
#: a query whose cosine similarity to another training query exceeds this is its duplicate: not a neighbour
DUPLICATE_SIM = 0.999
#: the one task node of a data set without (two or more) task labels
GENERAL_TASK = "general"
#: the category model's L-BFGS tolerance here: ~4x fewer iterations than its default, a little more log loss
CATEGORY_TOL = 1e-3


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


@functools.cache
def default_encoder() -> TextEncoder:
    """The ``minilm`` encoder in float32, as the featurizer runs it (all-MiniLM-L6-v2, 384-d, unit norm), one per
    process (it loads its model on first use; an evaluation fits dozens of graph routers). Model descriptions are
    always embedded with this contextual encoder, whichever encoder the queries use: they are few, and fit and
    ``register`` must agree."""
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


def _cost_targets(dataset: RoutingDataset) -> tuple[np.ndarray, float, float]:
    """The standardized log cost residual over the price prior ``[n, m]`` (the cost target), its mean and std."""
    cost = np.where(np.isfinite(dataset.cost_usd), np.maximum(dataset.cost_usd, 0.0), np.nan)
    prior = price_prior_usd(dataset.prompt_tokens, dataset.cards)
    log_cost = np.log(np.where(np.isfinite(cost), cost, prior) + EPS_USD)
    resid = log_cost - np.log(prior + EPS_USD)
    mean, std = float(resid.mean()), float(resid.std())
    std = std if std > 1e-6 else 1.0
    return ((resid - mean) / std).astype(np.float32), mean, std


def serving_like_features(dataset: RoutingDataset, emb: np.ndarray) -> QueryFeatures:
    """The training rows' features as the gateway builds them: the harness's, else text statistics + ``emb``."""
    if dataset.features is not None and dataset.features.embeddings is not None:
        return dataset.features
    return QueryFeatures(list(dataset.queries), text_stats(dataset.queries),
                         np.asarray(dataset.prompt_tokens, dtype=np.float64), emb)


def category_attachment(router: GraphRouter, feats: QueryFeatures, tasks: list[str] | None
                        ) -> tuple[CategoryModel | None, list[str], np.ndarray]:
    """(category model, task node names, ``[N, T]`` out-of-fold top-k ``P(task | query)`` of the training rows)."""
    if tasks is None or len(set(tasks)) < 2:
        return None, [GENERAL_TASK], np.ones((len(feats), 1), dtype=np.float32)

    def fresh(c: float | None) -> CategoryModel:
        return CategoryModel(C=c, seed=router.seed, tol=CATEGORY_TOL)

    labels = np.asarray(tasks, dtype=object)
    model = fresh(router.category_c).fit(feats, tasks)
    proba = model.proba(feats)  # in-sample; replaced fold by fold below
    if router.category_folds >= 2:
        fold = group_folds(np.asarray(feats.texts, dtype=object), router.category_folds, router.seed)
        for f in range(router.category_folds):
            tr, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            if len(held) == 0 or len(set(labels[tr].tolist())) < 2:
                continue  # too few rows or categories left to learn from: those rows keep in-sample values
            part = fresh(model.C_).fit(feats.subset(tr), labels[tr].tolist())
            cols = np.asarray([model.classes_.index(c) for c in part.classes_], dtype=np.int64)
            proba[np.ix_(held, cols)] = part.proba(feats.subset(held))
            proba[np.ix_(held, np.setdiff1d(np.arange(len(model.classes_)), cols))] = 0.0
    return model, list(model.classes_), top_k_shares(proba, router.task_top_k)


def build_state(router: GraphRouter, dataset: RoutingDataset, encode: TextEncoder
                ) -> tuple[GraphState, CategoryModel | None]:
    """The training graph of ``dataset`` (embeddings, neighbours, category attachment, outcome edges, model nodes)
    and the category model that attaches new queries."""
    if dataset.features is not None and dataset.features.embeddings is not None:
        emb = unit_rows(dataset.features.embeddings)
    else:
        emb = unit_rows(encode(list(dataset.queries)))
    category, task_names, shares = category_attachment(router, serving_like_features(dataset, emb), dataset.tasks)
    center = router.center if router.center is not None else router.encoder_ == "minilm-static"
    mean = emb.mean(axis=0) if center else np.zeros(0, dtype=np.float32)
    node_emb = unit_rows(emb - mean) if center else emb
    table = load_task_table()
    task_x = unit_rows(encode([task_description(t, dataset.name, table) for t in task_names]))
    near_idx, near_sim = nearest(node_emb, node_emb, router.k_neighbors, max_sim=DUPLICATE_SIM)
    resid, r_mean, r_std = _cost_targets(dataset)
    quality = np.where(np.isfinite(dataset.quality), np.clip(dataset.quality, 0.0, 1.0), np.nan)
    state = GraphState(
        task_names=task_names, task_x=task_x, query_emb=node_emb,
        query_logtok=np.log1p(np.maximum(dataset.prompt_tokens, 0.0)).astype(np.float32),
        query_shares=shares, near_idx=near_idx, near_sim=near_sim, llm_names=list(dataset.models),
        quality=quality.astype(np.float32), resid=resid, resid_mean=r_mean, resid_std=r_std,
        center=mean.astype(np.float32), **_llm_nodes(list(dataset.cards), encode, emb.shape[1]),
    )
    return state, category


def _loss(net: GraphNet, data: HeteroData, rows: np.ndarray, targets: dict[str, torch.Tensor],
          cost_weight: float) -> torch.Tensor:
    """BCE on quality + ``cost_weight`` x squared error on the cost residual, over ``rows`` x every model."""
    states = net(data, final_layer_graph(data, rows))[-1]
    idx = torch.from_numpy(rows)
    out = net.edge_out(states["query"][idx], states["model"])
    q, mask, resid = targets["quality"][idx], targets["mask"][idx], targets["resid"][idx]
    bce = F.binary_cross_entropy_with_logits(out[..., 0], q, reduction="none")
    mse = (out[..., 1] - resid) ** 2
    return ((bce + cost_weight * mse) * mask).sum() / mask.sum().clamp(min=1.0)


def _targets(state: GraphState) -> dict[str, torch.Tensor]:
    observed = np.isfinite(state.quality)
    return {
        "quality": torch.from_numpy(np.where(observed, state.quality, 0.0).astype(np.float32)),
        "mask": torch.from_numpy(observed.astype(np.float32)),
        "resid": torch.from_numpy(np.where(observed, state.resid, 0.0).astype(np.float32)),
    }


def _new_net(router: GraphRouter, state: GraphState) -> GraphNet:
    net = GraphNet(state.dim, len(ATTR_NAMES), router.hidden, router.layers, router.dropout)
    mean_q = float(np.clip(np.nanmean(state.quality), 0.02, 0.98)) if np.isfinite(state.quality).any() else 0.5
    last = net.head[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():  # start at the mean quality, so early epochs learn who is better, not the base rate
        last.bias[0] = float(np.log(mean_q / (1.0 - mean_q)))
    return net


def train_network(router: GraphRouter, state: GraphState) -> tuple[GraphNet, dict[str, Any]]:
    """Masked edge training (see the module doc); returns the best network and a training summary."""
    rng = np.random.default_rng(router.seed)
    torch.manual_seed(router.seed)
    n = len(state.quality)
    net = _new_net(router, state)
    opt = torch.optim.Adam(net.parameters(), lr=router.lr, weight_decay=router.weight_decay)
    targets = _targets(state)
    is_val = np.zeros(n, bool)
    if n >= 20 and router.val_frac > 0:
        is_val[rng.choice(n, size=max(1, int(router.val_frac * n)), replace=False)] = True
    val_graph = build_graph(state, router.near_tau, ~is_val)
    best: tuple[float, int, dict[str, torch.Tensor]] = (np.inf, 0, {})
    epoch = 0
    for epoch in range(1, router.epochs + 1):
        net.train()
        hidden = ~is_val & (rng.random(n) < router.hide_frac)
        if not hidden.any():  # never an empty batch
            hidden[rng.choice(np.flatnonzero(~is_val))] = True
        data = build_graph(state, router.near_tau, ~hidden & ~is_val)
        loss = _loss(net, data, np.flatnonzero(hidden), targets, router.cost_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % 5 and epoch != router.epochs:
            continue
        score = float(loss.item())
        if is_val.any():
            net.eval()
            with torch.no_grad():
                score = float(_loss(net, val_graph, np.flatnonzero(is_val), targets, router.cost_weight).item())
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
        state, category = build_state(router, dataset, encode)
        graph_s = time.perf_counter() - started
        net, info = train_network(router, state)
    finally:
        torch.set_num_threads(threads)
    info.update(fit_seconds=round(time.perf_counter() - started, 2), graph_seconds=round(graph_s, 2),
                queries=len(dataset), models=len(dataset.models))
    router.set_trained(state, net, category, info)
    return router
