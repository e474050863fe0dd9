"""``poolgate evaluate``: offline evaluation of routers on a real routing data set, beside honest baselines.

Bad input (unknown data set or router, missing or malformed file, model absent from the price config) prints
one ``Error: ...`` line and exits with code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from training.dataset import RoutingDataset

#: always evaluated beside the routers asked for
BASELINES_BEFORE = ("random", "best-single")
BASELINES_AFTER = ("oracle",)
DATASET_NAMES = ("routellm-gsm8k", "routellm-mmlu", "llmrouter", "elliesql")


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def router_list(spec: str) -> list[str]:
    """The comma-separated routers plus the baselines, deduplicated, baselines around the requested ones."""
    asked = [n.strip() for n in spec.split(",") if n.strip()]
    out: list[str] = []
    for name in (*BASELINES_BEFORE, *asked, *BASELINES_AFTER):
        if name not in out:
            out.append(name)
    return out


@click.command()
@click.option("--dataset", "dataset_name", required=True, help=f"One of: {', '.join(DATASET_NAMES)}.")
@click.option("--routers", "routers_spec", default="knn", show_default=True,
              help="Comma-separated registry names; random, best-single and oracle are always added.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split and of seeded routers.")
@click.option("--folds", default=None, type=click.IntRange(min=2), help="k-fold CV by unique query (default: 80/20).")
@click.option("--limit", default=None, type=click.IntRange(min=2), help="Evaluate a fixed random sample of N rows.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Write <dataset>.json and <dataset>.html here.")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path),
              help="Data folder (default: $POOLGATE_DATA_DIR or the nearest shared/data above the cwd).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Embedding cache (default: POOLGATE_EMBEDDING_CACHE_DIR or .poolgate/embeddings).")
@click.option("--encoder", type=click.Choice(["minilm", "minilm-static"]), default=None,
              help="Sentence encoder of the embeddings (default: POOLGATE_EMBEDDING_ENCODER or minilm-static).")
@click.option("--sweep", is_flag=True, default=False,
              help="Also trace each router's quality-vs-cost Pareto front across cost/size/verbosity flag weights.")
def evaluate(dataset_name: str, routers_spec: str, seed: int, folds: int | None, limit: int | None,
             out_dir: Path | None, data_dir: Path | None, cache_dir: Path | None, encoder: str | None,
             sweep: bool) -> None:
    """Evaluate routers on a data set: print the table, optionally write JSON and an HTML report."""
    from routers.base import RouterError
    from routers.registry import get_router_class

    if dataset_name not in DATASET_NAMES:
        _fail(f"unknown dataset {dataset_name!r}; known: {', '.join(DATASET_NAMES)}")
    names = router_list(routers_spec)
    for name in names:
        try:
            get_router_class(name)
        except RouterError as exc:
            _fail(str(exc))
    from training.loaders import DatasetError, load_dataset

    try:
        dataset = load_dataset(dataset_name, data_dir=data_dir, limit=limit)
    except DatasetError as exc:
        _fail(str(exc))
    _run(dataset, names, seed, folds, out_dir, cache_dir, sweep, encoder)


def _run(dataset: RoutingDataset, names: list[str], seed: int, folds: int | None, out_dir: Path | None,
         cache_dir: Path | None, sweep: bool = False, encoder: str | None = None) -> None:
    from gateway.settings import Settings
    from training.evaluate import evaluate_routers
    from training.features import Featurizer
    from training.html import write_html
    from training.report import print_report, write_json
    from training.sweep import print_sweep, sweep_grid

    settings = Settings()
    if cache_dir is None:
        cache_dir = settings.embedding_cache_dir
    featurizer = Featurizer(cache_dir=cache_dir, disk_cache=cache_dir is not None,
                            encoder=encoder or settings.embedding_encoder, static_table_dir=settings.static_table_dir)
    try:
        result = evaluate_routers(dataset, names, seed=seed, folds=folds, featurizer=featurizer,
                                  extra_flags=sweep_grid() if sweep else ())
    except ValueError as exc:  # e.g. too few distinct queries to split or fold
        _fail(str(exc))
    print_report(result)
    if sweep:
        print_sweep(result)
    if out_dir is not None:
        stem = result.dataset
        try:
            json_path = write_json(result, out_dir / f"{stem}.json")
            html_path = write_html(result, out_dir / f"{stem}.html")
        except OSError as exc:
            _fail(f"{out_dir}: cannot write the report ({exc.strerror or exc})")
        click.echo(f"wrote {json_path} and {html_path}")
