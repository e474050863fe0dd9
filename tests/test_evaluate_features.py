"""The featurizer: real MiniLM embeddings, the disk cache keyed by text hash and model version, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from training.features import EMBEDDING_DIM, Featurizer, text_key

TEXTS = ["What is the capital of France?", "Write a SQL query counting rows.", "What is the capital of France?",
         "Solve 12 * 7.", ""]


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Featurizer, Path, np.ndarray]:
    cache = tmp_path_factory.mktemp("emb")
    feat = Featurizer(encoder="minilm", cache_dir=cache)
    vectors = feat.embed(TEXTS)
    feat.flush()
    return feat, cache, vectors


def test_embeddings_are_unit_norm_float32_and_similar_texts_are_closer(warm) -> None:
    _, _, vectors = warm
    assert vectors.shape == (len(TEXTS), EMBEDDING_DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2])
    other = Featurizer(encoder="minilm", disk_cache=False).embed(["Which city is the capital of France?"])[0]
    assert vectors[0] @ other > vectors[1] @ other


def test_a_new_featurizer_reads_the_disk_cache_without_encoding(warm) -> None:
    _, cache, vectors = warm
    again = Featurizer(encoder="minilm", cache_dir=cache)
    assert np.array_equal(again.embed(TEXTS), vectors)
    assert again.stats.encoded == 0 and again._model is None  # the model was never even loaded


def test_the_cache_is_per_model_version_and_keys_survive_trailing_nul_bytes(tmp_path: Path) -> None:
    feat = Featurizer(encoder="minilm", cache_dir=tmp_path)
    key = b"\x01" * 31 + b"\x00"  # a bytes dtype would strip this NUL and lose the entry
    feat._pending[key] = np.ones(EMBEDDING_DIM, dtype=np.float32)
    feat.flush()
    chunks = list(tmp_path.glob("*/chunk-*.npz"))
    assert len(chunks) == 1 and chunks[0].parent.name.startswith("all-minilm-l6-v2")
    fresh = Featurizer(encoder="minilm", cache_dir=tmp_path)
    fresh._load_disk()
    assert key in fresh._memory


def test_a_corrupt_chunk_is_skipped(warm, tmp_path: Path) -> None:
    feat, _, vectors = warm
    good = Featurizer(encoder="minilm", cache_dir=tmp_path)
    good._pending = {text_key(TEXTS[0]): vectors[0]}
    good.flush()
    (next(tmp_path.glob("*/")) / "chunk-0-bad.npz").write_bytes(b"not a zip")
    again = Featurizer(encoder="minilm", cache_dir=tmp_path)
    again._load_disk()
    assert text_key(TEXTS[0]) in again._memory


def test_concurrent_calls_agree_with_one_call(warm) -> None:
    _, _, vectors = warm
    shared = Featurizer(encoder="minilm", disk_cache=False)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: shared.embed([t])[0], TEXTS * 2))
    assert np.allclose(np.stack(results), np.vstack([vectors, vectors]), atol=1e-5)
    assert shared.stats.encoded <= 2 * len(set(TEXTS))


def test_featurize_gives_stats_tokens_and_optional_embeddings_but_no_task_labels() -> None:
    feats = Featurizer(disk_cache=False).featurize(["one two three", "x"], embeddings=False)
    assert feats.embeddings is None and not hasattr(feats, "tasks")
    assert feats.prompt_tokens.tolist() == [3.0, 1.0]
    assert feats.stats.shape[0] == 2
