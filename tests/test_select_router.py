"""``--router auto``: a pool's default router is chosen by the evaluation protocol's paired intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from routers.base import ModelCard
from routers.dataset import RoutingDataset
from training.evaluate import EvaluationResult
from training.features import Featurizer
from training.results import RouterResult
from training.select import choose, select_router


def _result(rows: dict[str, tuple[list[float], float, list[float]]]) -> EvaluationResult:
    """An evaluation with, per router: quality-first paired diff (d, lo, hi), balanced cost ratio, balanced diff."""
    routers = []
    for name, (qf, cost_ratio, bal) in rows.items():
        r = RouterResult(name=name)
        r.intervals = {"quality_first_diff_vs_best_single": qf, "balanced_diff_vs_best_single": bal}
        r.metrics = {"balanced_cost_ratio": cost_ratio}
        routers.append(r)
    return EvaluationResult(dataset="d", n_queries=10, n_evaluated=10, models=["a", "b"], seed=0, protocol="kfold",
                            split="", assumptions={}, reference={"best_single": {"quality": 0.8}}, routers=routers)


def test_the_candidate_with_the_highest_lower_bound_above_zero_is_chosen() -> None:
    sel = choose(_result({"knn": ([0.03, 0.01, 0.05], 1.0, [0, 0, 0]),
                          "category": ([0.05, -0.01, 0.1], 1.0, [0, 0, 0])}))
    assert sel.router == "knn" and "lower bound +0.010" in sel.reason


def test_no_positive_lower_bound_and_no_saving_falls_back_to_best_single() -> None:
    sel = choose(_result({"knn": ([0.01, -0.01, 0.03], 0.95, [0, -0.01, 0.01])}))
    assert sel.router == "best-single"
    assert "no candidate beats best-single" in sel.reason


def test_a_router_that_saves_money_within_the_quality_floor_is_chosen_when_none_wins_on_quality() -> None:
    # floor is -0.03 * 0.8 = -0.024: tryage's lower bound -0.05 is below it, knn's -0.02 within it
    sel = choose(_result({"knn": ([0.0, -0.01, 0.01], 0.6, [-0.01, -0.02, 0.0]),
                          "tryage": ([0.0, -0.01, 0.01], 0.3, [-0.03, -0.05, -0.01])}))
    assert sel.router == "knn" and "costs 60%" in sel.reason


def test_failed_candidates_are_reported_not_chosen() -> None:
    res = _result({"knn": ([0.02, 0.01, 0.03], 1.0, [0, 0, 0])})
    res.routers.append(RouterResult(name="graph", error="RuntimeError: boom"))
    sel = choose(res)
    assert sel.router == "knn" and sel.candidates["graph"] == {"error": "RuntimeError: boom"}


def _two_kinds(n: int = 240) -> RoutingDataset:
    """Arithmetic questions only the large model answers, greetings both answer: routing by text pays."""
    texts = [f"compute {i} times {i + 7} plus {i * 3}" if i % 2 else f"hello there friend number {i}, how are you"
             for i in range(n)]
    hard = np.array([i % 2 == 1 for i in range(n)])
    quality = np.stack([np.where(hard, 0.0, 1.0), np.ones(n)], axis=1)
    cards = [ModelCard("small", 0.1, 0.1), ModelCard("large", 10.0, 10.0)]
    prompt = np.full(n, 30.0)
    completion = np.full((n, 2), 50.0)
    cost = (prompt[:, None] + completion) * np.array([0.1, 10.0])[None, :] / 1e6
    return RoutingDataset(name="kinds", queries=texts, models=["small", "large"], quality=quality,
                          prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost, cards=cards,
                          tasks=["math" if h else "chat" for h in hard])


def test_select_router_picks_a_learned_router_that_saves_on_easy_queries() -> None:
    sel = select_router(_two_kinds(), ["knn"], folds=3, featurizer=Featurizer(encoder="minilm-static",
                                                                             disk_cache=False))
    assert sel.router == "knn", sel.reason
    assert sel.candidates["knn"]["balanced_cost_ratio"] < 0.9


def test_train_offline_auto_prints_the_selection_and_writes_the_chosen_router(tmp_path) -> None:
    import gateway.replay
    from gateway.cli import main
    from routers.base import Router

    sample = Path(gateway.replay.__file__).parent / "sample" / "gsm8k_sample.jsonl"
    out = tmp_path / "auto.router"
    result = CliRunner().invoke(main, ["train-offline", "--router", "auto", "--candidates", "complexity",
                                       "--dataset", str(sample), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "router selection (kfold" in result.output and "selected: " in result.output
    chosen = result.output.split("selected: ")[1].split(":")[0]
    assert Router.load(out).name == chosen
