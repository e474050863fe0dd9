"""Loaders on small fixture files written in tmp folders, plus one look at each real data set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from training.loaders import DATASETS, DatasetError, default_data_dir, load_dataset

GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _gsm8k(root: Path, models: tuple[str, ...] = (MIXTRAL, GPT4)) -> Path:
    header = ["prompt", *models, *(f"{m}_response" for m in models)]
    rows = [
        ["What is 2+2?", "True", "True", "It is 4.", "The answer is 4 because two and two make four."],
        ["What is 3*3?", "False", "True", "It is 6.", "9"],
        ["Contaminated question?", "True", "True", "x", "y"],
    ]
    _write_csv(root / "routellm" / "gsm8k" / "gsm8k_responses.csv", header, rows)
    _write_jsonl(root / "routellm" / "gsm8k" / "contaminated_prompts.jsonl",
                 [{"train_prompt": "c", "eval_prompt": "Contaminated question?"}])
    return root


def test_gsm8k_counts_tokens_from_the_answers_and_drops_contaminated_prompts(tmp_path: Path) -> None:
    ds = load_dataset("routellm-gsm8k", data_dir=_gsm8k(tmp_path))
    assert ds.queries == ["What is 2+2?", "What is 3*3?"]
    assert ds.models == [MIXTRAL, GPT4]
    assert ds.quality.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    # GPT-4's first answer is much longer than Mixtral's, its second is one token
    assert ds.completion_tokens[0, 1] > ds.completion_tokens[0, 0]
    assert ds.completion_tokens[1, 1] == 1
    # cost = tokens x the config's prices (10/30 and 0.6/0.6 USD per 1M)
    expected = (ds.prompt_tokens[0] * 10 + ds.completion_tokens[0, 1] * 30) / 1e6
    assert ds.cost_usd[0, 1] == pytest.approx(expected)
    assert ds.cards[1].input_price == 10.0 and ds.cards[0].output_price == 0.6
    assert ds.tasks == ["gsm8k", "gsm8k"]
    assert ds.assumptions["prices_usd_per_1m"][GPT4] == {"input": 10.0, "output": 30.0}


def test_a_model_absent_from_the_price_config_is_named(tmp_path: Path) -> None:
    _gsm8k(tmp_path, models=(MIXTRAL, "acme/mystery-7b"))
    with pytest.raises(DatasetError, match=r"model 'acme/mystery-7b' .* no entry in price config .*routellm.yaml"):
        load_dataset("routellm-gsm8k", data_dir=tmp_path)


def test_a_bad_boolean_cell_names_file_row_and_column(tmp_path: Path) -> None:
    root = _gsm8k(tmp_path)
    path = root / "routellm" / "gsm8k" / "gsm8k_responses.csv"
    path.write_text(path.read_text().replace("False", "maybe", 1))
    with pytest.raises(DatasetError, match=r"gsm8k_responses.csv: row 3: column .*Mixtral.*'maybe'"):
        load_dataset("routellm-gsm8k", data_dir=root)


def test_mmlu_takes_the_subject_as_task_and_assumes_one_output_token(tmp_path: Path) -> None:
    folder = tmp_path / "routellm" / "mmlu"
    _write_csv(folder / "responses" / "mmlu_anatomy.csv", ["prompt", MIXTRAL, GPT4],
               [["Q1\nA. x\nAnswer:", "True", "False"], ["Q2\nAnswer:", "False", "True"]])
    _write_csv(folder / "responses" / "mmlu_virology.csv", ["prompt", MIXTRAL, GPT4], [["Q3\nAnswer:", "True", "True"]])
    _write_jsonl(folder / "contaminated_prompts.jsonl", [{"eval_prompt": "Q2\nAnswer:"}])
    ds = load_dataset("routellm-mmlu", data_dir=tmp_path)
    assert ds.tasks == ["anatomy", "virology"]
    assert ds.completion_tokens.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert ds.quality.tolist() == [[1.0, 0.0], [1.0, 1.0]]


def _llmrouter(root: Path, scores: list[dict], llms: dict | None = None) -> Path:
    folder = root / "llmrouter"
    _write_jsonl(folder / "scores_train.jsonl", scores)
    llms = llms if llms is not None else {
        "small-7b": {"size": "7B", "input_price": 0.2, "output_price": 0.2, "feature": "a small model"},
        "big-70b": {"size": "70B", "input_price": 0.9, "output_price": 0.9, "feature": "a big model"},
        "unscored-9b": {"size": "9B", "input_price": 0.1, "output_price": 0.1, "feature": "never scored"},
    }
    (folder / "llms.json").write_text(json.dumps(llms))
    return root


def test_llmrouter_takes_prices_from_llms_json_and_assumes_the_output_length(tmp_path: Path) -> None:
    rows = [{"query": "hello there", "task": "mmlu", "metric": "em", "scores": {"small-7b": 0.0, "big-70b": 1.0}},
            {"query": "add 2 and 3", "task": "gsm8k", "metric": "em", "scores": {"small-7b": 0.5, "big-70b": 1.0}}]
    ds = load_dataset("llmrouter", data_dir=_llmrouter(tmp_path, rows))
    assert ds.models == ["small-7b", "big-70b"]  # only scored models
    assert ds.tasks == ["mmlu", "gsm8k"]
    assert [c.size_b for c in ds.cards] == [7.0, 70.0]
    assert ds.cards[1].description == "a big model"
    out = ds.assumptions["output_tokens_assumed"]
    assert ds.cost_usd[0, 1] == pytest.approx((ds.prompt_tokens[0] + out) * 0.9 / 1e6)


def test_llmrouter_bad_rows_are_named_by_line(tmp_path: Path) -> None:
    root = _llmrouter(tmp_path, [{"query": "q", "task": "t", "scores": {"small-7b": 0.1}}])
    path = root / "llmrouter" / "scores_train.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DatasetError, match=r"scores_train.jsonl:2: invalid JSON"):
        load_dataset("llmrouter", data_dir=root)
    path.write_text(json.dumps({"query": "q", "scores": {}}) + "\n")
    with pytest.raises(DatasetError, match=r"scores_train.jsonl:1: missing field 'task'"):
        load_dataset("llmrouter", data_dir=root)


def test_llmrouter_model_without_prices_is_named(tmp_path: Path) -> None:
    rows = [{"query": "q", "task": "t", "scores": {"ghost-1b": 1.0}}]
    with pytest.raises(DatasetError, match=r"model 'ghost-1b' .* no entry in price config .*llms.json"):
        load_dataset("llmrouter", data_dir=_llmrouter(tmp_path, rows))


def test_elliesql_quality_follows_the_cheapest_solving_tier(tmp_path: Path) -> None:
    rows = [{"question": f"q{label}", "db_id": "db", "label": label,
             "enhanced_linked_schema_wo_info": {"tables": [{"table": "t", "columns": ["a", "b"]}]}}
            for label in (1, 2, 3, 4)]
    _write_jsonl(tmp_path / "elliesql" / "bird_dev_tiers.jsonl", rows)
    ds = load_dataset("elliesql", data_dir=tmp_path)
    assert ds.models == ["basic", "intermediate", "advanced"]
    assert ds.quality.tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ds.queries[0] == "q1\nSchema: t(a, b)"
    # stated assumption: the tiers cost more in that order, and the cards reproduce the dataset's cost
    assert (np.diff(ds.cost_usd, axis=1) > 0).all()
    from routers.base import Prediction
    from routers.objective import expected_cost

    est, _ = expected_cost(Prediction(quality=ds.quality), ds.cards, ds.prompt_tokens)
    assert est == pytest.approx(ds.cost_usd)


def test_missing_files_and_unknown_names_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"gsm8k_responses.csv: file not found"):
        load_dataset("routellm-gsm8k", data_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'"):
        load_dataset("nope", data_dir=tmp_path)


def test_a_malformed_config_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(DatasetError, match=r"bad.yaml: malformed YAML"):
        load_dataset("routellm-gsm8k", data_dir=_gsm8k(tmp_path), config=bad)


def test_limit_takes_a_fixed_sample_of_the_real_data() -> None:
    a = load_dataset("routellm-mmlu", limit=50)
    b = load_dataset("routellm-mmlu", limit=50)
    assert a.queries == b.queries and len(a) == 50
    assert len(set(a.tasks or [])) > 5  # a sample across subjects, not the first file


@pytest.mark.parametrize("name", DATASETS)
def test_real_datasets_load_with_sane_shapes(name: str) -> None:
    if not (default_data_dir() / name.split("-")[0]).exists():
        pytest.skip(f"no {name} data beside the repo")
    ds = load_dataset(name)
    assert ds.quality.min() >= 0 and ds.quality.max() <= 1
    assert (ds.cost_usd > 0).all() and ds.tasks is not None
    expected = {"routellm-gsm8k": 1307, "routellm-mmlu": 14037, "llmrouter": 5608, "elliesql": 1227}[name]
    assert len(ds) == expected
