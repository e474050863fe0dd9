"""GraphRouter's graph is torch-geometric HeteroData run by HeteroConv, and it attaches queries to task nodes by the
category model's predicted P(task | query): never by a label, in training as at serving."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv

from routers.base import QueryFeatures, Router
from routers.category import CategoryModel
from routers.dataset import RoutingDataset
from routers.features import text_stats
from routers.graph import GraphRouter
from routers.graph_data import EDGE_TYPES, HOLDS, IN_TASK, NEAR, SOLVED, attach_graph, build_graph, query_inputs
from tests.test_graph_router import CARDS, TASKS, features, hash_encoder, synthetic
from training.evaluate import serving_features


def fit(ds: RoutingDataset, **params) -> GraphRouter:
    router = GraphRouter(**{"epochs": 120, "seed": 0, **params})
    router.text_encoder = hash_encoder
    return router.fit(ds)


@pytest.fixture(scope="module")
def router() -> GraphRouter:
    return fit(synthetic(360, seed=0))


@pytest.fixture(scope="module")
def test_set() -> RoutingDataset:
    return synthetic(150, seed=1)


def always(task: str, router: GraphRouter) -> CategoryModel:
    """A real category model whose weights ignore the query and put all mass on ``task``."""
    model = router.category_model
    assert model is not None
    state = model.get_state()
    state["coef_"] = np.zeros_like(state["coef_"])
    state["intercept_"] = np.where(np.asarray(model.classes_) == task, 30.0, 0.0)
    return CategoryModel.from_state(state)


def test_the_training_graph_is_heterodata_with_query_task_and_model_nodes(router: GraphRouter) -> None:
    state = router.state_
    data = build_graph(state, router.near_tau)
    assert isinstance(data, HeteroData)
    assert set(data.node_types) == {"query", "task", "model"}
    assert set(data.edge_types) == set(EDGE_TYPES)
    assert (data["query"].num_nodes, data["task"].num_nodes, data["model"].num_nodes) == (360, 3, 3)
    assert all(data[e].edge_weight.shape == (data[e].num_edges,) for e in EDGE_TYPES)
    # every observed answer is one model -> query edge of the outcome relations (weights: quality over answers)
    solved = np.isfinite(state.quality) & (state.quality > 0)
    assert data[SOLVED].num_edges == solved.sum()
    # the category edges carry the stored predicted distribution, top-k renormalized: rows sum to one
    weight = np.zeros((3, 360))
    src, dst = data[HOLDS].edge_index.numpy()
    weight[src, dst] = data[HOLDS].edge_weight.numpy()
    np.testing.assert_allclose(weight.T, state.query_shares, rtol=1e-6)
    np.testing.assert_allclose(weight.sum(axis=0), 1.0, rtol=1e-5)
    # hiding queries removes their answer edges and keeps them out of neighbourhoods and task means
    visible = np.arange(360) % 2 == 0
    half = build_graph(state, router.near_tau, visible)
    assert visible[half[SOLVED].edge_index[1].numpy()].all()
    assert visible[half[NEAR].edge_index[0].numpy()].all() and visible[half[IN_TASK].edge_index[0].numpy()].all()


def test_the_network_is_heteroconv_over_that_heterodata(router: GraphRouter) -> None:
    net = router.net_
    assert len(net.convs) == router.layers and all(isinstance(c, HeteroConv) for c in net.convs)
    assert {tuple(k.strip("<>").split("___")) for k in net.convs[0].convs} == set(EDGE_TYPES)
    states = net(build_graph(router.state_, router.near_tau))
    assert len(states) == router.layers + 1
    assert {t: s.shape for t, s in states[-1].items()} == {"query": (360, 32), "task": (3, 32), "model": (3, 32)}


def test_new_queries_attach_one_way_to_trained_nodes(router: GraphRouter) -> None:
    shares = np.asarray([[1.0, 0.0, 0.0], [0.0, 0.6, 0.4]], np.float32)
    nb = np.asarray([[5, 7, 9], [7, 11, 13]])
    data = attach_graph(nb, np.full(nb.shape, 1 / 3, np.float32), shares, query_inputs(np.log1p([40.0, 90.0])), 3, 3)
    assert isinstance(data, HeteroData) and set(data.edge_types) == set(EDGE_TYPES)
    assert data["query"].trained_ids.tolist() == [5, 7, 9, 11, 13]
    src, dst = data[NEAR].edge_index.numpy()
    assert (src < 5).all() and (dst >= 5).all() and data[NEAR].num_edges == 6  # trained -> new only
    src, dst = data[HOLDS].edge_index.numpy()
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == [(0, 5), (1, 6), (2, 6)]
    assert all(data[e].num_edges == 0 for e in EDGE_TYPES if e not in (NEAR, HOLDS))


def test_predict_works_from_serving_features_of_a_data_set_without_task_labels(router: GraphRouter) -> None:
    unlabeled = replace(synthetic(40, seed=7), tasks=None)
    feats = QueryFeatures(unlabeled.queries, text_stats(unlabeled.queries), unlabeled.prompt_tokens,
                          hash_encoder(unlabeled.queries))
    feats = serving_features(feats, np.arange(40))  # the harness's guard: nothing beyond what the gateway has
    pred = router.predict(feats, CARDS)
    assert pred.quality.shape == (40, 3) and np.isfinite(pred.quality).all()
    shares = router.task_shares(feats)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-5)


def test_predictions_follow_the_predicted_category(router: GraphRouter, test_set: RoutingDataset,
                                                   tmp_path: Path) -> None:
    feats = features(test_set)
    code = [i for i, t in enumerate(test_set.tasks or []) if t == "mbpp"]
    copy = Router.load(router.save(tmp_path / "graph.router"))
    assert isinstance(copy, GraphRouter)
    base = copy.predict(feats.subset(code), CARDS).quality
    copy.category_model = always("math", copy)
    as_math = copy.predict(feats.subset(code), CARDS).quality
    # the same code queries, the same neighbours: only the category edges now say "math", and the math model
    # ("mid") overtakes the code model ("small") that the real predicted category (mbpp) prefers
    margin = lambda q: (q[:, 1] - q[:, 0]).mean()  # noqa: E731
    assert margin(base) < -0.2 and margin(as_math) > 0.2


def test_training_queries_are_attached_by_out_of_fold_predicted_category_not_by_label() -> None:
    ds = synthetic(360, seed=0)
    labels = list(ds.tasks or [])
    wrong = list(range(0, 360, 13))  # 28 queries of all three tasks whose label names another task
    for i in wrong:
        labels[i] = TASKS[(TASKS.index(labels[i]) + 1) % 3]

    def attached_task(folds: int) -> list[str]:
        state = fit(replace(ds, tasks=labels), epochs=5, category_folds=folds).state_
        return [state.task_names[j] for j in state.query_shares.argmax(axis=1)]

    truth = ds.tasks or []
    top = attached_task(3)
    # out-of-fold predictions follow each query's words (its true task), not the wrong label it was given
    assert np.mean([top[i] == truth[i] for i in wrong]) > 0.8
    assert np.mean([top[i] == labels[i] for i in wrong]) < 0.2
    # in-sample predictions would have learned the wrong labels: training would attach unlike serving
    in_sample = attached_task(0)
    assert np.mean([in_sample[i] == labels[i] for i in wrong]) > 0.5


def test_a_data_set_without_task_labels_has_one_task_node_and_round_trips(tmp_path: Path,
                                                                         test_set: RoutingDataset) -> None:
    router = fit(replace(synthetic(120, seed=3), tasks=None), epochs=10)
    assert router.category_model is None and router.state_.task_names == ["general"]
    feats = features(test_set)
    loaded = Router.load(router.save(tmp_path / "one-task.router"))
    np.testing.assert_array_equal(loaded.predict(feats, CARDS).quality, router.predict(feats, CARDS).quality)


def test_the_artifact_keeps_the_category_model_and_the_network_weights(router: GraphRouter, test_set: RoutingDataset,
                                                                       tmp_path: Path) -> None:
    loaded = Router.load(router.save(tmp_path / "graph.router"))
    assert isinstance(loaded, GraphRouter) and loaded.category_model is not None
    feats = features(test_set)
    np.testing.assert_array_equal(loaded.task_shares(feats), router.task_shares(feats))
    for key, value in router.net_.state_dict().items():
        np.testing.assert_array_equal(loaded.net_.state_dict()[key].numpy(), value.numpy())
    np.testing.assert_array_equal(loaded.predict(feats, CARDS).quality, router.predict(feats, CARDS).quality)
