"""The request schema published in the OpenAPI document (the route itself reads the raw body, and enforces the
same types and ranges: both come from ``gateway.api.fields``)."""

from __future__ import annotations

from typing import Any

from gateway.api.fields import CHAT_FIELDS, CONTENT_PARTS, MESSAGE_FIELDS

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"anyOf": [{"type": "string"}, CONTENT_PARTS.json_schema(), {"type": "null"}]},
        **{name: rule.json_schema() for name, rule in MESSAGE_FIELDS.items()},
    },
}

CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "a pool (routed) or a backend (direct)"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        **{name: rule.json_schema() for name, rule in CHAT_FIELDS.items()},
        "tool_choice": {},
        "poolgate": {
            "type": "object",
            "description": "routing extension: flags (weights and constraints), router choice, and the switches "
                           "of the pool's response cache and session affinity",
            "properties": {
                "flags": {"type": "object"},
                "router": {"type": "string"},
                "cache": {"type": ["boolean", "null"]},
                "affinity": {"type": ["boolean", "null"]},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": True,
}

CHAT_REQUEST_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}}},
    "parameters": [
        {
            "name": "X-Poolgate-Flags",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "routing flags as a JSON object (the body's poolgate.flags wins key by key)",
        }
    ],
}
