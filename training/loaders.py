"""Loaders for the real routing data sets in ``shared/data`` (see its README).

``load_dataset(name)`` returns a :class:`~routers.dataset.RoutingDataset` for one of :data:`DATASETS`.
Prices and cost assumptions come from ``training/data_config/*.yaml`` (never from code) and are copied into
``dataset.assumptions`` so that every report can print them. Bad input raises :class:`DatasetError` with a
one-line message naming the file, the line or field, or the model.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from routers.base import ModelCard
from routers.dataset import RoutingDataset
from routers.pricing import call_costs_usd
from training.features import count_tokens

DATASETS: tuple[str, ...] = ("routellm-gsm8k", "routellm-mmlu", "llmrouter", "elliesql")
CONFIG_DIR = Path(__file__).resolve().parent / "data_config"
_CONFIG_FILE = {"routellm-gsm8k": "routellm.yaml", "routellm-mmlu": "routellm.yaml",
                "llmrouter": "llmrouter.yaml", "elliesql": "elliesql.yaml"}
#: seed of the fixed random sample that ``limit`` takes (so slices are representative, not one MMLU subject)
LIMIT_SEED = 0


class DatasetError(Exception):
    """A data set or its config cannot be loaded; the message names the file and what is wrong."""


# -- locating files ------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$POOLGATE_DATA_DIR``, else the first ``<ancestor>/shared/data`` above the cwd or this package."""
    env = os.environ.get("POOLGATE_DATA_DIR")
    if env:
        return Path(env)
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise DatasetError("no shared/data folder found above the current directory; set POOLGATE_DATA_DIR")


def load_config(path: Path) -> dict[str, Any]:
    """A data config YAML file as a mapping; :class:`DatasetError` naming the file when it is bad."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping at the top level")
    return data


def _need(mapping: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise DatasetError(f"{where}: missing field {key!r}")
    return mapping[key]


def _jsonable(value: Any) -> Any:
    """Config values made JSON-safe (dates as ISO strings) for ``dataset.assumptions``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


# -- reading files -------------------------------------------------------------------------------
def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from None
    for col in required:
        if col not in header:
            raise DatasetError(f"{path}: missing column {col!r}")
    return rows


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; errors name the line."""
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def _bool_cell(value: str, path: Path, row: int, col: str) -> float:
    if value in ("True", "true", "1", "1.0"):
        return 1.0
    if value in ("False", "false", "0", "0.0"):
        return 0.0
    raise DatasetError(f"{path}: row {row}: column {col!r}: expected True/False, got {value!r}")


def _contaminated(path: Path) -> set[str]:
    return {str(_need(obj, "eval_prompt", f"{path}:{n}")) for n, obj in _read_jsonl(path)}


# -- RouteLLM ------------------------------------------------------------------------------------
def _routellm_cards(
    models: Sequence[str], cfg: dict[str, Any], cfg_path: Path, source: Path
) -> list[ModelCard]:
    table = _need(cfg, "models", str(cfg_path))
    aliases = {a: name for name, spec in table.items() for a in (spec or {}).get("aliases", [])}
    cards = []
    for model in models:
        key = model if model in table else aliases.get(model)
        if key is None:
            raise DatasetError(f"model {model!r} in {source} has no entry in price config {cfg_path}")
        spec = table[key] or {}
        where = f"{cfg_path}: models.{key}"
        rd = spec.get("release_date")
        cards.append(ModelCard(
            name=model,
            input_price=float(_need(spec, "input_price", where)),
            output_price=float(_need(spec, "output_price", where)),
            size_b=None if spec.get("size_b") is None else float(spec["size_b"]),
            release_date=rd if isinstance(rd, date) else None,
            context_window=spec.get("context_window"),
            description=str(spec.get("description", "")),
        ))
    return cards


def _routellm_models(header: Sequence[str]) -> list[str]:
    return [c for c in header if c != "prompt" and not c.endswith("_response")]


def _routellm_frame(
    rows: list[dict[str, str]], models: Sequence[str], path: Path, contaminated: set[str]
) -> tuple[list[dict[str, str]], np.ndarray]:
    """Rows not in ``contaminated`` and their 0/1 quality (CSV row numbers count the header as row 1)."""
    numbered = [(i, r) for i, r in enumerate(rows, start=2) if r["prompt"] not in contaminated]
    quality = np.asarray(
        [[_bool_cell(r[m], path, i, m) for m in models] for i, r in numbered], dtype=np.float64
    ).reshape(len(numbered), len(models))
    return [r for _, r in numbered], quality


def load_routellm_gsm8k(
    data_dir: Path, cfg: dict[str, Any], cfg_path: Path, limit: int | None = None
) -> RoutingDataset:
    """GSM8K: quality = answer correct; tokens counted from the prompt and each model's real answer."""
    folder = data_dir / "routellm" / "gsm8k"
    path = folder / "gsm8k_responses.csv"
    rows = _read_csv(path, ["prompt"])
    models = _routellm_models(list(rows[0]) if rows else [])
    if not models:
        raise DatasetError(f"{path}: no model columns besides 'prompt'")
    for m in models:
        if f"{m}_response" not in rows[0]:
            raise DatasetError(f"{path}: missing column {m + '_response'!r}")
    drop = _contaminated(folder / "contaminated_prompts.jsonl") if cfg.get("gsm8k", {}).get(
        "drop_contaminated", True) else set()
    kept, quality = _routellm_frame(rows, models, path, drop)
    n_kept = len(kept)
    idx = _sample(len(kept), limit)
    kept, quality = [kept[i] for i in idx], quality[idx]
    cards = _routellm_cards(models, cfg, cfg_path, path)
    queries = [r["prompt"] for r in kept]
    completion = np.stack([count_tokens([r[f"{m}_response"] or "" for r in kept]) for m in models], axis=1)
    return _assemble("routellm-gsm8k", queries, cards, quality, count_tokens(queries),
                     completion.reshape(len(kept), len(models)), ["gsm8k"] * len(kept),
                     _routellm_assumptions(cfg, cfg_path, cards, "gsm8k", len(rows), n_kept))


