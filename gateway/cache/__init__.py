"""The response cache (exact and semantic) and its stores; session affinity lives in ``gateway.routing.affinity``."""
