"""Running schemathesis against the pinned OpenAI subset and tallying its verdicts, check by check.

Every generated case is sent once, with the master key as explicit auth (so ``ignored_auth`` probes what happens
without it); then each check runs on its own, so the totals say which check failed how often. A failure that
matches an entry of the allow-list (``tests.conformance.deviations``) is counted under that entry, not as a
failure; what is left is a real finding.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks as st_checks

from tests.conformance import spec

#: The checks of a stateless run that look at one response (the stateful and timing ones are left out).
CHECKS: list[Callable[..., Any]] = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
    st_checks.positive_data_acceptance,
    st_checks.ignored_auth,
]
#: Our own check on streamed answers, which schemathesis does not parse: every chunk a valid
#: ``CreateChatCompletionStreamResponse``, the stream ended by ``[DONE]``.
STREAM_CHECK = "stream_chunk_conformance"


@dataclass
class Finding:
    check: str
    title: str
    message: str
    label: str  # "POST /chat/completions positive"
    request: str  # what was sent, abridged
    status: int
    response: str  # what came back, abridged


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)  # per "operation mode"
    statuses: Counter[str] = field(default_factory=Counter)  # per "operation status"
    passed: Counter[str] = field(default_factory=Counter)  # per check
    failed: Counter[str] = field(default_factory=Counter)  # per check, unexplained
    allowed: Counter[str] = field(default_factory=Counter)  # per deviation name
    unsendable: int = 0
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"cases: {sum(self.cases.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(self.cases.items()))})"
                 f"; unsendable by the HTTP client: {self.unsendable}",
                 f"statuses: {dict(sorted(self.statuses.items()))}",
                 f"failures by check (unexplained): {dict(sorted(self.failed.items())) or 'none'}",
                 f"allowed deviations: {dict(sorted(self.allowed.items())) or 'none'}",
                 f"checks passed: {dict(sorted(self.passed.items()))}"]
        return "\n".join(lines)

    def examples(self, per_check: int = int(os.environ.get("POOLGATE_CONFORMANCE_SHOW", "2"))) -> str:
        shown: Counter[str] = Counter()
        out = []
        for f in self.findings:
            if shown[f.check] < per_check:
                shown[f.check] += 1
                out.append(f"[{f.check}] {f.label}: {f.title}\n  sent: {f.request}\n  got {f.status}: {f.response}"
                           f"\n  {f.message[:400]}")
        return "\n".join(out)


Allow = Callable[[str, Any, Any, str], str | None]


def header(response: Any, name: str) -> str:
    """A header of a schemathesis response (whose values are lists), or ''."""
    values = {k.lower(): v for k, v in response.headers.items()}.get(name.lower())
    return str(values[0]) if values else ""


def failures_of(exc: BaseException) -> list[Any]:
    """The failures a check raised: one, or a group of them."""
    group = getattr(exc, "exceptions", None)
    return [f for e in group for f in failures_of(e)] if group else [exc]


def run_operation(operation: Any, mode: Any, base_url: str, auth: dict[str, str], max_examples: int,
                  tally: Tally, allow: Allow, prepare: Callable[[Any], Any] | None = None) -> None:
    """``max_examples`` cases of one operation in one generation mode, seeded and derandomized."""
    session = requests.Session()
    label = f"{operation.label} {mode.value}"
    strategy = operation.as_strategy(generation_mode=mode)
    if prepare is not None:
        strategy = strategy.map(prepare)

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        try:  # explicit auth: ignored_auth knows it is the real key, and probes without it
            response = case.call(base_url=base_url, session=session, headers=auth, timeout=30)
        except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
            tally.unsendable += 1  # the HTTP client itself refuses such a request
            return
        tally.cases[label] += 1
        tally.statuses[f"{operation.label} {response.status_code}"] += 1
        streamed = header(response, "content-type").startswith("text/event-stream")
        for check in CHECKS:
            if streamed and check is st_checks.response_schema_conformance:
                continue  # schemathesis may hold a partial read of an event stream: checked on a full one below
            try:
                case.validate_response(response, checks=[check], headers=auth, transport_kwargs={"base_url": base_url})
            except (AssertionError, st_checks.FailureGroup) as exc:
                for failure in failures_of(exc):
                    record(tally, allow, check.__name__, failure, case, response, label)
            else:
                tally.passed[check.__name__] += 1
        if streamed:
            # schemathesis 4 can hand back a stream cut after a few KB (measured: 5,084 of 15,564 bytes, the row
            # "ok" and the same request re-sent with httpx whole and valid), so the stream is checked on a full read
            full = httpx.post(base_url + case.formatted_path, json=case.body, headers=auth, timeout=30)
            problems = stream_problems(full.content)
            if problems:
                fake = AssertionError("\n".join(problems[:5]))
                fake.title = "Stream chunk does not conform"  # type: ignore[attr-defined]
                record(tally, allow, STREAM_CHECK, fake, case, response, label)
            else:
                tally.passed[STREAM_CHECK] += 1

    with contextlib.suppress(Unsatisfiable):  # e.g. no negative case for an operation without parameters
        run()


def record(tally: Tally, allow: Allow, check: str, failure: Any, case: Any, response: Any,
           label: str) -> None:
    title = str(getattr(failure, "title", "") or type(failure).__name__)
    message = str(getattr(failure, "message", "") or failure)
    deviation = allow(check, case, response, f"{title}\n{message}")
    if deviation is not None:
        tally.allowed[deviation] += 1
        return
    tally.failed[check] += 1
    tally.findings.append(Finding(check, title, message, label, f"{case.method} {case.formatted_path} "
                                  f"{case.body!r:.300}", response.status_code, response.text[:300]))


def stream_problems(body: bytes) -> list[str]:
    """What is wrong with a streamed chat completion, by the spec: chunk by chunk, and the ``[DONE]`` end."""
    try:
        events, done = spec.sse_events(body)
    except ValueError as exc:
        return [f"an event is not JSON: {exc}"]
    problems = [f"chunk {i}: {v}" for i, e in enumerate(events)
                for v in spec.violations("CreateChatCompletionStreamResponse", e)]
    return problems + ([] if done else ["the stream did not end with data: [DONE]"])


def load_schema(constrain: Callable[[dict[str, Any]], None], with_security: bool = True) -> Any:
    """The subset, constrained by ``constrain`` (which edits the document in place), loaded by schemathesis;
    ``with_security=False`` drops the security scheme (no Authorization header is generated, or negated)."""
    doc = spec.document()
    constrain(doc)
    if not with_security:
        doc.pop("security", None)
    return schemathesis.openapi.from_dict(doc)


def operations(schema: Any, served: Iterable[str]) -> list[Any]:
    wanted = set(served)
    return [op for op in (r.ok() for r in schema.get_all_operations()) if op.label in wanted]
