"""Recorded GSM8K answers of two real models, and lookup of the answer to replay for a prompt.

Source: RouteLLM's ``gsm8k_responses.csv`` (lm-sys/RouteLLM, Apache-2.0): 1,319 GSM8K prompts, each with
the answer text that ``mistralai/Mixtral-8x7B-Instruct-v0.1`` and ``gpt-4-1106-preview`` gave and whether
it was graded correct. A deterministic 300-prompt subset ships in ``sample/`` (see ``build_sample``) so a
fresh machine can replay real answers with no network; ``ReplayStore.load(csv)`` serves the full file.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from gateway.replay.nearest import NearestIndex

#: served model name -> the column name in the RouteLLM CSV (the model that recorded the answers).
MODEL_SOURCES: dict[str, str] = {
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "gpt-4-1106": "gpt-4-1106-preview",
}
#: the judge model the replay backend serves (``/judge/v1/chat/completions``): grades an answer by the record's
#: real correctness; "judge" is its alias
JUDGE_MODEL = "replay-judge"
JUDGE_ALIASES = frozenset({JUDGE_MODEL, "judge"})
CHEAP_MODEL = "mixtral-8x7b"
STRONG_MODEL = "gpt-4-1106"
#: other names a client may use for a served model.
MODEL_ALIASES: dict[str, str] = {
    "cheap": CHEAP_MODEL,
    "strong": STRONG_MODEL,
    **{source: name for name, source in MODEL_SOURCES.items()},
}

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_PATH = SAMPLE_DIR / "gsm8k_sample.jsonl"
SOURCE_REPO = "https://github.com/lm-sys/RouteLLM"


def normalize_prompt(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends (the exact-match key)."""
    return " ".join(text.split())


@dataclass(frozen=True)
class ReplayRecord:
    """One recorded prompt: each served model's answer text and whether the source graded it correct."""

    prompt: str
    answers: dict[str, str]
    correct: dict[str, bool]
    source_index: int  # 0-based data row in the source CSV


class PromptMatch(NamedTuple):
    """Which recorded prompt answers a query: its row in the store, "exact"/"nearest", cosine similarity."""

    row: int
    kind: str
    similarity: float


class ReplayMatch(NamedTuple):
    """The answer to replay for (model, prompt)."""

    text: str
    match_kind: str  # "exact" | "nearest"
    similarity: float
    matched_prompt: str


class UnknownModelError(LookupError):
    """The model name is neither a served model nor an alias of one."""


class ReplayStore:
    """Recorded prompts with exact lookup (whitespace-normalized) and TF-IDF nearest-prompt fallback."""

    def __init__(self, records: list[ReplayRecord], source: str) -> None:
        if not records:
            raise ValueError(f"no recorded prompts in {source}")
        self.records = records
        self.source = source
        self._exact: dict[str, int] = {}
        for i, rec in enumerate(records):
            self._exact.setdefault(normalize_prompt(rec.prompt), i)  # first occurrence wins on duplicates
        self._index = NearestIndex([rec.prompt for rec in records])

    @classmethod
    def load(cls, path: Path | str | None = None) -> ReplayStore:
        """Load the packaged sample (``path`` None), a sample-format ``.jsonl``, or a GSM8K responses CSV.

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file of the wrong shape.
        """
        file = SAMPLE_PATH if path is None else Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"replay data file not found: {file}")
        records = read_sample(file) if file.suffix == ".jsonl" else read_responses_csv(file)
        return cls(records, str(file))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def models(self) -> tuple[str, ...]:
        """Served model names, cheap first."""
        return tuple(MODEL_SOURCES)

    def resolve(self, model: str) -> str | None:
        """The served name for ``model`` (a served name or an alias), or None when it is unknown."""
        if model in MODEL_SOURCES:
            return model
        return MODEL_ALIASES.get(model)

    def match(self, prompt: str) -> PromptMatch:
        """The recorded prompt equal to ``prompt`` after whitespace normalization, else the most similar."""
        exact = self._exact.get(normalize_prompt(prompt))
        if exact is not None:
            return PromptMatch(exact, "exact", 1.0)
        index, similarity = self._index.nearest(prompt)
        return PromptMatch(index, "nearest", similarity)

    def grade(self, question: str, answer: str) -> tuple[bool | None, str]:
        """Whether ``answer`` to ``question`` is correct, by the source's grading: ``(correct, reason)``.

        Known only when the question is a recorded prompt (whitespace-normalized exact match) and the answer is,
        the same way, one of the answers recorded for it; otherwise ``(None, reason)``: the judge cannot tell
        (an answer to a nearest-matched prompt, a truncated answer, any other text)."""
        row = self._exact.get(normalize_prompt(question))
        if row is None:
            return None, "the question is not one of the recorded prompts"
        record = self.records[row]
        wanted = normalize_prompt(answer)
        for model, text in record.answers.items():
            if normalize_prompt(text) == wanted:
                verdict = "correct" if record.correct[model] else "wrong"
                return record.correct[model], f"recorded answer of {model}, graded {verdict} by the source"
        return None, "the answer is not one recorded for this question"

    def answer(self, model: str, prompt: str) -> ReplayMatch:
        """The answer ``model`` recorded for ``prompt`` (or for the nearest recorded prompt)."""
        name = self.resolve(model)
        if name is None:
            raise UnknownModelError(f"unknown replay model {model!r}; served: {', '.join(self.models)}")
        found = self.match(prompt)
        record = self.records[found.row]
        return ReplayMatch(record.answers[name], found.kind, found.similarity, record.prompt)


