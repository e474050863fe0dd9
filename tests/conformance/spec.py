"""The pinned OpenAI subset as an oracle: the document (as the suite reads it), validators for its components,
and a reader of event-stream bodies.

The document is read with one normalisation, listed in the suite's allow-list: OpenAI's file is OpenAPI 3.1 but
still marks 21 schemas ``nullable: true`` (a 3.0 keyword that 3.1's JSON Schema ignores), among them a stream
chunk's ``finish_reason`` and ``usage`` that OpenAI itself sends as null in every chunk but the last. Read
literally, OpenAI's own answers would fail; read as the 3.0 keyword means, null is allowed there.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SUBSET_PATH = Path(__file__).parent / "openai-openapi-subset.json"
_URI = "urn:poolgate:openai-openapi-subset"


def nullable_as_31(node: Any) -> Any:
    """``node`` with every ``nullable: true`` schema rewritten as ``anyOf: [<schema>, {"type": "null"}]``."""
    if isinstance(node, list):
        return [nullable_as_31(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: nullable_as_31(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        keep = {k: out.pop(k) for k in ("description", "default", "deprecated") if k in out}
        return {**keep, "anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _document() -> dict[str, Any]:
    return nullable_as_31(orjson.loads(SUBSET_PATH.read_bytes()))


def document() -> dict[str, Any]:
    """The subset as the suite reads it (a fresh copy: callers may constrain it)."""
    return copy.deepcopy(_document())


def source_commit() -> str:
    return str(_document()["info"]["x-poolgate-subset"]["commit"])


@functools.cache
def validator(component: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<component>``, its ``$ref``s resolved within the subset."""
    resource = Resource.from_contents(_document(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_URI, resource)
    return Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{component}"}, registry=registry)


def violations(component: str, instance: Any) -> list[str]:
    """Why ``instance`` is not a valid ``component`` (empty when it is): each as 'path: message'."""
    out = []
    for err in validator(component).iter_errors(instance):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: {err.message[:300]}")
    return out


def sse_events(body: bytes) -> tuple[list[Any], bool]:
    """The JSON payloads of an event stream's ``data:`` events, and whether it ended with ``data: [DONE]``."""
    events: list[Any] = []
    done = False
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:"))
        if not data:
            continue
        if data == b"[DONE]":
            done = True
            continue
        events.append(orjson.loads(data))
    return events, done
