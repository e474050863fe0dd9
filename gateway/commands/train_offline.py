"""``poolgate train-offline``: fit a registered router on a data set and write its artifact file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _parse_params(values: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; each VALUE is read as YAML (numbers, lists, ``{a: b}`` maps, plain strings)."""
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
@click.option("--router", "router_name", required=True, help="registered router name (see routers/registry.py)")
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
def train_offline(
    router_name: str, dataset_name: str, out: Path | None, seed: int, limit: int | None,
    params: tuple[str, ...], cache_dir: Path | None, calibration: str, encoder: str | None,
) -> None:
    """Fit ROUTER on all rows of DATASET and save it as one artifact file that a pool file can load.

    Prints the artifact path and the lines to put in a pool entry (router, artifact).
    """
    from gateway.settings import Settings
    from routers.base import RouterError
    from training.loaders import DatasetError
    from training.train_router import default_artifact_path, save_result, train_router

    parsed = _parse_params(params)
    settings = Settings()
    cache = cache_dir if cache_dir is not None else settings.embedding_cache_dir
    try:
        result = train_router(router_name, dataset_name, params=parsed, seed=seed, limit=limit, cache_dir=cache,
                              encoder=encoder or settings.embedding_encoder, calibration=calibration)
        save_result(result, out or default_artifact_path(router_name, Path(dataset_name).stem))
    except (RouterError, DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"trained {router_name} on {result.dataset}: {result.rows} rows, models {', '.join(result.models)}, "
               f"fit in {result.seconds:.2f}s")
    if result.summary:
        from gateway.commands.routers import preset_text

        click.echo(f"summary: {json.dumps(result.summary, default=str)}")
        click.echo(preset_text(result.summary).strip())
    click.echo(f"artifact: {result.path}")
    click.echo(f"pool entry:\n    router: {router_name}\n    artifact: {result.path}")
