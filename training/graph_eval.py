"""GraphRouter experiments: the inductive table (a model the graph never saw, added by its card) and the scenario table.

``python -m training.graph_eval inductive|scenarios``; the fit itself is :mod:`routers.graph_fit`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from routers.base import ModelCard, Prediction, Router, RouterError
from routers.dataset import RoutingDataset
from routers.graph import GraphRouter, TextEncoder
from routers.objective import PRESETS, choose_batch, score
from routers.registry import build_router
from training.features import Featurizer
from training.loaders import load_dataset
from training.splits import split_by_query


def inductive_eval(
    dataset: RoutingDataset, held_out: str, router: GraphRouter, test_size: float = 0.2, seed: int = 0,
) -> dict[str, Any]:
    """Fit ``router`` with ``held_out`` absent from the graph, then route the test split over the whole pool,
    adding ``held_out`` at inference by its card alone (description + attributes). ``dataset.features`` must be set.

    Returns its true and predicted mean quality, the AUC of its predicted quality against its true outcome
    (>= 0.5 counts as a success; 0.5 = chance), and per objective preset (GraphRouter's scenarios), on the
    queries where it is the unique best model by the *true* utility: how often routing chooses it (chance:
    1 / pool size) and its mean rank in the predicted utility (chance: (pool size + 1) / 2); plus how often it
    is chosen overall and the true mean utility (reward) routed with it in the pool and without it.
    """
    if dataset.features is None:
        raise RouterError("inductive_eval needs dataset.features (featurize the dataset first)")
    train, test = split_by_query(dataset, test_size, seed)
    router.fit(dataset.subset(train).select_models([m for m in dataset.models if m != held_out]))
    te = dataset.subset(test)
    feats = dataset.features.subset(test)
    pred = router.predict(feats, te.cards)
    j, rows, m = te.models.index(held_out), np.arange(len(te)), len(te.models)
    success = te.quality[:, j] >= 0.5
    out: dict[str, Any] = {
        "held_out": held_out, "true_mean": float(te.quality[:, j].mean()),
        "pred_mean": float(pred.quality[:, j].mean()), "pred_std": float(pred.quality[:, j].std()),
        "auc": float(roc_auc_score(success, pred.quality[:, j])) if 0 < success.mean() < 1 else float("nan"),
        "chance": 1.0 / m, "chance_rank": (m + 1) / 2,
    }
    truth = Prediction(quality=te.quality, cost_usd=te.cost_usd)
    for name, flags in PRESETS.items():
        true_u = score(truth, te.cards, flags, feats.prompt_tokens).utility
        est_u = score(pred, te.cards, flags, feats.prompt_tokens).utility
        best = true_u.max(axis=1, keepdims=True)
        unique = np.isclose(true_u[:, j], best[:, 0]) & (np.isclose(true_u, best).sum(axis=1) == 1)
        chosen = choose_batch(pred, te.cards, flags, feats.prompt_tokens)
        rank = 1 + (est_u > est_u[:, [j]]).sum(axis=1)
        without = np.where(np.arange(m) == j, -np.inf, est_u).argmax(axis=1)
        out[name] = {
            "best_n": int(unique.sum()),
            "chosen_where_best": float((chosen[unique] == j).mean()) if unique.any() else float("nan"),
            "rank_where_best": float(rank[unique].mean()) if unique.any() else float("nan"),
            "chosen_overall": float((chosen == j).mean()),
            "reward_with": float(true_u[rows, chosen].mean()), "reward_without": float(true_u[rows, without].mean()),
        }
    return out


def scenario_table(
    dataset: RoutingDataset, router_names: list[str], seed: int = 0
) -> list[dict[str, Any]]:
    """GraphRouter's three scenarios (the objective's presets) for each router on one 80/20 split by query.

    reward = the *true* utility of the chosen model under the preset: quality weight x quality - cost weight x
    cost min-max normalized across the pool for that query (:func:`routers.objective.score`), averaged over
    the test queries; with the mean true quality and USD cost of the choices. ``dataset.features`` must be set.
    """
    if dataset.features is None:
        raise RouterError("scenario_table needs dataset.features (featurize the dataset first)")
    train, test = split_by_query(dataset, 0.2, seed)
    te, feats = dataset.subset(test), dataset.features.subset(test)
    truth, rows, out = Prediction(quality=te.quality, cost_usd=te.cost_usd), np.arange(len(te)), []
    for name in router_names:
        router = build_router(name, seed=seed)
        started = time.perf_counter()
        router.fit(te if router.evaluation_only else dataset.subset(train))
        fit_s = time.perf_counter() - started
        pred = router.predict(feats, te.cards)
        for scenario, flags in PRESETS.items():
            chosen = choose_batch(pred, te.cards, flags, feats.prompt_tokens)
            utility = score(truth, te.cards, flags, feats.prompt_tokens).utility
            out.append({"router": name, "scenario": scenario, "reward": float(utility[rows, chosen].mean()),
                        "quality": float(te.quality[rows, chosen].mean()),
                        "cost_usd": float(te.cost_usd[rows, chosen].mean()), "fit_s": fit_s})
    return out


def register_descriptions(artifact: Path, cards: Sequence[ModelCard], encoder: TextEncoder) -> tuple[int, list[str]]:
    """Embed the descriptions of ``cards`` into the graph ``artifact`` (in place), so the gateway scores models the
    graph never saw from their real descriptions, without retraining. Returns (registered descriptions, names of
    the cards the graph was not trained on). ``poolgate routers register-descriptions`` runs it on a pool file."""
    router = Router.load(artifact)
    if not isinstance(router, GraphRouter):
        raise RouterError(f"{artifact}: holds router {router.name!r}, not 'graph'")
    router.register_models(cards, encoder=encoder)
    router.save(artifact)
    return len(router.state_.desc_cache), [c.name for c in cards if c.name not in router.models_]


def main(argv: list[str] | None = None) -> int:
    """``python -m training.graph_eval inductive|scenarios ...``: the inductive table (one row per held-out model
    and scenario) or the scenario table (one row per router and scenario), on the seed-0 80/20 split by query.
    (Embedding a pool file's backend descriptions into an artifact: ``poolgate routers register-descriptions``.)"""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("what", choices=("inductive", "scenarios"))
    ap.add_argument("--dataset", default="llmrouter")
    ap.add_argument("--held-out", default="", help="inductive: models to hold out (default: each in turn)")
    ap.add_argument("--routers", default="random,best-single,knn,complexity,graph,oracle", help="scenarios")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path(".poolgate/embeddings"))
    ap.add_argument("--encoder", choices=("minilm", "minilm-static"), default="minilm-static",
                    help="query embeddings")
    args = ap.parse_args(argv)
    descriptions = Featurizer(cache_dir=args.cache_dir, encoder="minilm")
    featurizer = Featurizer(cache_dir=args.cache_dir, encoder=args.encoder)
    ds = load_dataset(args.dataset)
    ds = ds.with_features(featurizer.featurize_dataset(ds))
    if args.what == "scenarios":
        print(f"{'router':12} {'scenario':13} {'reward':>7} {'quality':>7} {'cost_usd':>10} {'fit_s':>6}")
        for r in scenario_table(ds, args.routers.split(","), args.seed):
            print(f"{r['router']:12} {r['scenario']:13} {r['reward']:7.4f} {r['quality']:7.4f} {r['cost_usd']:10.3e} "
                  f"{r['fit_s']:6.1f}", flush=True)
        return 0
    cols = ("best_n", "chosen_where_best", "rank_where_best", "chosen_overall", "reward_with", "reward_without")
    print(f"{'held_out':34} {'true_q':>6} {'pred_q':>6} {'auc':>5} {'scenario':13}", *(f"{c:>17}" for c in cols))
    for name in [m for m in args.held_out.split(",") if m] or ds.models:
        router = GraphRouter(seed=args.seed)
        router.text_encoder = descriptions.embed
        res = inductive_eval(ds, name, router, seed=args.seed)
        for scenario in ("quality-first", "balanced", "cost-first"):
            cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in (res[scenario][c] for c in cols)]
            print(f"{name:34} {res['true_mean']:6.3f} {res['pred_mean']:6.3f} {res['auc']:5.3f} {scenario:13}",
                  *(f"{v:>17}" for v in cells), flush=True)
    print(f"chance: chosen_where_best {res['chance']:.3f}, rank_where_best {res['chance_rank']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
