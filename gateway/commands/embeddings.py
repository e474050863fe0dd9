"""``poolgate embeddings``: prepare the sentence encoders ahead of time (e.g. while building an image)."""

from __future__ import annotations

import time

import click


@click.group()
def embeddings() -> None:
    """Sentence encoders of the learned routers (minilm, minilm-static; see docs/encoders.md)."""


@embeddings.command("build")
@click.option("--force", is_flag=True, help="rebuild the minilm-static token table even if it is cached")
def build(force: bool) -> None:
    """Build (or check) the minilm-static token table in POOLGATE_STATIC_TABLE_DIR or ~/.cache/poolgate.

    A gateway whose router was fitted on minilm-static embeddings builds it on first start otherwise (about a
    minute of CPU); an image that runs this once starts at once.
    """
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import logging

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import numpy as np

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.commands.progress import progress_bars
    from gateway.settings import Settings
    from routers.encoders.model import EMBEDDING_DIM
    from routers.encoders.static import StaticEncoder, table_path

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table_dir = Settings().static_table_dir
    path = table_path(table_dir)
    if force:
        path.unlink(missing_ok=True)
    start = time.perf_counter()
    encoder = StaticEncoder(table_dir)
    with progress_bars():
        encoder.load()
    vec = encoder(["poolgate checks the token table"])
    if vec.shape != (1, EMBEDDING_DIM) or not np.isfinite(vec).all():
        raise click.ClickException(f"{path}: the token table gives no valid embedding; rerun with --force")
    click.echo(f"minilm-static token table: {path} ({path.stat().st_size / 2**20:.1f} MiB, "
               f"ready in {time.perf_counter() - start:.1f} s)")
