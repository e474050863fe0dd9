"""``poolgate train-offline``: fit a registered router on a data set and write its artifact file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _parse_params(values: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; each VALUE is read as YAML (numbers, lists, ``{a: b}`` maps, plain strings)."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import yaml

    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        try:
            params[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{key}: value is not valid YAML ({exc})", param_hint="--param") from None
    return params


@click.command("train-offline")
@click.option("--router", "router_name", required=True,
              help="registered router name (see routers/registry.py), or 'auto': pick among --candidates by the "
                   "evaluation protocol (see --select-protocol)")
@click.option("--dataset", "dataset_name", required=True,
              help="routellm-gsm8k, routellm-mmlu, llmrouter or elliesql (from shared/data), or a file in one of "
                   "their formats (or the demo's replay sample)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="artifact file [default: .poolgate/artifacts/ROUTER-DATASET.router]")
@click.option("--seed", type=int, default=0, show_default=True, help="passed to routers that take a seed")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="train on a fixed random sample of N rows")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="router constructor parameter, VALUE as YAML; repeatable "
                   "(e.g. --param mode=cascade --param 'aliases={pool-name: dataset-model}')")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="embedding cache [default: POOLGATE_EMBEDDING_CACHE_DIR or .poolgate/embeddings]")
@click.option("--calibration", type=click.Choice(["mixed", "query", "task", "none"]), default="mixed",
              show_default=True,
              help="inner folds of the out-of-fold calibration (presets, caution): by query groups or by task")
@click.option("--encoder", type=click.Choice(["minilm", "minilm-static"]), default=None,
              help="sentence encoder of the embeddings [default: POOLGATE_EMBEDDING_ENCODER or minilm-static]; "
                   "see docs/encoders.md")
@click.option("--candidates", default=None,
              help="with --router auto: the comma-separated routers to choose among "
                   "[default: training.select.DEFAULT_CANDIDATES, i.e. knn,category,complexity,tryage]")
@click.option("--select-protocol", type=click.Choice(["kfold", "loto"]), default="kfold", show_default=True,
              help="with --router auto: grouped 3-fold or leave-one-task-out on the training data")
def train_offline(
    router_name: str, dataset_name: str, out: Path | None, seed: int, limit: int | None,
    params: tuple[str, ...], cache_dir: Path | None, calibration: str, encoder: str | None,
    candidates: str | None, select_protocol: str,
) -> None:
    """Fit ROUTER on all rows of DATASET and save it as one artifact file that a pool file can load.

    Prints the artifact path and the lines to put in a pool entry (router, artifact).
    """
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.commands.progress import progress_bars
    from gateway.settings import Settings
    from routers.base import RouterError
    from training.loaders import DatasetError
    from training.train_router import default_artifact_path, load_training_data, save_result, train_router

    parsed = _parse_params(params)
    settings = Settings()
    cache = cache_dir if cache_dir is not None else settings.embedding_cache_dir
    selection = None
    source: Any = dataset_name  # the auto path loads the data once, for the selection and the fit
    try:
        if router_name == "auto":
            if parsed:
                raise RouterError("--param cannot be combined with --router auto (each candidate has its own)")
            source = load_training_data(dataset_name, limit)
            with progress_bars():
                selection = _select(source, candidates, select_protocol, seed, cache,
                                    encoder or settings.embedding_encoder, calibration)
            router_name = selection.router
        with progress_bars():
            result = train_router(router_name, source, params=parsed, seed=seed, limit=limit, cache_dir=cache,
                                  encoder=encoder or settings.embedding_encoder, calibration=calibration)
        save_result(result, out or default_artifact_path(router_name, Path(dataset_name).stem))
    except (RouterError, DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    if selection is not None:
        result.summary["selection"] = selection.to_dict()
    click.echo(f"trained {router_name} on {result.dataset}: {result.rows} rows, models {', '.join(result.models)}, "
               f"fit in {result.seconds:.2f}s")
    if result.summary:
        # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
        from gateway.commands.routers import preset_text

        click.echo(f"summary: {json.dumps(result.summary, default=str)}")
        click.echo(preset_text(result.summary).strip())
    click.echo(f"artifact: {result.path}")
    click.echo(f"pool entry:\n    router: {router_name}\n    artifact: {result.path}")


def _select(data: Any, candidates: str | None, protocol: str, seed: int, cache: Path | None, encoder: str,
            calibration: str) -> Any:
    """Run the selection protocol (:mod:`training.select`) on ``data`` and print what each candidate scored."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from training.features import Featurizer
    from training.select import DEFAULT_CANDIDATES, select_router

    names = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else list(DEFAULT_CANDIDATES)
    featurizer = Featurizer(cache_dir=cache, disk_cache=cache is not None, encoder=encoder)
    selection = select_router(data, names, protocol=protocol, seed=seed, calibration=calibration,
                              featurizer=featurizer)
    click.echo(f"router selection ({protocol}, quality-first paired difference to best-single, 95% interval):")
    for name, row in selection.candidates.items():
        text = row["error"] if "error" in row else (
            f"{row['diff']:+.4f} [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]; balanced: cost "
            f"{row['balanced_cost_ratio']:.1%} of best-single, quality {row['balanced_diff']:+.4f} "
            f"(lower {row['balanced_diff_lower']:+.4f})")
        click.echo(f"  {name:<12} {text}")
    click.echo(f"selected: {selection.router}: {selection.reason}")
    return selection
