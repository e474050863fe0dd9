"""``poolgate train``: fit a router for a pool from the gateway's older logs (with feedback), compare it with the
version now serving on the newest logs off-policy (doubly robust, with intervals), register it as a new version, and
(``--promote``) make it live only if the lower bound of the paired estimate of its utility minus the serving
version's, on the same events, is above 0.

Needs requests logged with prompt text: run the gateway with ``POOLGATE_STORE_PROMPTS=true``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway.commands.routers import load_context, notify, notify_option, version_line, with_engine

if TYPE_CHECKING:
    from gateway.loop.train import TrainOutcome


def _dataset_spec(value: str) -> tuple[str, int | None]:
    name, _, limit = value.partition(":")
    if not limit:
        return name, None
    if not limit.isdigit() or int(limit) < 1:
        raise click.BadParameter(f"expected NAME or NAME:LIMIT (LIMIT a positive integer), got {value!r}",
                                 param_hint="--dataset")
    return name, int(limit)


def parse_when_option(value: str | None, option: str) -> datetime | None:
    """``--since``/``--until``: a duration before now or an ISO datetime."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from training.from_logs import parse_when

    try:
        return parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _row(label: str, m: dict[str, Any] | None) -> str:
    if m is None or not m.get("n"):
        return f"  {label:<34} (not evaluated)"

    def f(v: Any, spec: str) -> str:
        return "-" if v is None or v != v else format(v, spec)

    mix = " ".join(f"{k} {100 * v:.0f}%" for k, v in m["mix"].items())
    interval = f"[{f(m['utility_low'], '.4f')}, {f(m['utility_high'], '.4f')}]"
    return (f"  {label:<34} {f(m['utility'], '.4f'):>8} {interval:>18} {f(m['quality'], '.3f'):>7} "
            f"{f(1000 * m['cost_usd'], '.4f'):>9} {f(m['ess'], '.1f'):>7}  {mix}")


def print_outcome(out: TrainOutcome) -> None:
    """The comparison table and what happened to the new version."""
    split = out.record.metrics.get("split", {})
    click.echo(f"data: {out.log_rows} labelled log requests, {out.record.n_rows} rows in all; fitted on "
               f"{split.get('fit_rows', 0)} log rows before {split.get('cutoff')}, judged on "
               f"{out.n_test} newer events ({split.get('holdout_without_propensity', 0)} without a propensity "
               "left out)")
    click.echo(f"  {'holdout policy (off-policy, DR)':<34} {'utility':>8} {'95% interval':>18} {'quality':>7} "
               f"{'$/1k req':>9} {'ESS':>7}  mix")
    click.echo(_row(f"candidate {out.record.router} {out.record.version}", out.candidate))
    click.echo(_row("serving (see below)", out.serving))
    for name, m in out.references.items():
        click.echo(_row(name, m))
    click.echo(f"serving = {out.serving_label}")
    click.echo("utility, quality = doubly-robust estimates from the logged outcomes weighted by their propensities "
               "(reward model: per-backend mean of the older rows); ESS = effective sample size")
    click.echo(f"registered: {version_line(out.record)}")
    click.echo(f"artifact:   {out.record.path}")
    click.echo(f"promotion:  {'LIVE' if out.promoted else 'not live'}: {out.reason}")


