"""Sentence encoders, one implementation per model, shared by training and serving.

``minilm`` (:mod:`routers.encoders.minilm`) and ``minilm-static`` (:mod:`routers.encoders.static`), both from the
packaged all-MiniLM-L6-v2 (:mod:`routers.encoders.model`). Nothing here is imported by ``import routers.encoders``:
each module loads its own heavy libraries (torch, tokenizers) on first use.
"""
