"""Token counting cannot stall the gateway: prompts of one long word (superlinear work for BPE: one 4 MB word
took 6.7 s of the event loop, eight at once stalled ``/health`` for 33 s) are admitted before any counting,
counted in a worker thread when moderate, and estimated from their size when huge.
"""

from __future__ import annotations

import asyncio
import random
import string
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows
from tests.procs import GatewayProcess

MASTER = "mk-test-master"
JSON = {"content-type": "application/json"}
HUGE_CHARS = 4_000_000  # under max_body_bytes (4 MiB) with the JSON around it
MODERATE_CHARS = 200_000  # over the inline bound, under the exact-count bound: counted in a worker thread


def one_word(n: int, seed: int = 0) -> str:
    """``n`` random letters and no space: one pre-tokenizer piece, the tokenizer's worst case."""
    return "".join(random.Random(seed).choices(string.ascii_letters, k=n))


def body_of(word: str) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": word}]}


def pool_yaml(url: str) -> str:
    return f"backends:\n{backend_yaml('cheap', url)}\npools:\n  - name: auto\n    members: [cheap]\n"


class CountingEncoding:
    """The real tokenizer, counting what it is asked to encode (and on which thread)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[tuple[int, str]] = []  # (characters, thread name)

    def encode(self, text: str, **kw: Any) -> list[int]:
        self.calls.append((len(text), threading.current_thread().name))
        return list(self.real.encode(text, **kw))


@pytest.fixture
def tokenizer_calls(monkeypatch: pytest.MonkeyPatch) -> CountingEncoding:
    """Every encode of the gateway's tokenizer (gateways started in this process: ``gateway`` fixture)."""
    import routers.pricing as pricing

    counting = CountingEncoding(pricing.encoding())
    monkeypatch.setattr(pricing, "encoding", lambda: counting)
    return counting


