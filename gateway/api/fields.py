"""The chat request fields poolgate publishes, as one table read twice: by the OpenAPI document
(``gateway.api.schema``) and by the request check (``gateway.api.request``), so that what the gateway documents is
what it enforces, with a 400 naming the param.

Types and ranges are OpenAI's (its OpenAPI document), but for an upper bound on the token limits that keeps the
limiters' figures exact; null means the field's default, as it does for most of OpenAI's optional fields. Fields
not in the table are not checked: they pass to the backend untouched, and its verdict is relayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import GatewayError

Kind = Literal["number", "integer", "boolean", "string", "object", "array"]
_ARTICLE = {"integer": "an integer", "array": "an array", "object": "an object"}


def json_type(value: Any) -> str:
    """The JSON type name of a parsed JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


@dataclass(frozen=True)
class FieldRule:
    """One field: its JSON type, inclusive bounds for numbers, and the rules of its items or properties."""

    kind: Kind
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = True
    items: FieldRule | None = None
    properties: dict[str, FieldRule] = field(default_factory=dict)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": [self.kind, "null"] if self.nullable else self.kind}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.items is not None:
            schema["items"] = self.items.json_schema()
        if self.properties:
            schema["properties"] = {k: v.json_schema() for k, v in self.properties.items()}
        return schema

    def check(self, param: str, value: Any) -> None:
        """Raise a 400 naming ``param`` (``stream_options.include_usage``, ``tools[2]``) when ``value`` breaks
        this rule."""
        got = json_type(value)
        if got == "null" and self.nullable:
            return
        # an integer is a number; a number is never an integer, not even 3.0 (OpenAI refuses it too, and counts
        # reach the limiters as exact integers)
        if got != self.kind and not (self.kind == "number" and got == "integer"):
            expected = _ARTICLE.get(self.kind, f"a {self.kind}")
            raise GatewayError(400, f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                               param=param, code="invalid_value")
        self._check_range(param, value)
        if self.items is not None:
            for i, item in enumerate(value):
                self.items.check(f"{param}[{i}]", item)
        for name, rule in self.properties.items():
            if name in value:
                rule.check(f"{param}.{name}", value[name])

    def _check_range(self, param: str, value: Any) -> None:
        what = "integer" if self.kind == "integer" else "decimal"
        if self.minimum is not None and value < self.minimum:
            raise GatewayError(400, f"Invalid '{param}': {what} below minimum value. Expected a value >= "
                               f"{_bound(self.minimum)}, but got {_shown(value)} instead.", param=param,
                               code="invalid_value")
        if self.maximum is not None and value > self.maximum:
            raise GatewayError(400, f"Invalid '{param}': {what} above maximum value. Expected a value <= "
                               f"{_bound(self.maximum)}, but got {_shown(value)} instead.", param=param,
                               code="invalid_value")


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: Largest max_tokens / max_completion_tokens: above every model's output limit, and small enough that the limiter's
#: token and cost estimates stay exact integers in Redis (``gateway.limits.base``). OpenAI's own bound on ``n``.
MAX_OUTPUT_TOKENS = 1_000_000
MAX_CHOICES = 128

_OBJECT_ITEMS = FieldRule("array", items=FieldRule("object", nullable=False))
#: A message's content given as parts: each part an object (``{"type": "text", "text": ...}``, ...).
CONTENT_PARTS = FieldRule("array", nullable=False, items=FieldRule("object", nullable=False))

#: The request body's fields beyond ``model``, ``messages`` and ``poolgate`` (checked in gateway.api.request).
CHAT_FIELDS: dict[str, FieldRule] = {
    "stream": FieldRule("boolean"),
    "stream_options": FieldRule("object", properties={"include_usage": FieldRule("boolean")}),
    "max_tokens": FieldRule("integer", minimum=1, maximum=MAX_OUTPUT_TOKENS),
    "max_completion_tokens": FieldRule("integer", minimum=1, maximum=MAX_OUTPUT_TOKENS),
    "n": FieldRule("integer", minimum=1, maximum=MAX_CHOICES),
    "temperature": FieldRule("number", minimum=0, maximum=2),
    "top_p": FieldRule("number", minimum=0, maximum=1),
    "presence_penalty": FieldRule("number", minimum=-2, maximum=2),
    "frequency_penalty": FieldRule("number", minimum=-2, maximum=2),
    "logprobs": FieldRule("boolean"),
    "top_logprobs": FieldRule("integer", minimum=0, maximum=20),
    "tools": _OBJECT_ITEMS,
    "response_format": FieldRule("object"),
}

#: A message's fields beyond ``role`` and ``content`` (whose rules are the request check's own).
MESSAGE_FIELDS: dict[str, FieldRule] = {
    "name": FieldRule("string"),
    "tool_call_id": FieldRule("string"),
    "tool_calls": _OBJECT_ITEMS,
}


def check_fields(rules: dict[str, FieldRule], body: dict[str, Any], prefix: str = "") -> None:
    """Check each field of ``body`` that ``rules`` publish; every other field is left alone."""
    for name, rule in rules.items():
        if name in body:
            rule.check(prefix + name, body[name])
