"""``poolgate evaluate``: offline evaluation of routers on a real routing data set, beside honest baselines.

Bad input (unknown data set or router, missing or malformed file, model absent from the price config) prints
one ``Error: ...`` line and exits with code 2, never a traceback.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

#: always evaluated beside the routers asked for
BASELINES_BEFORE = ("random", "best-single")
BASELINES_AFTER = ("oracle",)
DATASET_NAMES = ("routellm-gsm8k", "routellm-mmlu", "llmrouter", "elliesql")


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def router_list(spec: str) -> list[str]:
    """The comma-separated routers plus the baselines, deduplicated, baselines around the requested ones."""
    asked = [n.strip() for n in re.split(r",(?![^\[]*\])", spec) if n.strip()]  # commas inside [...] are params
    out: list[str] = []
    for name in (*BASELINES_BEFORE, *asked, *BASELINES_AFTER):
        if name not in out:
            out.append(name)
    return out


@click.command()
@click.option("--dataset", "dataset_name", default=None, help=f"One of: {', '.join(DATASET_NAMES)}.")
@click.option("--train", "train_spec", default=None,
              help="Cross-dataset: fit on this data set (a name or a file in a loader's format) ...")
@click.option("--test", "test_spec", default=None, help="... and score on this one (models matched by name).")
@click.option("--train-tasks", default=None,
              help="Cross-task: fit on these comma-separated tasks of --dataset, score on the rest.")
@click.option("--protocol", type=click.Choice(["kfold", "loto", "holdout"]), default="kfold", show_default=True,
              help="kfold: grouped k-fold; loto: leave-one-task-out; holdout: one grouped 80/20 split.")
@click.option("--routers", "routers_spec", default="knn", show_default=True,
              help="Comma-separated registry names, each optionally with parameters: "
                   "'knn,complexity[mode=expected;cv_folds=5]'; random, best-single and oracle are always added.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the folds and of seeded routers.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2), help="Outer folds of kfold.")
@click.option("--calibration", type=click.Choice(["mixed", "query", "task", "none"]), default="mixed",
              show_default=True,
              help="Inner folds of each router's calibration: by query groups and by task (mixed), one, or none.")
@click.option("--limit", default=None, type=click.IntRange(min=2), help="Evaluate a fixed random sample of N rows.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Write <dataset>.json and <dataset>.html here.")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path),
              help="Data folder (default: $POOLGATE_DATA_DIR or the nearest shared/data above the cwd).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Embedding cache (default: POOLGATE_EMBEDDING_CACHE_DIR or .poolgate/embeddings).")
@click.option("--encoder", type=click.Choice(["minilm", "minilm-static"]), default=None,
              help="Sentence encoder of the embeddings (default: POOLGATE_EMBEDDING_ENCODER or minilm-static).")
@click.option("--per-task/--no-per-task", default=None, help="Print the per-task table (default: up to 20 tasks).")
@click.option("--sweep", is_flag=True, default=False,
              help="Also trace each router's quality-vs-cost Pareto front across lambda/size/verbosity weights.")
def evaluate(dataset_name: str | None, train_spec: str | None, test_spec: str | None, train_tasks: str | None,
             protocol: str, routers_spec: str, seed: int, folds: int, calibration: str, limit: int | None,
             out_dir: Path | None, data_dir: Path | None, cache_dir: Path | None, encoder: str | None,
             per_task: bool | None, sweep: bool) -> None:
    """Evaluate routers under an honest protocol: print the table, optionally write JSON and an HTML report."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from routers.base import RouterError
    from routers.registry import get_router_class
    from training.evaluate import parse_spec

    names = router_list(routers_spec)
    for name in names:
        try:
            get_router_class(parse_spec(name)[0])
        except (RouterError, ValueError) as exc:
            _fail(str(exc))
    dataset, n_train, protocol = _load(dataset_name, train_spec, test_spec, train_tasks, protocol, limit, data_dir)
    run = RunOptions(protocol=protocol, folds=folds, seed=seed, calibration=calibration, n_train=n_train,
                     per_task=per_task, sweep=sweep, encoder=encoder)
    _run(dataset, names, run, out_dir, cache_dir)


@dataclass
class RunOptions:
    """How one evaluation runs (see the command's options)."""

    protocol: str = "kfold"
    folds: int = 5
    seed: int = 0
    calibration: str = "mixed"
    n_train: int | None = None
    per_task: bool | None = None
    sweep: bool = False
    encoder: str | None = None


def _load(dataset_name: str | None, train_spec: str | None, test_spec: str | None, train_tasks: str | None,
          protocol: str, limit: int | None, data_dir: Path | None) -> tuple[RoutingDataset, int | None, str]:
    """(data set, training rows for the cross protocol or None, protocol)."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from training.load_file import load_named_or_file
    from training.loaders import DatasetError, load_dataset
    from training.protocol import concat_datasets

    if (train_spec is None) != (test_spec is None):
        _fail("give both --train and --test, or neither")
    if train_spec is not None and (dataset_name is not None or train_tasks is not None):
        _fail("--train/--test replace --dataset and --train-tasks")
    if train_spec is None and dataset_name is None:
        _fail("give --dataset, or --train and --test")
    try:
        if train_spec is not None and test_spec is not None:
            train, test = load_named_or_file(train_spec, data_dir), load_named_or_file(test_spec, data_dir)
            return concat_datasets(train, test), len(train), "cross"
        assert dataset_name is not None
        if dataset_name not in DATASET_NAMES:
            _fail(f"unknown dataset {dataset_name!r}; known: {', '.join(DATASET_NAMES)}")
        dataset = load_dataset(dataset_name, data_dir=data_dir, limit=limit)
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    if train_tasks is None:
        return dataset, None, protocol
    wanted = {t.strip() for t in train_tasks.split(",") if t.strip()}
    known = set(dataset.tasks or [])
    if not wanted or not wanted <= known or wanted == known:
        _fail(f"--train-tasks must name some but not all tasks of {dataset.name}; known: {', '.join(sorted(known))}")
    inside = [i for i, t in enumerate(dataset.tasks or []) if t in wanted]
    outside = [i for i, t in enumerate(dataset.tasks or []) if t not in wanted]
    train, test = dataset.subset(inside), dataset.subset(outside)
    train.name, test.name = f"{dataset.name}[{','.join(sorted(wanted))}]", f"{dataset.name}[other tasks]"
    return concat_datasets(train, test), len(train), "cross"


def _run(dataset: RoutingDataset, names: list[str], run: RunOptions, out_dir: Path | None,
         cache_dir: Path | None) -> None:
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.commands.progress import progress_bars
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
                            encoder=run.encoder or settings.embedding_encoder,
                            static_model_dir=settings.static_model_dir)
    try:
        with progress_bars():
            result = evaluate_routers(dataset, names, seed=run.seed, protocol=run.protocol, folds=run.folds,
                                      featurizer=featurizer, calibration=run.calibration, n_train=run.n_train,
                                      extra_flags=sweep_grid(dataset) if run.sweep else ())
    except ValueError as exc:  # e.g. too few distinct queries to split or fold
        _fail(str(exc))
    print_report(result, per_task=run.per_task)
    if run.sweep:
        print_sweep(result)
    if out_dir is not None:
        stem = result.dataset.replace("/", "_")
        try:
            json_path = write_json(result, out_dir / f"{stem}.json")
            html_path = write_html(result, out_dir / f"{stem}.html")
        except OSError as exc:
            _fail(f"{out_dir}: cannot write the report ({exc.strerror or exc})")
        click.echo(f"wrote {json_path} and {html_path}")
