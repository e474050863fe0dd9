"""``poolgate embeddings``: check the packaged static encoder, or distill a new one (e.g. while building an image)."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
def embeddings() -> None:
    """Sentence encoders of the learned routers (minilm, minilm-static; see docs/encoders.md)."""


@embeddings.command("check")
def check() -> None:
    """Load the minilm-static model (packaged, or POOLGATE_STATIC_MODEL_DIR) and embed one text."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import numpy as np

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.settings import Settings
    from routers.encoders.static import StaticEncoder

    start = time.perf_counter()
    encoder = StaticEncoder(Settings().static_model_dir)
    try:
        vec = encoder(["poolgate checks the token table"])
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"minilm-static: {exc}") from None
    if vec.shape[0] != 1 or not np.isfinite(vec).all():
        raise click.ClickException(f"{encoder.model_dir}: the model gives no valid embedding")
    size = sum(p.stat().st_size for p in encoder.model_dir.iterdir() if p.is_file())
    click.echo(f"minilm-static: {encoder.model_dir} ({size / 2**20:.1f} MiB, {vec.shape[1]} dims, "
               f"ready in {time.perf_counter() - start:.1f} s)")


@embeddings.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for the model (serve it with POOLGATE_STATIC_MODEL_DIR, or replace the packaged one)")
@click.option("--dtype", type=click.Choice(["int8", "float16", "float32"]), default="int8", show_default=True)
def build(out: Path, dtype: str) -> None:
    """Distill the minilm-static model again from the installed all-MiniLM-L6-v2 with model2vec (needs torch).

    The core install does not need this: the model is package data. It needs the minilm extra and
    model2vec[distill] (which pins an older transformers: best in a venv of its own, see
    routers/encoders/distill.py). Routers fitted on the packaged model must be refitted on a new one.
    """
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import importlib.util

    from routers.encoders.distill import distill
    from routers.encoders.model import model_path
    from routers.extras import MissingExtraError, require

    try:
        require("minilm", "poolgate embeddings build")
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("skeletoken") is None:
        raise click.ClickException("poolgate embeddings build needs model2vec's distillation: "
                                   "pip install 'model2vec[distill,quantization]' torch==2.13.0")
    start = time.perf_counter()
    path = distill(model_path(), out, dtype)
    click.echo(f"minilm-static model: {path} (built in {time.perf_counter() - start:.1f} s)")
