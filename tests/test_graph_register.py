"""Registering model descriptions into a graph artifact: the pure step (training.graph_eval) and the command
(``poolgate routers register-descriptions``) that runs it on a pool file's backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from routers.base import ModelCard, Router, RouterError
from routers.graph import GraphRouter
from routers.registry import make_router
from tests.test_graph_router import fitted, hash_encoder
from training.graph_eval import register_descriptions


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted().save(tmp_path_factory.mktemp("graph") / "graph.router")


def test_register_descriptions_stores_new_descriptions_and_names_models_the_graph_lacks(artifact: Path) -> None:
    cards = [ModelCard("small", 0.1, 0.1, description="small fast model tuned for code"),
             ModelCard("newcomer", 0.2, 0.4, description="a model the graph never saw, good at tests")]
    registered, unseen = register_descriptions(artifact, cards, hash_encoder)
    assert unseen == ["newcomer"]
    loaded = Router.load(artifact)
    assert isinstance(loaded, GraphRouter)
    assert cards[1].description in loaded.state_.desc_cache
    assert registered == len(loaded.state_.desc_cache)


def test_register_descriptions_refuses_an_artifact_of_another_router(tmp_path: Path) -> None:
    other = make_router("cheapest")
    other.models_ = ["a"]
    path = other.save(tmp_path / "cheapest.router")
    with pytest.raises(RouterError, match="not 'graph'"):
        register_descriptions(path, [ModelCard("a", description="x")], hash_encoder)


def test_register_command_reports_a_non_graph_artifact_as_a_one_line_error(tmp_path: Path) -> None:
    other = make_router("cheapest")
    other.models_ = ["a"]
    path = other.save(tmp_path / "cheapest.router")
    result = CliRunner().invoke(main, ["routers", "register-descriptions", "--artifact", str(path)])
    assert result.exit_code == 1, result.output
    assert "not 'graph'" in result.output and "Traceback" not in result.output
