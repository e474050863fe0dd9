"""Sentence encoders, one implementation per model, shared by training and serving.

``minilm`` (:mod:`routers.encoders.minilm`: the all-MiniLM-L6-v2 weights of :mod:`routers.encoders.model`, the
``minilm`` extra) and ``minilm-static`` (:mod:`routers.encoders.static`: their Model2Vec distillation, package data
in ``data/minilm-static``, built by :mod:`routers.encoders.distill`). Nothing here is imported by
``import routers.encoders``: each module loads its own heavy libraries (torch, model2vec) on first use.
"""
