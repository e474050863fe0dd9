"""The judge's rubric: the one prompt the gateway sends a judge model, and how its reply is read.

The prompt (documented in docs/closed-loop.md, "The judge") holds the question and the answer between tags, so a
judge (a real model, or the replay backend's ``replay-judge``) can find them; the reply is one JSON object
``{"score": <number in [0, 1]> | null, "reason": "..."}``. ``score: null`` means the judge cannot tell; the
gateway then writes no label (an honest gap, never a guess).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

RUBRIC = """You are grading one answer to a question. Judge only correctness and completeness:
- score 1.0: the final answer is correct and the reasoning supports it;
- score 0.5: partly correct (a right method with a slip, or a right answer with wrong reasoning);
- score 0.0: wrong, missing, or a refusal.
If you cannot tell (you do not know the right answer), use null.
Reply with one JSON object and nothing else: {"score": <1.0 | 0.5 | 0.0 | null>, "reason": "<one sentence>"}"""

_QUESTION = re.compile(r"<question>\n(.*?)\n</question>", re.DOTALL)
_ANSWER = re.compile(r"<answer>\n(.*?)\n</answer>", re.DOTALL)


def judge_prompt(question: str, answer: str) -> str:
    """The user message sent to the judge for (question, answer)."""
    return f"{RUBRIC}\n\n<question>\n{question}\n</question>\n\n<answer>\n{answer}\n</answer>"


def parse_judge_prompt(prompt: str) -> tuple[str, str] | None:
    """(question, answer) from a prompt made by :func:`judge_prompt`, or None when it is not one."""
    q, a = _QUESTION.search(prompt), _ANSWER.search(prompt)
    return (q.group(1), a.group(1)) if q and a else None


@dataclass(frozen=True)
class Verdict:
    """What a judge said: ``score`` in [0, 1], or None when it could not judge; ``reason`` its sentence."""

    score: float | None
    reason: str


class VerdictError(ValueError):
    """The judge's reply is not the rubric's JSON object."""


def parse_verdict(text: str) -> Verdict:
    """Read a judge's reply (the first ``{...}`` in it, so a model's stray words around it are tolerated)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise VerdictError(f"no JSON object in the judge's reply {text[:200]!r}")
    try:
        data = orjson.loads(text[start:end + 1])
    except orjson.JSONDecodeError as exc:
        raise VerdictError(f"the judge's reply is not JSON ({exc})") from None
    if not isinstance(data, dict) or "score" not in data:
        raise VerdictError("the judge's reply has no 'score'")
    score, reason = data["score"], str(data.get("reason", ""))[:500]
    if score is None:
        return Verdict(None, reason)
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise VerdictError(f"the judge's score {score!r} is not a number in [0, 1]")
    return Verdict(float(score), reason)
