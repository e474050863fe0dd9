"""The harness on a small synthetic data set with every baseline (no embeddings needed, so no model load)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from routers import registry
from routers.base import ModelCard, Prediction, QueryFeatures, Router
from routers.dataset import RoutingDataset
from training.evaluate import evaluate_routers
from training.features import Featurizer
from training.html import render_html

BASELINES = ["random", "cheapest", "strongest", "best-single", "oracle"]


class BrokenRouter(Router):
    """Fails on predict, to prove one broken router does not hide the others."""

    name = "broken"

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        raise RuntimeError("boom")


def _dataset(n: int = 200, seed: int = 0) -> RoutingDataset:
    """Three models: 'small' right on 50 %, 'mid' on 70 %, 'large' on 85 %; prices 0.1 / 1 / 10 per 1M."""
    rng = np.random.default_rng(seed)
    # every text appears twice, with the same outcomes (the same query answered the same way)
    quality = np.repeat((rng.random((n // 2, 3)) < np.array([0.5, 0.7, 0.85])).astype(float), 2, axis=0)
    cards = [ModelCard("small", 0.1, 0.1, size_b=7), ModelCard("mid", 1.0, 1.0, size_b=30),
             ModelCard("large", 10.0, 10.0, size_b=400)]
    prompt = rng.integers(20, 200, n).astype(float)
    completion = np.full((n, 3), 100.0)
    price = np.array([c.input_price for c in cards]) / 1e6
    return RoutingDataset(
        # three-digit numbers: "question 0" ... "question 9" differ by one digit token, and minilm-static's
        # centred vectors put them within the near-duplicate threshold, so the grouped splits would join them
        name="toy", queries=[f"question {100 + i // 2}" for i in range(n)],
        models=[c.name for c in cards], quality=quality, prompt_tokens=prompt, completion_tokens=completion,
        cost_usd=(prompt[:, None] + completion) * price[None, :], cards=cards, tasks=["t"] * n,
    )


@pytest.fixture(scope="module")
def result():
    return evaluate_routers(_dataset(), BASELINES, seed=0, featurizer=Featurizer(disk_cache=False))


def _router(res, name):
    return next(r for r in res.routers if r.name == name)


def test_oracle_reads_the_best_cell_of_each_test_query(result) -> None:
    oracle = _router(result, "oracle")
    assert oracle.error is None
    for r in result.routers:
        assert r.metrics["quality"] <= oracle.metrics["quality"] + 1e-12
    assert oracle.metrics["quality"] > result.reference["best_single"]["quality"]


def test_baselines_match_the_reference_policies(result) -> None:
    ref = result.reference
    assert _router(result, "cheapest").metrics["cost_usd"] == pytest.approx(ref["cheapest"]["cost_usd"])
    assert math.isnan(_router(result, "cheapest").metrics["tep_tokens"])  # no spend change vs itself
    best = _router(result, "best-single")
    assert best.metrics["quality"] == pytest.approx(ref["best_single"]["quality"])
    assert best.metrics["savings_vs_best_single"] == pytest.approx(0.0)
    assert ref["best_single"]["models"] == ["large"]


def test_holdout_scores_a_fifth_of_the_unique_texts_and_kfold_every_query_once(result) -> None:
    held = evaluate_routers(_dataset(), ["best-single"], protocol="holdout", featurizer=Featurizer(disk_cache=False))
    assert held.n_queries == 200 and held.n_evaluated == 40
    assert result.n_evaluated == 200 and result.protocol == "kfold" and len(result.folds) == 5
    assert "pair" not in result.reference  # APGR is for two-model pools only
    assert all("apgr" not in r.metrics for r in result.routers)


def test_the_lambda_sweep_trades_quality_for_cost(result) -> None:
    oracle = _router(result, "oracle")
    first, last = oracle.point("lambda=0/c"), oracle.point("lambda=5/c")
    assert last.cost_usd < first.cost_usd and last.quality <= first.quality
    assert oracle.point("balanced") is not None and oracle.point("cost-first") is not None
    assert 0 < oracle.metrics["aiq"] <= 1


def test_folds_evaluate_every_query_once() -> None:
    res = evaluate_routers(_dataset(), ["best-single", "oracle"], folds=4, featurizer=Featurizer(disk_cache=False))
    assert res.split.startswith("4-fold")
    assert res.n_evaluated == 200
    assert _router(res, "oracle").metrics["quality"] == pytest.approx(_dataset().quality.max(axis=1).mean())


def test_a_two_model_pool_gets_apgr_with_oracle_above_one() -> None:
    ds = _dataset().select_models(["small", "large"])
    # per text pair, cycle through: only weak right, only strong right (x3), both, neither
    pattern = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    ds.quality = np.repeat(pattern[np.arange(len(ds) // 2) % 6], 2, axis=0)
    # pooled 5-fold test rows: all 200 queries, so the weak-strong gap is the pattern's, not a small sample's
    res = evaluate_routers(ds, ["random", "oracle"], folds=5, featurizer=Featurizer(disk_cache=False))
    assert res.reference["pair"] == {"strong": "large", "weak": "small"}
    assert _router(res, "oracle").metrics["apgr"] > 1.0
    assert 0.2 < _router(res, "random").metrics["apgr"] < 0.8


def test_a_failing_router_is_reported_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ROUTERS, "broken", "tests.test_evaluate_harness:BrokenRouter")
    res = evaluate_routers(_dataset(), ["broken", "cheapest"], featurizer=Featurizer(disk_cache=False))
    assert _router(res, "broken").error == "RuntimeError: boom"
    assert _router(res, "cheapest").error is None


def test_results_serialize_to_json_and_a_self_contained_page(result) -> None:
    data = json.loads(json.dumps(result.to_dict()))
    assert data["routers"][0]["points"][0]["label"] == "lambda=0/c"
    assert data["routers"][2]["metrics"]["tep_tokens"] is None or isinstance(
        data["routers"][2]["metrics"]["tep_tokens"], float)
    page = render_html(result)
    assert page.count("<svg") >= 2 and "<script" not in page
    assert "src=" not in page and "href=" not in page  # nothing fetched from anywhere


class SpyRouter(Router):
    """Records every batch of features it is asked to predict on (to check what the harness passes)."""

    name = "spy"
    seen: list[QueryFeatures] = []

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        SpyRouter.seen.append(features)
        return Prediction(quality=np.full((len(features), len(candidates)), 0.5))


def test_routers_get_serving_features_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from routers.features import text_stats
    from training.evaluate import SERVING_FIELDS

    monkeypatch.setitem(registry.ROUTERS, "spy", "tests.test_evaluate_harness:SpyRouter")
    SpyRouter.seen = []
    ds = _dataset()
    evaluate_routers(ds, ["spy"], featurizer=Featurizer(disk_cache=False))
    assert SpyRouter.seen
    for feats in SpyRouter.seen:
        assert set(vars(feats)) <= SERVING_FIELDS  # no task label, no answer, nothing from the test rows' truth
        assert np.array_equal(feats.stats, text_stats(feats.texts))  # derived from the text alone


def test_a_batch_carrying_a_field_the_gateway_lacks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.evaluate as harness

    monkeypatch.setitem(registry.ROUTERS, "spy", "tests.test_evaluate_harness:SpyRouter")
    real = Featurizer.featurize_dataset

    def leaky(self, ds, embeddings=True):  # type: ignore[no-untyped-def]
        feats = real(self, ds, embeddings)
        feats.tasks = list(ds.tasks)  # type: ignore[attr-defined]  # what the old harness handed routers
        return feats

    monkeypatch.setattr(harness.Featurizer, "featurize_dataset", leaky)
    res = evaluate_routers(_dataset(), ["spy"], featurizer=Featurizer(disk_cache=False))
    assert "fields the gateway does not have" in (_router(res, "spy").error or "")


def _tasks_dataset() -> RoutingDataset:
    ds = _dataset()
    ds.tasks = [("alpha", "beta", "gamma")[(i // 2) % 3] for i in range(len(ds))]
    return ds


def test_leave_one_task_out_scores_each_task_with_a_router_that_never_saw_it() -> None:
    from training.protocol import outer_folds

    ds = _tasks_dataset()
    folds, _ = outer_folds(ds, "loto")
    assert [f.label for f in folds] == ["alpha", "beta", "gamma"]
    for f in folds:
        assert {ds.tasks[i] for i in f.test} == {f.label} and f.label not in {ds.tasks[i] for i in f.train}
    res = evaluate_routers(ds, ["best-single"], protocol="loto", featurizer=Featurizer(disk_cache=False))
    assert res.folds == ["alpha", "beta", "gamma"] and res.n_evaluated == len(ds)
    assert set(_router(res, "best-single").per_task) == {"alpha", "beta", "gamma"}


def test_near_duplicates_never_straddle_train_and_test() -> None:
    from training.protocol import outer_folds, split_groups

    ds = _dataset()
    # the same question re-worded by a template: a trailing space and a changed case are near-duplicates
    ds.queries = [q if i % 4 < 2 else q.upper() + " " for i, q in enumerate(ds.queries)]
    groups = split_groups(ds)
    for f in outer_folds(ds, "kfold", folds=5)[0]:
        assert not set(groups[f.train]) & set(groups[f.test])


def test_intervals_cover_the_mean_and_best_single_differs_from_itself_by_zero(result) -> None:
    best = _router(result, "best-single")
    mean, lo, hi = best.intervals["quality_first_quality"]
    assert lo <= mean <= hi and hi - lo > 0
    assert best.intervals["quality_first_diff_vs_best_single"] == [0.0, 0.0, 0.0]
    oracle = _router(result, "oracle")
    assert oracle.intervals["quality_first_diff_vs_best_single"][1] > 0  # the oracle beats it, paired
    assert 0.0 <= oracle.metrics["ece_chosen"] <= 1.0


def test_cross_protocol_fits_on_one_data_set_and_scores_the_other_with_models_matched_by_name() -> None:
    from training.protocol import concat_datasets

    train, test = _dataset(), _dataset(seed=3)
    test = test.select_models(["large", "small", "mid"])  # another column order: matched by name
    both = concat_datasets(train, test)
    assert both.models == train.models and np.array_equal(both.quality[len(train):], _dataset(seed=3).quality)
    res = evaluate_routers(both, ["best-single"], protocol="cross", n_train=len(train),
                           featurizer=Featurizer(disk_cache=False))
    assert res.n_evaluated == len(test) and res.folds == ["cross"]
    with pytest.raises(ValueError, match="different models"):
        concat_datasets(train, _dataset().select_models(["small", "large"]))