def _parse_bool(value: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"{where}: expected True/False, got {value!r}")


def read_responses_csv(path: Path) -> list[ReplayRecord]:
    """Read a RouteLLM GSM8K responses CSV (``prompt``, ``<model>``, ``<model>_response`` columns)."""
    csv.field_size_limit(sys.maxsize)  # answer texts can exceed the 128 KiB default
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = ["prompt"] + [c for s in MODEL_SOURCES.values() for c in (s, f"{s}_response")]
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a GSM8K responses CSV, missing columns {missing}")
        return [
            ReplayRecord(
                prompt=row["prompt"],
                answers={name: row[f"{src}_response"] for name, src in MODEL_SOURCES.items()},
                correct={
                    name: _parse_bool(row[src], f"{path} row {i + 2} column {src!r}")
                    for name, src in MODEL_SOURCES.items()
                },
                source_index=i,
            )
            for i, row in enumerate(reader)
        ]


def read_sample(path: Path) -> list[ReplayRecord]:
    """Read the sample format: one JSON object per line ``{prompt, answers, correct, source_index}``."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                records.append(
                    ReplayRecord(
                        prompt=str(row["prompt"]),
                        answers={m: str(row["answers"][m]) for m in MODEL_SOURCES},
                        correct={m: bool(row["correct"][m]) for m in MODEL_SOURCES},
                        source_index=int(row.get("source_index", line_no - 1)),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path} line {line_no}: not a replay sample row ({exc!r})") from exc
    return records


def read_contaminated(path: Path) -> set[str]:
    """Whitespace-normalized ``eval_prompt`` values of a RouteLLM ``contaminated_prompts.jsonl``."""
    with path.open(encoding="utf-8") as fh:
        return {normalize_prompt(json.loads(line)["eval_prompt"]) for line in fh if line.strip()}


def build_sample(csv_path: Path | str, out_path: Path | str, n: int = 300, seed: int = 0) -> int:
    """Write a deterministic ``n``-prompt sample of a RouteLLM GSM8K CSV; return the number of rows.

    Drops the prompts in ``contaminated_prompts.jsonl`` beside the CSV, picks ``n`` of the rest with
    ``random.Random(seed).sample`` (kept in source order), and writes beside ``out_path`` a copy of the
    source's ``LICENSE`` (found in the CSV's grandparent, RouteLLM's layout, with ``COMMIT``) and an
    ``ATTRIBUTION.md`` saying what was sampled and how. Texts are copied verbatim.
    """
    csv_path, out_path = Path(csv_path), Path(out_path)
    source_root = csv_path.parent.parent
    license_file, commit_file = source_root / "LICENSE", source_root / "COMMIT"
    for required in (license_file, commit_file):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is needed: the license and commit travel with the sample")
    records = read_responses_csv(csv_path)
    contaminated = read_contaminated(csv_path.parent / "contaminated_prompts.jsonl")
    eligible = [r for r in records if normalize_prompt(r.prompt) not in contaminated]
    if not 0 < n <= len(eligible):
        raise ValueError(f"n must be in 1..{len(eligible)}, got {n}")
    chosen = sorted(random.Random(seed).sample(range(len(eligible)), n))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8", newline="\n") as fh:
        for i in chosen:
            rec = eligible[i]
            row = {
                "prompt": rec.prompt,
                "answers": rec.answers,
                "correct": rec.correct,
                "source_index": rec.source_index,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    shutil.copyfile(license_file, out_path.parent / "LICENSE")
    attribution = _attribution_text(
        out_path.name, commit_file.read_text().strip(), len(records), len(records) - len(eligible), n, seed
    )
    (out_path.parent / "ATTRIBUTION.md").write_text(attribution, encoding="utf-8")
    return n


def _attribution_text(sample_name: str, commit: str, total: int, dropped: int, n: int, seed: int) -> str:
    models = "\n".join(f"- `{name}`: answers recorded from `{src}`" for name, src in MODEL_SOURCES.items())
    return f"""# Attribution

`{sample_name}` is a **subset** of `gsm8k/gsm8k_responses.csv` from
[lm-sys/RouteLLM]({SOURCE_REPO}) at commit `{commit}`,
licensed under the Apache License, Version 2.0; the full license text is in `LICENSE` beside this file.

## What it holds
{n} of the source's {total} GSM8K test prompts, each with the answer text that two models gave
(as recorded by the RouteLLM project) and the source's True/False grading of that answer:

{models}

Each line is `{{"prompt", "answers": {{model: text}}, "correct": {{model: bool}}, "source_index"}}`, where
`source_index` is the 0-based data row of the prompt in the source CSV. Prompt and answer texts are
copied verbatim; only the model columns were renamed as above.

## How it was sampled
1. The {dropped} prompts listed in the source's `gsm8k/contaminated_prompts.jsonl` (field `eval_prompt`)
   were dropped, leaving {total - dropped}.
2. `random.Random({seed}).sample` chose {n} of those; rows keep the source order.

Rebuild: `gateway.replay.data.build_sample(csv_path, out_path, n={n}, seed={seed})`.

## Upstream data
The questions are from the GSM8K test set (Cobbe et al., 2021, "Training Verifiers to Solve Math Word
Problems", github.com/openai/grade-school-math, MIT License). The answers were generated by
`gpt-4-1106-preview` (OpenAI) and `Mixtral-8x7B-Instruct-v0.1` (Mistral AI) for RouteLLM.
"""
