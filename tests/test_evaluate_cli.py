"""``poolgate evaluate`` end to end on small slices of each real data set, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from training.loaders import DatasetError, default_data_dir


def _data_dir() -> Path:
    try:
        return default_data_dir()
    except DatasetError:
        pytest.skip("no shared/data beside the repo")


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["evaluate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_gsm8k_slice_with_knn_prints_the_table_and_writes_json_and_html(tmp_path: Path) -> None:
    _data_dir()
    code, out, err = _run("--dataset", "routellm-gsm8k", "--routers", "knn", "--limit", "40",
                          "--out", str(tmp_path), "--cache-dir", str(tmp_path / "emb"))
    assert code == 0, err
    for name in ("random", "best-single", "knn", "oracle"):
        assert f"│ {name}" in out
    assert "APGR" in out and "gpt-4-1106-preview" in out and "10.0" in out  # prices are printed
    data = json.loads((tmp_path / "routellm-gsm8k.json").read_text())
    assert data["n_queries"] == 40 and [r["name"] for r in data["routers"]] == ["random", "best-single", "knn",
                                                                                  "oracle"]
    knn = data["routers"][2]
    assert knn["error"] is None and knn["params"]["k_"] >= 1
    page = (tmp_path / "routellm-gsm8k.html").read_text()
    assert "<svg" in page and "<script" not in page and "src=" not in page


@pytest.mark.parametrize("dataset", ["routellm-mmlu", "llmrouter", "elliesql"])
def test_each_real_dataset_slice_evaluates_beside_the_baselines(dataset: str, tmp_path: Path) -> None:
    _data_dir()
    # baselines need no embeddings, so this runs without loading the sentence model
    code, out, err = _run("--dataset", dataset, "--routers", "cheapest,strongest", "--limit", "80",
                          "--cache-dir", str(tmp_path))
    assert code == 0, err
    for name in ("random", "best-single", "cheapest", "strongest", "oracle"):
        assert f"│ {name}" in out
    assert "assumptions:" in out and "error: " not in out


def test_folds_pool_the_test_folds(tmp_path: Path) -> None:
    _data_dir()
    code, out, err = _run("--dataset", "elliesql", "--routers", "cheapest", "--limit", "50", "--folds", "5",
                          "--out", str(tmp_path))
    assert code == 0, err
    assert json.loads((tmp_path / "elliesql.json").read_text())["n_evaluated"] == 50


def _assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0]


def test_unknown_dataset_and_router_are_named() -> None:
    _assert_one_line_error(*_run("--dataset", "imagenet"), "unknown dataset 'imagenet'")
    _assert_one_line_error(*_run("--dataset", "elliesql", "--routers", "knn,psychic"), "unknown router 'psychic'")


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    _assert_one_line_error(*_run("--dataset", "elliesql", "--data-dir", str(tmp_path)),
                           "bird_dev_tiers.jsonl: file not found")
    path = tmp_path / "elliesql" / "bird_dev_tiers.jsonl"
    path.parent.mkdir()
    path.write_text('{"question": "q", "db_id": "d", "label": 1}\n{"question": "q2", "db_id": "d", "label": 9}\n')
    _assert_one_line_error(*_run("--dataset", "elliesql", "--data-dir", str(tmp_path)),
                           "bird_dev_tiers.jsonl:2", "'label'")


def test_a_model_absent_from_the_price_config_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "routellm" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "gsm8k_responses.csv").write_text("prompt,acme/m1,acme/m1_response\nhi,True,hello\n")
    (folder / "contaminated_prompts.jsonl").write_text("")
    _assert_one_line_error(*_run("--dataset", "routellm-gsm8k", "--data-dir", str(tmp_path)),
                           "'acme/m1'", "routellm.yaml")
