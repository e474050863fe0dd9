"""Cut the pinned subset of OpenAI's OpenAPI document: the operations poolgate serves, and every component they
reference (``$ref`` resolved transitively), written as JSON (fast to load in tests).

    git --git-dir=<mirror of openai/openai-openapi> show <commit>:openapi.yaml > /tmp/openapi.yaml
    python tests/conformance/extract_openai_subset.py /tmp/openapi.yaml <commit>

Schemas are copied verbatim but for ``x-oaiMeta`` (documentation examples, a third of the size); nothing is
"fixed" here: where the suite reads the spec differently, it says so in its allow-list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
OUT = HERE / "openai-openapi-subset.json"
#: (path, method) pairs kept; GET /models/{model} is not served yet (issue 18) but pinned so it can join the suite.
OPERATIONS = [("/chat/completions", "post"), ("/models", "get"), ("/models/{model}", "get")]
#: Components the suite validates against directly, kept even when no operation references them.
ROOTS = ["#/components/schemas/ErrorResponse"]
DROPPED_KEYS = frozenset({"x-oaiMeta"})


def strip(node: Any) -> Any:
    """``node`` without documentation-only keys, at any depth."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in DROPPED_KEYS}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs_in(node: Any) -> list[str]:
    """Every local ``$ref`` target in ``node``."""
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                found.append(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def lookup(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def subset(spec: dict[str, Any], commit: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, method in OPERATIONS:
        paths.setdefault(path, {})[method] = strip(spec["paths"][path][method])
    components: dict[str, dict[str, Any]] = {}
    pending = refs_in(paths) + ROOTS
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)  # "#/components/<kind>/<name>"
        node = strip(lookup(spec, ref))
        components.setdefault(kind, {})[name] = node
        pending.extend(refs_in(node))
    components["securitySchemes"] = {"ApiKeyAuth": spec["components"]["securitySchemes"]["ApiKeyAuth"]}
    info = dict(spec["info"])
    info["x-poolgate-subset"] = {
        "source": "https://github.com/openai/openai-openapi", "commit": commit, "file": "openapi.yaml",
        "operations": [f"{m.upper()} {p}" for p, m in OPERATIONS],
    }
    return {
        "openapi": spec["openapi"], "info": info, "servers": spec["servers"], "security": spec["security"],
        "paths": paths, "components": {k: dict(sorted(v.items())) for k, v in sorted(components.items())},
    }


def main() -> None:
    source, commit = sys.argv[1], sys.argv[2]
    spec = yaml.safe_load(Path(source).read_text())
    out = subset(spec, commit)
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    n = sum(len(v) for v in out["components"].values())
    print(f"{OUT}: {len(OPERATIONS)} operations, {n} components, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