def load_routellm_mmlu(
    data_dir: Path, cfg: dict[str, Any], cfg_path: Path, limit: int | None = None
) -> RoutingDataset:
    """MMLU: 57 subject files; task = subject; output tokens assumed (config); contaminated rows dropped."""
    folder = data_dir / "routellm" / "mmlu"
    files = sorted((folder / "responses").glob("mmlu_*.csv"))
    if not files:
        raise DatasetError(f"{folder / 'responses'}: no mmlu_<subject>.csv files")
    mcfg = cfg.get("mmlu", {})
    drop_it = mcfg.get("drop_contaminated", True)
    drop = _contaminated(folder / "contaminated_prompts.jsonl") if drop_it else set()
    models: list[str] | None = None
    queries: list[str] = []
    tasks: list[str] = []
    blocks: list[np.ndarray] = []
    total = 0
    for path in files:
        rows = _read_csv(path, ["prompt"])
        total += len(rows)
        these = _routellm_models(list(rows[0]) if rows else [])
        if models is None:
            models = these
        elif rows and these != models:
            raise DatasetError(f"{path}: model columns {these} differ from {models} in {files[0]}")
        kept, quality = _routellm_frame(rows, models, path, drop)
        queries += [r["prompt"] for r in kept]
        tasks += [path.stem.removeprefix("mmlu_")] * len(kept)
        blocks.append(quality)
    assert models is not None
    n_kept = len(queries)
    idx = _sample(n_kept, limit)
    queries, tasks, quality = [queries[i] for i in idx], [tasks[i] for i in idx], np.concatenate(blocks)[idx]
    cards = _routellm_cards(models, cfg, cfg_path, files[0])
    out_tok = float(mcfg.get("output_tokens_assumed", 1))
    prompt = count_tokens(queries) + float(mcfg.get("extra_prompt_tokens_assumed", 0))
    completion = np.full((len(queries), len(models)), out_tok)
    return _assemble("routellm-mmlu", queries, cards, quality, prompt, completion, tasks,
                     _routellm_assumptions(cfg, cfg_path, cards, "mmlu", total, n_kept))


def _routellm_assumptions(
    cfg: dict[str, Any], cfg_path: Path, cards: Sequence[ModelCard], part: str, n_raw: int, n_kept: int
) -> dict[str, Any]:
    return {
        "config_file": str(cfg_path),
        "source": cfg.get("source", ""),
        "prices_usd_per_1m": {c.name: {"input": c.input_price, "output": c.output_price} for c in cards},
        "tokenizer": cfg.get("tokenizer", ""),
        "cost": _jsonable(cfg.get(part, {})),
        "rows": f"{n_kept} of {n_raw} prompts after dropping contaminated ones",
    }


