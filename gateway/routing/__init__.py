"""Choosing the backend: a request's features, its pool's router, the shared objective's ranking.

``service`` (the routing service and each pool's runtime), ``embedding`` (request-time sentence embeddings, batched
across requests), ``shadow`` (other routers' choices, logged beside the real one), ``artifacts`` (versioned router
artifacts) and ``reload`` (promoted versions swapped in while serving).
"""
