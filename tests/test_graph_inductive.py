"""GraphRouter's inductive setting on a real slice of LLMRouter (500 queries, MiniLM embeddings): a model
held out of the graph is added at inference by its description and attributes only, and is still scored
usefully: its scores track its true outcomes, and a strong unseen model is rated above a weak one."""

from __future__ import annotations

from pathlib import Path

import pytest

from routers.dataset import RoutingDataset
from routers.graph import GraphRouter
from training.graph_eval import inductive_eval

STRONG = "llama-3.1-nemotron-51b-instruct"  # best single model of LLMRouter (mean score 0.62)
WEAK = "llama3-chatqa-1.5-8b"  # the weakest (0.18)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> RoutingDataset:
    from training.features import Featurizer
    from training.loaders import load_dataset

    featurizer = Featurizer(cache_dir=Path(tmp_path_factory.mktemp("emb")))
    ds = load_dataset("llmrouter", limit=500)
    return ds.with_features(featurizer.featurize_dataset(ds))


def _held_out(ds: RoutingDataset, name: str) -> dict:
    from training.features import Featurizer

    router = GraphRouter(epochs=100, seed=0)
    # embeds the held-out model's description (descriptions are always on minilm)
    router.text_encoder = Featurizer(disk_cache=False, encoder="minilm").embed
    return inductive_eval(ds, name, router)


@pytest.fixture(scope="module")
def strong(dataset: RoutingDataset) -> dict:
    return _held_out(dataset, STRONG)


def test_held_out_model_scores_track_its_true_outcomes(strong: dict) -> None:
    assert strong["pred_std"] > 0.05  # not a constant: the scores vary with the query
    assert strong["auc"] > 0.65  # chance is 0.5


def test_a_strong_unseen_model_is_rated_above_a_weak_one(dataset: RoutingDataset, strong: dict) -> None:
    weak = _held_out(dataset, WEAK)
    assert strong["true_mean"] > weak["true_mean"] + 0.3  # the data's verdict on this slice
    assert strong["pred_mean"] > weak["pred_mean"] + 0.1  # the router's, without any edge of either
    # adding a weak unseen model must not make routing worse
    assert weak["quality-first"]["reward_with"] >= weak["quality-first"]["reward_without"] - 0.01