# -- LLMRouter -----------------------------------------------------------------------------------
def load_llmrouter(
    data_dir: Path, cfg: dict[str, Any], cfg_path: Path, limit: int | None = None, path: Path | None = None
) -> RoutingDataset:
    """Nine scored models, fourteen tasks; cost = price x (query tokens + assumed output length).

    ``path``: a scores file of the same format to read instead of ``scores_train.jsonl`` (prices from the
    ``llms.json`` beside it, else the data folder's)."""
    folder = data_dir / "llmrouter"
    llms_path = folder / "llms.json"
    if path is not None and (path.parent / "llms.json").is_file():
        llms_path = path.parent / "llms.json"
    try:
        llms = json.loads(llms_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{llms_path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{llms_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(llms, dict):
        raise DatasetError(f"{llms_path}: expected an object keyed by model name")
    path = path or folder / "scores_train.jsonl"
    queries: list[str] = []
    tasks: list[str] = []
    scores: list[dict[str, Any]] = []
    for lineno, obj in _read_jsonl(path):
        where = f"{path}:{lineno}"
        queries.append(str(_need(obj, "query", where)))
        tasks.append(str(_need(obj, "task", where)))
        row = _need(obj, "scores", where)
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: field 'scores' must be an object")
        scores.append(row)
    if not scores:
        raise DatasetError(f"{path}: no rows")
    models = list(scores[0])
    quality = np.empty((len(scores), len(models)))
    for i, row in enumerate(scores):
        for j, m in enumerate(models):
            v = row.get(m)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise DatasetError(f"{path}:{i + 1}: scores.{m}: expected a number in [0, 1], got {v!r}")
            quality[i, j] = float(v)
    idx = _sample(len(queries), limit)
    queries, tasks, quality = [queries[i] for i in idx], [tasks[i] for i in idx], quality[idx]
    dates = cfg.get("release_dates") or {}
    cards = []
    for m in models:
        spec = llms.get(m)
        if not isinstance(spec, dict):
            raise DatasetError(f"model {m!r} in {path} has no entry in price config {llms_path}")
        where = f"{llms_path}: {m}"
        cards.append(ModelCard(
            name=m,
            input_price=float(_need(spec, "input_price", where)),
            output_price=float(_need(spec, "output_price", where)),
            size_b=_parse_size(spec.get("size")),
            release_date=dates.get(m) if isinstance(dates.get(m), date) else None,
            description=str(spec.get("feature", "")),
            output_tokens=float(_need(cfg, "output_tokens_assumed", str(cfg_path))),
        ))
    out_tok = float(cfg["output_tokens_assumed"])
    assumptions = {
        "config_file": str(cfg_path),
        "source": cfg.get("source", ""),
        "prices_usd_per_1m": {c.name: {"input": c.input_price, "output": c.output_price} for c in cards},
        "prices_from": str(llms_path),
        "cost": f"input_price x query tokens + output_price x {out_tok:g} assumed output tokens",
        "output_tokens_assumed": out_tok,
    }
    name = "llmrouter" if path.name == "scores_train.jsonl" else path.stem
    return _assemble(name, queries, cards, quality, count_tokens(queries),
                     np.full((len(queries), len(models)), out_tok), tasks, assumptions)


def _parse_size(value: Any) -> float | None:
    """'7B' -> 7.0; numbers pass through; anything else -> None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.upper().endswith("B"):
        try:
            return float(value[:-1])
        except ValueError:
            return None
    return None


# -- EllieSQL ------------------------------------------------------------------------------------
def load_elliesql(
    data_dir: Path, cfg: dict[str, Any], cfg_path: Path, limit: int | None = None, path: Path | None = None
) -> RoutingDataset:
    """Three pipeline tiers; quality from the cheapest-solving-tier label; cost from the config assumption.

    ``path``: a file of the same format to read instead of ``bird_dev_tiers.jsonl``."""
    path = path or data_dir / "elliesql" / "bird_dev_tiers.jsonl"
    tiers = _need(cfg, "tiers", str(cfg_path))
    price = _need(cfg, "price", str(cfg_path))
    p_in = float(_need(price, "input", f"{cfg_path}: price"))
    p_out = float(_need(price, "output", f"{cfg_path}: price"))
    names = [str(_need(t, "name", f"{cfg_path}: tiers")) for t in tiers]

    def column(field: str) -> np.ndarray:
        pairs = zip(tiers, names, strict=True)
        return np.asarray([float(_need(t, field, f"{cfg_path}: tiers.{n}")) for t, n in pairs])

    labels, t_in, t_out = column("label").astype(int), column("input_tokens"), column("output_tokens")
    task_field = str(cfg.get("task_field", "db_id"))
    queries, tasks, row_labels = [], [], []
    for lineno, obj in _read_jsonl(path):
        where = f"{path}:{lineno}"
        label = _need(obj, "label", where)
        if isinstance(label, bool) or not isinstance(label, int) or not 1 <= label <= len(tiers) + 1:
            raise DatasetError(f"{where}: field 'label' must be an int 1..{len(tiers) + 1}, got {label!r}")
        text = str(_need(obj, "question", where))
        if cfg.get("include_schema", True):
            text += _render_schema(obj.get("enhanced_linked_schema_wo_info"))
        queries.append(text)
        tasks.append(str(_need(obj, task_field, where)))
        row_labels.append(label)
    idx = _sample(len(queries), limit)
    queries, tasks, lab = [queries[i] for i in idx], [tasks[i] for i in idx], np.asarray(row_labels)[idx]
    # tier t solves the question when it is at least as strong as the cheapest solving tier (label 4: none)
    quality = ((labels[None, :] >= lab[:, None]) & (lab[:, None] <= len(tiers))).astype(np.float64)
    prompt = count_tokens(queries)
    completion = np.tile(t_in + t_out, (len(queries), 1))
    # effective per-token price of the tier's own tokens (input and output), so that
    # cost = question x input_price + tier tokens x output_price is (question + t_in) x p_in + t_out x p_out,
    # and the objective's estimate from these cards equals the dataset's cost exactly
    eff = (t_in * p_in + t_out * p_out) / (t_in + t_out)
    cards = [ModelCard(name=n, input_price=p_in, output_price=float(e), output_tokens=float(k),
                       description=f"EllieSQL {t.get('pipeline', n)} pipeline (tier {lb})")
             for n, e, k, t, lb in zip(names, eff, t_in + t_out, tiers, labels, strict=True)]
    assumptions = {
        "config_file": str(cfg_path),
        "source": cfg.get("source", ""),
        "quality_rule": cfg.get("quality_rule", ""),
        "price_usd_per_1m": {"input": p_in, "output": p_out},
        "tiers": _jsonable(tiers),
        "cost": "ASSUMED: (question + tier input_tokens) x input price + tier output_tokens x output price",
    }
    name = "elliesql" if path.name == "bird_dev_tiers.jsonl" else path.stem
    return _assemble(name, queries, cards, quality, prompt, completion, tasks, assumptions)


def _render_schema(schema: Any) -> str:
    """``{"tables": [{"table", "columns"}]}`` -> ``"\\nSchema: t1(c1, c2); t2(c3)"`` ('' when absent)."""
    if not isinstance(schema, dict) or not isinstance(schema.get("tables"), list):
        return ""
    parts = [f"{t.get('table')}({', '.join(map(str, t.get('columns', [])))})"
             for t in schema["tables"] if isinstance(t, dict)]
    return "\nSchema: " + "; ".join(parts) if parts else ""


# -- assembly and entry point --------------------------------------------------------------------
def _assemble(
    name: str, queries: list[str], cards: list[ModelCard], quality: np.ndarray, prompt: np.ndarray,
    completion: np.ndarray, tasks: list[str], assumptions: dict[str, Any],
) -> RoutingDataset:
    """Build the dataset; cost = prompt x input price + completion x output price (per cell)."""
    cost = call_costs_usd(prompt, completion, cards)
    return RoutingDataset(
        name=name, queries=queries, models=[c.name for c in cards], quality=quality, prompt_tokens=prompt,
        completion_tokens=completion, cost_usd=cost, cards=cards, tasks=tasks, assumptions=assumptions,
    )


def _sample(n: int, limit: int | None) -> np.ndarray:
    """Row indices to keep: all ``n``, or a fixed random sample (seed :data:`LIMIT_SEED`) of ``limit``, sorted.

    Sampling happens before tokenizing, so a small slice of a big data set loads fast."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(LIMIT_SEED).choice(n, size=limit, replace=False))


_LOADERS: dict[str, Callable[[Path, dict[str, Any], Path, int | None], RoutingDataset]] = {
    "routellm-gsm8k": load_routellm_gsm8k,
    "routellm-mmlu": load_routellm_mmlu,
    "llmrouter": load_llmrouter,
    "elliesql": load_elliesql,
}


def load_dataset(
    name: str, data_dir: Path | None = None, limit: int | None = None, *, config: Path | None = None
) -> RoutingDataset:
    """Load data set ``name`` (one of :data:`DATASETS`) from ``data_dir`` (default :func:`default_data_dir`).

    ``limit``: keep a fixed random sample (seed :data:`LIMIT_SEED`) of at most that many rows, in file order.
    ``config``: a data config file to use instead of the packaged ``training/data_config/<source>.yaml``.
    """
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    cfg_path = config or CONFIG_DIR / _CONFIG_FILE[name]
    cfg = load_config(cfg_path)
    ds = _LOADERS[name](Path(data_dir) if data_dir is not None else default_data_dir(), cfg, cfg_path, limit)
    if len(ds) == 0:
        raise DatasetError(f"dataset {name!r}: no rows left to evaluate")
    if limit is not None and limit == len(ds):
        ds.assumptions["limit"] = f"a fixed random sample (seed {LIMIT_SEED}) of {limit} rows"
    return ds
