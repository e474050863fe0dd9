"""The request schema published in the OpenAPI document (the route itself reads the raw body)."""

from __future__ import annotations

from typing import Any

from gateway.api.request import MAX_CHOICES, MAX_OUTPUT_TOKENS

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": {"type": "string"},
    },
}

CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "a pool (routed) or a backend (direct)"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_OUTPUT_TOKENS},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_OUTPUT_TOKENS},
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_CHOICES},
        "temperature": {"type": "number"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {},
        "response_format": {"type": "object"},
        "poolgate": {
            "type": "object",
            "description": "routing extension: flags (weights and constraints) and router choice",
            "properties": {
                "flags": {"type": "object"},
                "router": {"type": "string"},
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
