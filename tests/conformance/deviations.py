"""The allow-list: where poolgate, its demo backend or the spec itself knowingly differ from the letter of OpenAI's
OpenAPI document, each with its reason.

``DEVIATIONS`` excuse schemathesis failures: one is excused only by an entry whose ``applies`` says so for that
very case and response (an undocumented status passes only with a valid OpenAI error body, say); every other
failure counts. ``READINGS`` are the ways the suite reads or constrains the document before generating anything;
they are listed here so that nothing the suite does to the oracle is implicit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from gateway.api.fields import CHAT_FIELDS
from gateway.api.schema import CHAT_REQUEST_SCHEMA
from tests.conformance import spec


@dataclass(frozen=True)
class Deviation:
    name: str
    check: str
    reason: str
    applies: Callable[[Any, Any], bool]  # (case, response)


def error_of(response: Any) -> dict[str, Any] | None:
    """The ``error`` object of a response whose body is a valid ``ErrorResponse``, else None."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if spec.violations("ErrorResponse", body):
        return None
    return body["error"]  # type: ignore[no-any-return]


#: Statuses poolgate answers with an OpenAI error body, though the spec lists only 200 (and 429 for chat).
ERROR_STATUSES = frozenset({400, 401, 403, 404, 408, 413, 415, 502, 503, 504})


def _documented_error(case: Any, response: Any) -> bool:
    return response.status_code in ERROR_STATUSES and error_of(response) is not None


def _backend_cannot_honour_n(case: Any, response: Any) -> bool:
    err = error_of(response)
    n = case.body.get("n") if isinstance(case.body, dict) else None
    return response.status_code == 400 and err is not None and err["param"] == "n" and n not in (None, 1)


@functools.cache
def _published() -> Draft202012Validator:
    return Draft202012Validator(CHAT_REQUEST_SCHEMA)


def published_violations(body: Any) -> list[str]:
    """Where a chat request breaks the schema poolgate itself publishes (``gateway/api/schema.py``): the top-level
    field of each violation ('' for the body as a whole)."""
    return [str(e.absolute_path[0]) if e.absolute_path else "" for e in _published().iter_errors(body)]


def _passed_to_lenient_backend(case: Any, response: Any) -> bool:
    return response.status_code == 200 and not published_violations(case.body)


def _stricter_published_constraint(case: Any, response: Any) -> bool:
    err = error_of(response)
    if response.status_code != 400 or err is None or not err["param"]:
        return False
    field = str(err["param"]).split(".")[0].split("[")[0]
    return field in published_violations(case.body)


def _integer_given_as_decimal(case: Any, response: Any) -> bool:
    err = error_of(response)
    if response.status_code != 400 or err is None or not isinstance(case.body, dict):
        return False
    rule, value = CHAT_FIELDS.get(str(err["param"])), case.body.get(str(err["param"]))
    return rule is not None and rule.kind == "integer" and isinstance(value, float)


DEVIATIONS: list[Deviation] = [
    Deviation(
        "error-statuses-not-in-spec", "status_code_conformance",
        "OpenAI's document lists only 200 (and 429 for chat completions), but OpenAI itself answers 400, 401, 403, "
        "404 and 5xx with an ErrorResponse body (its error-codes guide); so does poolgate, and only with a body "
        "that is a valid ErrorResponse (checked here).",
        _documented_error,
    ),
    Deviation(
        "passed-through-to-a-lenient-backend", "negative_data_rejection",
        "poolgate validates the fields it publishes (gateway/api/schema.py) and passes every other field to the "
        "backend untouched, whose verdict it relays; the demo's replay backend ignores what it does not use "
        "(response_format, tools, logprobs, ...) and answers. Excused only for a body valid by poolgate's schema.",
        _passed_to_lenient_backend,
    ),
    Deviation(
        "stricter-published-constraint", "positive_data_acceptance",
        "poolgate publishes (and enforces) a few bounds the spec leaves open: max_tokens and max_completion_tokens "
        "in 1..1 000 000 (OpenAI refuses 0 too; the upper bound keeps the limiters' figures exact integers). "
        "Excused only for a 400 that names the field whose value breaks poolgate's published schema.",
        _stricter_published_constraint,
    ),
    Deviation(
        "integer-given-as-decimal", "positive_data_acceptance",
        "JSON Schema counts 3.0 as an integer, so schemathesis sends it for integer fields; poolgate refuses a "
        "decimal where it publishes an integer (max_tokens, n, top_logprobs, ...), as OpenAI's API does, and so "
        "that token counts reach the limiters as exact integers. Excused only for a 400 naming that field.",
        _integer_given_as_decimal,
    ),
    Deviation(
        "replay-backend-answers-one-choice", "positive_data_acceptance",
        "The demo's replay backend has one recorded answer per prompt and model, so it refuses n > 1 with a 400 "
        "naming the param; poolgate relays that error as the backend sent it (a real backend honours n).",
        _backend_cannot_honour_n,
    ),
]

READINGS: list[tuple[str, str]] = [
    ("nullable-as-3.0-meant-it",
     "The document is OpenAPI 3.1 but marks 21 schemas `nullable: true`, a 3.0 keyword 3.1 ignores (a stream "
     "chunk's finish_reason and usage among them, which OpenAI sends as null). Read as `anyOf [schema, null]`."),
    ("model-from-the-demo",
     "The request's `model` is drawn from the demo's names (auto, mixtral-8x7b, gpt-4-1106) instead of any string "
     "or OpenAI's own model ids, which a gateway rightly answers with 404."),
    ("a-question-to-answer",
     "A positive case gets a final user message with text when it has none (the replay backend answers only "
     "prompts it can match), so that most cases reach a 200 whose body is checked."),
    ("auth-probed-not-generated",
     "Cases carry the master key as explicit auth; `ignored_auth` then re-sends every answered case without a key "
     "and with a wrong one. Negative cases are drawn from the document without its security scheme, so that "
     "their negation is in the body, not in a missing header."),
]


def allowed(check: str, case: Any, response: Any, failure: str) -> str | None:
    """The name of the deviation that excuses this failure, or None."""
    for d in DEVIATIONS:
        if d.check == check and d.applies(case, response):
            return d.name
    return None
