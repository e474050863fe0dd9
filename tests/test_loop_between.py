"""The closed loop's target on a small scale, without timing: explored, judge-labelled logs of a pool serving
``cheapest`` train a cost-aware knn that the promote gate makes live, and on *new* prompts it answers better than
always-cheapest for less than always-strongest. The data has a signal a sentence embedding can see (the cheap model
is right on arithmetic and wrong on proofs, the strong one right on both), which GSM8K correctness barely has: the
replay benchmark (``benchmarks/closed_loop.py``) is where the real data's limits show."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from sqlalchemy import insert

from gateway.loop.train import TrainRequest, policy_choice, train_from_logs
from gateway.pools import parse_pool_file
from gateway.routing.artifacts import ArtifactStore, load_version
from gateway.routing.service import member_cards
from gateway.store import Feedback, Request, make_engine, upgrade
from routers.objective import Calibration, Flags, choose_batch
from training.features import Featurizer

NOW = datetime.now(UTC)
# lambda 100 per USD: a strong call (20 prompt + 40 completion tokens, $0.0014) costs 0.14 of quality, worth it
# only where the cheap model is wrong
POOL = parse_pool_file("""
backends:
  - {name: cheap, base_url: "http://127.0.0.1:9/v1", model: c, input_price: 0.6, output_price: 0.6}
  - {name: strong, base_url: "http://127.0.0.1:9/v1", model: s, input_price: 10, output_price: 30}
pools:
  - {name: auto, members: [cheap, strong], router: cheapest, objective: balanced, flags: {cost: 100},
     exploration: {policy: epsilon, share: 0.5}}
""")
EASY = "What is {a} plus {b}? Answer with the number."
HARD = "Prove that there are infinitely many primes of the form {a}k + {b}, citing Dirichlet's theorem."


def prompts(n: int, offset: int) -> list[tuple[str, bool]]:
    """(prompt, hard?) pairs, alternating easy and hard."""
    return [((HARD if i % 2 else EASY).format(a=i + offset, b=2 * i + 1 + offset), bool(i % 2)) for i in range(n)]


def truth(backend: str, hard: bool) -> float:
    return 1.0 if backend == "strong" or not hard else 0.0


async def seed_explored_logs(url: str, n: int, seed: int = 0) -> None:
    """``cheapest`` with epsilon 0.5 over two members: cheap with p 0.75, strong with p 0.25 (the logged
    propensities); each answer labelled by the judge with its true correctness."""
    await asyncio.to_thread(upgrade, url)
    rng = random.Random(seed)
    reqs, labels = [], []
    for i, (text, hard) in enumerate(prompts(n, offset=0)):
        explored = rng.random() < 0.5
        backend = rng.choice(["cheap", "strong"]) if explored else "cheap"
        prop = 0.75 if backend == "cheap" else 0.25
        rid = f"{i:06d}".ljust(32, "0")
        price = (0.6, 0.6) if backend == "cheap" else (10.0, 30.0)
        reqs.append({"id": rid, "created_at": NOW - timedelta(minutes=10) + timedelta(seconds=i), "pool": "auto",
                     "model_requested": "auto", "router": "cheapest", "propensity": prop,
                     "policy": "explore:epsilon" if explored else "router", "backend": backend, "status": "ok",
                     "http_status": 200, "prompt_tokens": 20, "completion_tokens": 40,
                     "cost_usd": (20 * price[0] + 40 * price[1]) / 1e6, "candidates": [], "attempts": [],
                     "prompt_text": text})
        labels.append({"request_id": rid, "score": truth(backend, hard), "source": "judge"})
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Request), reqs)
            await conn.execute(insert(Feedback), labels)
    finally:
        await engine.dispose()


async def test_a_cost_aware_learned_router_is_promoted_and_lands_between_cheapest_and_strongest(
        tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/log.db"
    await seed_explored_logs(url, 160)
    engine = make_engine(url)
    try:
        out = await train_from_logs(engine, ArtifactStore(engine, tmp_path / "art"), POOL,
                                    TrainRequest("knn", "auto", promote=True, test_size=0.5, encoder="minilm-static"),
                                    cache_dir=tmp_path / "emb")
    finally:
        await engine.dispose()
    assert out.promoted and out.record.status == "live", out.reason
    assert "the difference's lower bound is above 0" in out.reason
    diff = out.record.metrics["vs_serving"]
    assert diff["utility_diff_low"] > 0 and 0.3 < diff["disagreement"] < 0.7  # it departs from cheapest on half
    # measured on new prompts (never logged), each policy's truth known by construction
    router = load_version(out.record)
    fresh = prompts(60, offset=1000)
    feats = Featurizer(tmp_path / "emb", encoder="minilm-static").featurize([t for t, _ in fresh])
    cards = member_cards([POOL.backend("cheap"), POOL.backend("strong")], router)
    choice = choose_batch(router.predict(feats, cards), cards, Flags(cost=100.0), np.full(len(fresh), 20.0),
                          Calibration.of(router))
    names = [cards[j].name for j in choice]
    quality = np.mean([truth(b, hard) for b, (_, hard) in zip(names, fresh, strict=True)])
    cheapest_quality = np.mean([truth("cheap", hard) for _, hard in fresh])
    cost = {"cheap": (20 * 0.6 + 40 * 0.6) / 1e6, "strong": (20 * 10 + 40 * 30) / 1e6}
    assert quality > cheapest_quality + 0.3  # 1.0 vs 0.5 when it sends every proof to strong
    assert np.mean([cost[b] for b in names]) < 0.8 * cost["strong"]  # and the arithmetic to cheap

    # the gate decides on the cards the gateway gives the router (its calibration's output lengths: 40 tokens here);
    # the objective's 256-token default would price a strong call at $0.0079 instead of $0.0014, and at lambda 200
    # (0.28 vs 1.58 of quality for a proof the cheap model gets wrong) judge a policy that would never serve
    backends = [POOL.backend("cheap"), POOL.backend("strong")]
    events = SimpleNamespace(dataset=SimpleNamespace(features=feats, cards=[b.card() for b in backends],
                                                     prompt_tokens=np.full(len(fresh), 20.0)))
    served = policy_choice(router, events, Flags(cost=200.0), backends)  # type: ignore[arg-type]
    default_priced = policy_choice(router, events, Flags(cost=200.0))  # type: ignore[arg-type]
    hard = np.asarray([h for _, h in fresh])
    assert (served[hard] == 1).mean() > 0.8 and (default_priced == 0).all()
