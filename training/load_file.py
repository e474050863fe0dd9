"""Load a routing data set from any file in one of the loaders' formats (``poolgate evaluate --train F --test F``).

The format is read off the file: a ``.csv`` with a ``prompt`` column and one True/False column per model (the
RouteLLM layout; ``<model>_response`` columns give completion tokens, else the config's assumed output length);
a ``.jsonl`` whose rows have ``scores`` (the LLMRouter layout, prices from the ``llms.json`` beside the file or
in the data folder), ``question`` and ``label`` (the EllieSQL layout), or ``answers`` and ``correct`` (the offline
demo's replay sample, ``gateway/replay/sample``: real answers, so completion tokens are counted from them).
A name of :data:`training.loaders.DATASETS` loads that data set. Errors are
:class:`~training.loaders.DatasetError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from routers.dataset import RoutingDataset
from training import loaders
from training.features import count_tokens
from training.loaders import CONFIG_DIR, DatasetError, default_data_dir, load_config, load_dataset


def load_named_or_file(spec: str, data_dir: Path | None = None) -> RoutingDataset:
    """A data set by name (``llmrouter``) or from a file path."""
    if spec in loaders.DATASETS:
        return load_dataset(spec, data_dir=data_dir)
    return load_file(Path(spec), data_dir)


def load_file(path: Path, data_dir: Path | None = None) -> RoutingDataset:
    """The data set in ``path`` (see the module docstring)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (give a file or one of: {', '.join(loaders.DATASETS)})")
    if path.suffix == ".csv":
        return _routellm_csv(path)
    if path.suffix == ".jsonl":
        first = next((obj for _, obj in loaders._read_jsonl(path)), None)
        if first is None:
            raise DatasetError(f"{path}: no rows")
        folder = data_dir if data_dir is not None else _data_dir_or_none()
        if "scores" in first:
            cfg_path = CONFIG_DIR / "llmrouter.yaml"
            return loaders.load_llmrouter(folder or path.parent, load_config(cfg_path), cfg_path, path=path)
        if "answers" in first and "correct" in first:
            return load_replay_sample(path)
        if "question" in first and "label" in first:
            cfg_path = CONFIG_DIR / "elliesql.yaml"
            return loaders.load_elliesql(folder or path.parent, load_config(cfg_path), cfg_path, path=path)
        raise DatasetError(f"{path}: rows have neither 'scores' (LLMRouter) nor 'question' and 'label' (EllieSQL)")
    raise DatasetError(f"{path}: unknown format (expected .csv or .jsonl)")


def _data_dir_or_none() -> Path | None:
    try:
        return default_data_dir()
    except DatasetError:
        return None


def _routellm_csv(path: Path) -> RoutingDataset:
    cfg_path = CONFIG_DIR / "routellm.yaml"
    cfg = load_config(cfg_path)
    rows = loaders._read_csv(path, ["prompt"])
    if not rows:
        raise DatasetError(f"{path}: no rows")
    models = loaders._routellm_models(list(rows[0]))
    if not models:
        raise DatasetError(f"{path}: no model columns besides 'prompt'")
    kept, quality = loaders._routellm_frame(rows, models, path, set())
    cards = loaders._routellm_cards(models, cfg, cfg_path, path)
    queries = [r["prompt"] for r in kept]
    if all(f"{m}_response" in rows[0] for m in models):
        completion = np.stack([count_tokens([r[f"{m}_response"] or "" for r in kept]) for m in models], axis=1)
        how = "counted from each model's recorded answer text (<model>_response)"
    else:
        out_tok = float(cfg.get("mmlu", {}).get("output_tokens_assumed", 1))
        completion = np.full((len(kept), len(models)), out_tok)
        how = f"{out_tok:g} output tokens assumed per answer (the config's mmlu.output_tokens_assumed)"
    assumptions = {"config_file": str(cfg_path), "source": str(path),
                   "prices_usd_per_1m": {c.name: {"input": c.input_price, "output": c.output_price} for c in cards},
                   "completion_tokens": how, "rows": json.dumps(len(kept))}
    return loaders._assemble(path.stem, queries, cards, quality, count_tokens(queries),
                             completion.reshape(len(kept), len(models)), [path.stem] * len(kept), assumptions)


def load_replay_sample(path: Path) -> RoutingDataset:
    """The replay sample format: ``{"prompt", "answers": {model: text}, "correct": {model: bool}}`` per line.
    Prices from the RouteLLM config (its aliases name the demo's models); task ``gsm8k``."""
    cfg_path = CONFIG_DIR / "routellm.yaml"
    cfg = load_config(cfg_path)
    rows = [obj for _, obj in loaders._read_jsonl(path)]
    models = list(rows[0]["correct"]) if rows and isinstance(rows[0].get("correct"), dict) else []
    if not models:
        raise DatasetError(f"{path}: the first row has no 'correct' object")
    for lineno, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answers"), dict) \
                or not isinstance(row.get("correct"), dict) or sorted(row["correct"]) != sorted(models):
            raise DatasetError(f"{path}:{lineno}: expected 'prompt', 'answers' and 'correct' for {models}")
        if not all(isinstance(row["correct"][m], bool) for m in models):
            raise DatasetError(f"{path}:{lineno}: 'correct' values must be true or false")
    cards = loaders._routellm_cards(models, cfg, cfg_path, path)
    queries = [r["prompt"] for r in rows]
    quality = np.asarray([[float(r["correct"][m]) for m in models] for r in rows], dtype=np.float64)
    completion = np.stack([count_tokens([str(r["answers"].get(m, "")) for r in rows]) for m in models], axis=1)
    assumptions = {"config_file": str(cfg_path), "source": str(path),
                   "prices_usd_per_1m": {c.name: {"input": c.input_price, "output": c.output_price} for c in cards},
                   "completion_tokens": "counted from each model's recorded answer"}
    return loaders._assemble(path.stem, queries, cards, quality, count_tokens(queries),
                             completion.reshape(len(rows), len(models)), ["gsm8k"] * len(rows), assumptions)