def test_health_answers_within_a_second_while_eight_4mb_one_word_prompts_are_in_flight(
    fake_backends: Any, tmp_path: Path
) -> None:
    """A real ``poolgate serve`` process (uvloop, httptools) under eight concurrent 4 MB prompts of one word;
    ``/health`` is polled from a thread of its own meanwhile."""
    from gateway.store import upgrade

    _, backend = fake_backends("cheap")
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(pool_yaml(backend.url))
    db = f"sqlite+aiosqlite:///{tmp_path}/gw.db"
    upgrade(db)
    bodies = [orjson.dumps(body_of(one_word(HUGE_CHARS, seed))) for seed in range(8)]
    bodies.append(orjson.dumps(body_of("\n" * 40_000)))  # text statistics once took 25 s on this one (a regex)
    latencies: list[float] = []
    attacking = threading.Event()

    def poll(url: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while attacking.is_set() or not latencies:
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

    async def attack(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", content=body, headers=JSON)
                                          for body in bodies))

    with GatewayProcess(pool_file, tmp_path, database_url=db) as gw:
        attacking.set()
        poller = threading.Thread(target=poll, args=(gw.url,))
        poller.start()
        try:
            answers = asyncio.run(attack(gw.url))
        finally:
            attacking.clear()
            poller.join(timeout=150)
        assert [r.status_code for r in answers] == [200] * 9, [r.text[:200] for r in answers]
        rows = wait_rows(db, 9, timeout_s=20)
    assert sorted(r["id"] for r in rows) == sorted(r.headers["x-poolgate-request-id"] for r in answers)
    assert len(latencies) >= 3 and max(latencies) < 1.0, f"/health took up to {max(latencies):.2f} s under attack"
    median = sorted(latencies)[len(latencies) // 2]
    print(f"\n8 x 4 MB one-word prompts + 40 000 newlines: 9/9 answered, 9/9 rows; /health polled {len(latencies)} "
          f"times meanwhile, max {max(latencies) * 1000:.0f} ms, median {median * 1000:.0f} ms")


def test_a_key_whose_rpm_is_spent_gets_429_without_any_tokenizing(
    fake_backends: Any, gateway: Any, tokenizer_calls: CountingEncoding
) -> None:
    _, backend = fake_backends("cheap")
    gw = gateway(pool_yaml(backend.url), auth_enabled=True, master_key=MASTER)
    admin = {"authorization": f"Bearer {MASTER}"}

    def new_key(rpm: int) -> dict[str, str]:
        made = httpx.post(f"{gw.url}/admin/keys", json={"name": "team", "rpm": rpm}, headers=admin)
        assert made.status_code == 201, made.text
        return {"authorization": f"Bearer {made.json()['secret']}"}

    def chat(key: dict[str, str], word: str) -> httpx.Response:
        return httpx.post(f"{gw.url}/v1/chat/completions", json=body_of(word), headers=key, timeout=60)

    spent = new_key(rpm=1)
    assert chat(spent, "2+2?").status_code == 200  # the key's one request this minute
    tokenizer_calls.calls.clear()
    took = []
    for word in (one_word(MODERATE_CHARS), one_word(HUGE_CHARS)):
        started = time.perf_counter()
        refused = chat(spent, word)
        took.append(time.perf_counter() - started)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert tokenizer_calls.calls == []  # refused before any counting: a spent key costs no tokenizer time
    print(f"\nspent key: 429 for 200 K / 4 M characters of one word in {took[0] * 1000:.0f} / {took[1] * 1000:.0f} ms "
          "(client and gateway together), 0 tokenizer calls")

    fresh = new_key(rpm=10)  # the control: the same prompts from a key with room are counted as designed
    assert chat(fresh, one_word(MODERATE_CHARS)).status_code == 200
    [thread] = [thread for chars, thread in tokenizer_calls.calls if chars == MODERATE_CHARS]
    assert thread not in ("MainThread", gw.thread.name)  # counted in a worker thread, not on the event loop
    counted = len(tokenizer_calls.calls)
    assert chat(fresh, one_word(HUGE_CHARS)).status_code == 200
    assert tokenizer_calls.calls[counted:] == []  # over the bound: estimated from its size, never tokenized


async def test_prompt_counts_are_exact_inline_exact_in_a_thread_or_estimated_past_the_bound(
    tokenizer_calls: CountingEncoding,
) -> None:
    from gateway.proxy.tokens import count_prompt_tokens_off_loop
    from routers.pricing import (
        EXACT_COUNT_MAX_CHARS,
        INLINE_COUNT_CHARS,
        count_prompt_tokens,
        estimate_prompt_tokens,
        quick_prompt_tokens,
    )

    small = [{"role": "user", "content": "what is 2+2?"}]
    moderate = [{"role": "user", "content": one_word(INLINE_COUNT_CHARS + 1)}]
    huge = [{"role": "system", "content": "be brief", "name": "x"},
            {"role": "user", "content": [{"type": "text", "text": "é" * (EXACT_COUNT_MAX_CHARS + 1)}]}]
    assert quick_prompt_tokens(small) == await count_prompt_tokens_off_loop(small)
    assert not quick_prompt_tokens(small).estimated and quick_prompt_tokens(small).tokens == count_prompt_tokens(small)
    assert quick_prompt_tokens(moderate).estimated  # admission never waits for a real count
    tokenizer_calls.calls.clear()
    exact = await count_prompt_tokens_off_loop(moderate)
    assert not exact.estimated and sorted(c for c, _ in tokenizer_calls.calls) == [4, INLINE_COUNT_CHARS + 1]
    assert {thread for _, thread in tokenizer_calls.calls} != {threading.current_thread().name}
    tokenizer_calls.calls.clear()
    estimate = await count_prompt_tokens_off_loop(huge)
    assert estimate.estimated and tokenizer_calls.calls == []
    # recipe overheads (3 + 3 per message + 1 for a name) plus UTF-8 bytes / 4 of each string, rounded up
    strings = ["system", "be brief", "x", "user", "é" * (EXACT_COUNT_MAX_CHARS + 1)]
    assert estimate.tokens == estimate_prompt_tokens(huge) == 3 + 2 * 3 + 1 + sum(
        -(-len(s.encode()) // 4) for s in strings)


def reference_text_stats(text: str) -> list[float]:
    """``routers.features.text_stats_one`` as it was before its work was bounded (the per-character loops)."""
    import re

    import numpy as np

    from routers.features import _CODE_HINTS, _MATH_HINTS

    n = max(len(text), 1)
    words = re.findall(r"\w+", text)
    n_words = max(len(words), 1)
    return [
        float(np.log1p(len(text))), float(np.log1p(len(words))), sum(len(w) for w in words) / n_words,
        len(re.findall(r"\d", text)) / n, sum(1 for c in text if c.isupper()) / n,
        sum(1 for c in text if not c.isalnum() and not c.isspace()) / n, float(np.log1p(text.count("\n"))),
        float(min(text.count("?"), 10)), float(sum(text.count(h) for h in _CODE_HINTS) > 0),
        float(min(sum(text.count(h) for h in _MATH_HINTS), 10)), float(bool(re.search(r"(?m)^\s*[A-D][.)]\s", text))),
    ]


def test_text_statistics_are_unchanged_up_to_their_bound_and_read_only_a_prefix_beyond() -> None:
    """Routers trained on the old statistics see the same values for every text up to the bound."""
    from routers.features import TEXT_STATS_MAX_CHARS, text_stats_one

    rng = random.Random(7)
    alphabet = [*"abcXYZ019 _\n\t\r\x0b\x0c\x1c\x85\u2028\u00a0.,;:?!(){}=+$\\", "A) ", "\nB. ", "ǅ", "Ⅷ", "²",
                "٣", "\U0001d400", *(chr(rng.randrange(0x80, 0x3000)) for _ in range(100))]
    texts = ["", "what is 2+2?", "Pick one:\n\n  A) four\n  B) five", "\n" * 2000 + "C) x", "a" * TEXT_STATS_MAX_CHARS]
    texts += ["".join(rng.choices(alphabet, k=rng.randrange(1, 80))) for _ in range(3000)]
    for text in texts:
        assert text_stats_one(text) == reference_text_stats(text), repr(text)
    prefix = "Is it A) or B)?\n" * (TEXT_STATS_MAX_CHARS // 16)
    huge = prefix + one_word(HUGE_CHARS)  # past the bound: the statistics of the prefix, lengths of the whole
    got, of_prefix = text_stats_one(huge), text_stats_one(prefix)
    assert got[0] == reference_text_stats(huge)[0] and got[2:6] == of_prefix[2:6] and got[7:] == of_prefix[7:]
    assert got[1] > of_prefix[1] and got[6] > of_prefix[6]  # words and newlines scaled to the whole length