def _check_pool_choice(pool_file: Path | None, demo_pool: bool, serving: Path | None) -> Path | None:
    """The pool file to train for: ``--pool-file``, POOLGATE_POOL_FILE (``serving``), or the demo pool if asked.

    Why refuse otherwise: a version trained on the demo pool's backends but registered under a pool name the
    gateway serves from another file would route to backends that pool does not have."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.pools import DEMO_POOL_PATH

    if demo_pool:
        if pool_file is not None:
            raise click.UsageError("give --pool-file or --demo-pool, not both")
        return DEMO_POOL_PATH
    if pool_file is None and serving is None:
        raise click.UsageError("which pool file does the gateway serve? pass --pool-file FILE or set "
                               "POOLGATE_POOL_FILE (as for `poolgate serve`); for the demo pool pass --demo-pool")
    return pool_file


@click.command()
@click.option("--router", "router_name", required=True, help="registered router name (e.g. knn, complexity)")
@click.option("--pool", required=True, help="pool whose logs to learn from and that the version is for")
@click.option("--since", default="7d", show_default=True, help="window start: a duration before now or ISO time")
@click.option("--until", default=None, help="window end (default now)")
@click.option("--dataset", "datasets", multiple=True, metavar="NAME[:LIMIT]",
              help="also learn from an offline data set (its models matched to the pool's backends); repeatable")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="router constructor parameter (YAML)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-size", type=click.FloatRange(0.05, 0.5), default=0.25, show_default=True,
              help="share of the newest labelled log rows held out for the comparison")
@click.option("--min-rows", type=click.IntRange(min=2), default=20, show_default=True,
              help="refuse to train on fewer labelled rows")
@click.option("--promote", is_flag=True, help="make the new version live if the lower bound of its utility minus "
              "the serving version's (paired, on the same holdout events) is above 0")
@click.option("--force", is_flag=True, help="with --promote: make it live even if it is worse")
@click.option("--note", default=None, help="free text stored with the version")
@click.option("--pool-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the pool YAML the gateway serves [POOLGATE_POOL_FILE; neither: refused, see --demo-pool]")
@click.option("--demo-pool", is_flag=True, help="train for the packaged demo pool (a gateway run with no pool file)")
@click.option("--encoder", type=click.Choice(["minilm", "minilm-static"]), default=None,
              help="sentence encoder to fit on [default: the serving router's, else POOLGATE_EMBEDDING_ENCODER]")
@notify_option
def train(
    router_name: str, pool: str, since: str, until: str | None, datasets: tuple[str, ...], params: tuple[str, ...],
    seed: int, test_size: float, min_rows: int, promote: bool, force: bool, note: str | None,
    pool_file: Path | None, demo_pool: bool, encoder: str | None, notify_urls: tuple[str, ...],
) -> None:
    """Train ROUTER for POOL from logged requests with feedback (and optional offline data sets)."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.commands.progress import progress_bars
    from gateway.commands.train_offline import _parse_params
    from gateway.loop.train import TrainRequest, train_from_logs
    from gateway.routing.artifacts import ArtifactError, ArtifactStore
    from routers.base import RouterError
    from training.from_logs import TrainingDataError
    from training.loaders import DatasetError

    if force and not promote:
        raise click.UsageError("--force only makes sense with --promote")
    settings, pools, base_dir = load_context(pool_file)
    chosen = _check_pool_choice(pool_file, demo_pool, settings.pool_file)
    if chosen != pool_file:  # --demo-pool
        settings, pools, base_dir = load_context(chosen)
    req = TrainRequest(
        router=router_name, pool=pool,
        since=parse_when_option(since, "--since"), until=parse_when_option(until, "--until"),
        datasets=[_dataset_spec(d) for d in datasets], params=_parse_params(params), seed=seed,
        test_size=test_size, min_rows=min_rows, promote=promote, force=force, note=note,
        encoder=encoder, default_encoder=settings.embedding_encoder,
    )
    try:
        with progress_bars():
            outcome = with_engine(settings, lambda engine: train_from_logs(
                engine, ArtifactStore(engine, settings.artifacts_dir), pools, req,
                default_output_tokens=settings.default_output_tokens, base_dir=base_dir,
                cache_dir=settings.embedding_cache_dir,
            ))
    except (TrainingDataError, RouterError, DatasetError, ArtifactError) as exc:
        raise click.ClickException(str(exc)) from None
    print_outcome(outcome)
    if outcome.promoted:
        notify(notify_urls, settings.master_key)
