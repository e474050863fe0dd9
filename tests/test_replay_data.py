"""The packaged GSM8K sample and the replay store's exact / nearest lookup, on the real RouteLLM data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.replay.data import (
    MODEL_SOURCES,
    SAMPLE_DIR,
    SAMPLE_PATH,
    ReplayStore,
    UnknownModelError,
    build_sample,
    read_responses_csv,
)
from training.loaders import DatasetError, default_data_dir


def _routellm() -> Path:
    """RouteLLM's folder in the data sets ($POOLGATE_DATA_DIR, else shared/data above the checkout)."""
    try:
        return default_data_dir() / "routellm"
    except DatasetError:
        return Path(__file__).resolve().parent / "no-shared-data"


ROUTELLM = _routellm()
CSV = ROUTELLM / "gsm8k" / "gsm8k_responses.csv"
pytestmark = pytest.mark.skipif(not CSV.is_file(), reason=f"RouteLLM data not found at {CSV}")


@pytest.fixture(scope="module")
def csv_store() -> ReplayStore:
    return ReplayStore.load(CSV)


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    return [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines()]


def test_sample_ships_with_the_source_license_and_an_attribution() -> None:
    assert (SAMPLE_DIR / "LICENSE").read_bytes() == (ROUTELLM / "LICENSE").read_bytes()
    attribution = (SAMPLE_DIR / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "lm-sys/RouteLLM" in attribution
    assert (ROUTELLM / "COMMIT").read_text().strip() in attribution
    assert "subset" in attribution and "contaminated_prompts.jsonl" in attribution


def test_sample_rows_are_verbatim_source_rows_without_contaminated_prompts(sample_rows: list[dict]) -> None:
    source = read_responses_csv(CSV)
    contaminated = {
        json.loads(line)["eval_prompt"] for line in (CSV.parent / "contaminated_prompts.jsonl").open()
    }
    assert len(sample_rows) == 300
    assert len({row["prompt"] for row in sample_rows}) == 300
    for row in sample_rows:
        rec = source[row["source_index"]]
        assert row["prompt"] == rec.prompt
        assert row["answers"] == rec.answers and row["correct"] == rec.correct
        assert row["prompt"] not in contaminated


def test_build_sample_is_deterministic_and_reproduces_the_packaged_file(tmp_path: Path) -> None:
    out = tmp_path / "sample" / "gsm8k_sample.jsonl"
    assert build_sample(CSV, out, n=300, seed=0) == 300
    assert out.read_bytes() == SAMPLE_PATH.read_bytes()
    assert (out.parent / "ATTRIBUTION.md").read_bytes() == (SAMPLE_DIR / "ATTRIBUTION.md").read_bytes()
    other = tmp_path / "other.jsonl"
    build_sample(CSV, other, n=300, seed=1)
    assert other.read_bytes() != SAMPLE_PATH.read_bytes()


def test_build_sample_rejects_n_larger_than_the_eligible_prompts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n must be in 1..1307"):
        build_sample(CSV, tmp_path / "s.jsonl", n=1308)


def test_default_load_is_the_packaged_sample() -> None:
    store = ReplayStore.load()
    assert len(store) == 300 and store.source == str(SAMPLE_PATH)
    assert store.models == ("mixtral-8x7b", "gpt-4-1106")


@pytest.mark.parametrize("model", list(MODEL_SOURCES))
def test_exact_prompt_replays_that_models_recorded_answer(csv_store: ReplayStore, model: str) -> None:
    source = read_responses_csv(CSV)
    for rec in (source[0], source[700], source[-1]):
        text, kind, similarity, matched = csv_store.answer(model, rec.prompt)
        assert (text, kind, similarity, matched) == (rec.answers[model], "exact", 1.0, rec.prompt)


def test_exact_match_ignores_whitespace_differences(csv_store: ReplayStore) -> None:
    prompt = csv_store.records[5].prompt
    reflowed = "\n  " + prompt.replace(" ", "  \n ") + "\t"
    assert csv_store.answer("gpt-4-1106", reflowed).match_kind == "exact"


def test_paraphrased_prompt_gets_the_nearest_recorded_answer(csv_store: ReplayStore) -> None:
    janet = csv_store.records[0]  # "Janet's ducks lay 16 eggs per day. ..."
    paraphrase = (
        "Janet has ducks laying 16 eggs a day. Three are eaten at breakfast and four go into muffins. "
        "She sells the rest at the farmers' market for $2 each. How much money does she make daily?"
    )
    text, kind, similarity, matched = csv_store.answer("mixtral-8x7b", paraphrase)
    assert kind == "nearest" and matched == janet.prompt
    assert text == janet.answers["mixtral-8x7b"]
    assert 0.3 < similarity < 1.0


def test_aliases_resolve_and_unknown_models_raise(csv_store: ReplayStore) -> None:
    prompt = csv_store.records[1].prompt
    assert csv_store.answer("strong", prompt).text == csv_store.answer("gpt-4-1106-preview", prompt).text
    assert csv_store.resolve("cheap") == "mixtral-8x7b"
    with pytest.raises(UnknownModelError, match="gpt-5"):
        csv_store.answer("gpt-5", prompt)


def test_loading_a_file_of_the_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("prompt,answer\nhi,there\n")
    with pytest.raises(ValueError, match="missing columns"):
        ReplayStore.load(bad_csv)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="line 1"):
        ReplayStore.load(bad_jsonl)
    with pytest.raises(FileNotFoundError):
        ReplayStore.load(tmp_path / "missing.csv")
