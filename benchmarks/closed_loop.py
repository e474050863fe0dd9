"""The closed loop with no human in it, end to end on loopback: replay backend, judge, online router.

One command (from the repository root): ``python benchmarks/closed_loop.py`` (``--mode online|explore``,
``--rounds``, ``--per-round``, ``--eval``, ``--cost-weight``, ``--seed``). ``--mode explore`` serves ``cheapest``
with the pool's epsilon exploration instead and runs ``poolgate train --router knn --promote`` on the judge-labelled
logs before the held-out comparison (the promote gate decides, and says why).

What runs: the replay backend (``python -m gateway.replay``: two real models' recorded GSM8K answers, and the
``replay-judge`` that grades an answer by the source's real correctness) and a real ``poolgate serve`` over a pool
whose router is the online ``linucb`` (starting from nothing: at its prior it routes like ``cheapest``, plus
exploration from its confidence bonus) and whose judge scores every answer (``share: 1.0``) off the request path.
Recorded prompts go through the real ``openai`` client; the judge's labels reach the online router, which saves
and promotes a new version every ``POOLGATE_ONLINE_SAVE_EVERY`` labels (hot reload's version store).

Printed: per round of training traffic, the served mix, the judge's mean score and the cost per 100 requests;
then, on held-out prompts the router never saw, the learned router against always-cheapest and always-strongest
(router overrides on the same prompts), each scored by the judge. Quality here is the judge's score, which for
the replay judge is the source's grading of the served answer (so it is the real accuracy); cost is the gateway's
logged cost of the served calls; the judge's own calls are reported on their own line.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from gateway.replay.data import ReplayRecord, ReplayStore  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pool_yaml(replay_url: str, cost_weight: float, mode: str, share: float, pair_share: float = 0.0) -> str:
    # online: the linucb bandit explores by itself; explore: cheapest with epsilon exploration (not allowed under
    # quality-first, so balanced with the same cost weight), then `poolgate train --promote` learns a knn router
    routing = ("router: linucb\n    objective: quality-first" if mode == "online" else
               "router: cheapest\n    objective: balanced\n"
               f"    exploration: {{policy: epsilon, share: {share}, seed: 0}}")
    return f"""
backends:
  - {{name: mixtral-8x7b, base_url: "{replay_url}/mixtral-8x7b/v1", model: mixtral-8x7b,
     input_price: 0.6, output_price: 0.6}}
  - {{name: gpt-4-1106, base_url: "{replay_url}/gpt-4-1106/v1", model: gpt-4-1106,
     input_price: 10.0, output_price: 30.0}}
  - {{name: judge, base_url: "{replay_url}/judge/v1", model: replay-judge, input_price: 0.6, output_price: 0.6}}
pools:
  - name: auto
    members: [mixtral-8x7b, gpt-4-1106]
    {routing}
    flags: {{cost: {cost_weight}}}
    judge: {{backend: judge, share: 1.0, pair_share: {pair_share}}}
"""


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout_s} s")


def judged(db: Path, ids: list[str], timeout_s: float = 120.0) -> dict[str, float]:
    """The judge's score of each request id (waits until every one that will be scored is)."""
    deadline, scores = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT request_id, score FROM feedback WHERE source = 'judge'").fetchall()
        scores = {rid: s for rid, s in rows if rid in set(ids)}
        if len(scores) == len(ids):
            break
        time.sleep(0.2)
    return scores


def costs(db: Path, ids: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, cost_usd, backend FROM requests WHERE router != 'judge'").fetchall()
    wanted = set(ids)
    return {r[0]: r[1] for r in rows if r[0] in wanted}, {r[0]: r[2] for r in rows if r[0] in wanted}


def send(client: object, records: list[ReplayRecord], router: str | None = None) -> list[str]:
    ids = []
    extra = {"poolgate": {"router": router}} if router else None
    for rec in records:
        raw = client.chat.completions.with_raw_response.create(  # type: ignore[attr-defined]
            model="auto", messages=[{"role": "user", "content": rec.prompt}], extra_body=extra)
        ids.append(raw.headers["x-poolgate-request-id"])
    return ids


def summary(db: Path, ids: list[str]) -> tuple[float, float, int, dict[str, int]]:
    """(judge's mean score, USD per 100 requests, labels, served mix) of the requests ``ids``."""
    scores = judged(db, ids)
    cost, backend = costs(db, ids)
    mix: dict[str, int] = {}
    for rid in ids:
        mix[backend.get(rid, "?")] = mix.get(backend.get(rid, "?"), 0) + 1
    quality = sum(scores.values()) / max(1, len(scores))
    return quality, 100 * sum(cost.values()) / max(1, len(ids)), len(scores), mix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of training traffic")
    parser.add_argument("--per-round", type=int, default=50, help="requests per round")
    parser.add_argument("--eval", type=int, default=80, help="held-out prompts each policy answers at the end")
    parser.add_argument("--cost-weight", type=float, default=25.0, help="the pool's cost flag (quality per USD)")
    parser.add_argument("--save-every", type=int, default=25, help="labels between saved online versions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="GSM8K responses CSV or sample .jsonl for the replay backend "
                        "(default: the packaged 300-prompt sample; the full RouteLLM CSV has 1319)")
    parser.add_argument("--share", type=float, default=0.3, help="explore mode: the pool's epsilon share")
    parser.add_argument("--pair-share", type=float, default=0.0,
                        help="explore mode: the judge's pair_share (explored requests also get the router's top "
                             "choice answered and judged: an observed cell for the other backend)")
    parser.add_argument("--test-size", type=float, default=0.25,
                        help="explore mode: poolgate train's time-ordered holdout share of the labelled logs")
    parser.add_argument("--mode", choices=["online", "explore"], default="online",
                        help="online: the linucb router learns from the judge's labels as they arrive; explore: "
                             "cheapest with 30%% epsilon exploration, then poolgate train --router knn --promote")
    args = parser.parse_args()
    # why: the openai client is a benchmark dependency only (the SDK and tests use httpx)
    from openai import OpenAI

    records = ReplayStore.load(args.data).records[:]
    random.Random(args.seed).shuffle(records)
    n_train = args.rounds * args.per_round
    if n_train + args.eval > len(records):
        raise SystemExit(f"{n_train} + {args.eval} prompts asked, the sample holds {len(records)}")
    train, held_out = records[:n_train], records[n_train:n_train + args.eval]
    work = Path(tempfile.mkdtemp(prefix="poolgate-closed-loop-"))
    db = work / "log.db"
    replay_port, gw_port = free_port(), free_port()
    replay_url, gw_url = f"http://127.0.0.1:{replay_port}", f"http://127.0.0.1:{gw_port}"
    (work / "pool.yaml").write_text(pool_yaml(replay_url, args.cost_weight, args.mode, args.share, args.pair_share))
    env = {**os.environ, "PYTHONPATH": str(REPO), "POOLGATE_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
           "POOLGATE_POOL_FILE": str(work / "pool.yaml"), "POOLGATE_STORE_PROMPTS": "true",
           "POOLGATE_ARTIFACTS_DIR": str(work / "artifacts"), "POOLGATE_ONLINE_SAVE_EVERY": str(args.save_every),
           "POOLGATE_SPOOL_DIR": str(work / "spool"), "POOLGATE_LOG_FLUSH_INTERVAL_S": "0.05",
           "POOLGATE_ROUTER_RELOAD_INTERVAL_S": "1", "POOLGATE_EMBEDDING_CACHE_DIR": str(work / "emb")}
    data = ["--data", str(Path(args.data).resolve())] if args.data else []
    procs = [subprocess.Popen([sys.executable, "-m", "gateway.replay", "--host", "127.0.0.1", "--port",
                               str(replay_port), *data], env=env, cwd=work)]
    try:
        wait_http(f"{replay_url}/health", procs[0])
        procs.append(subprocess.Popen([sys.executable, "-c", "from gateway.cli import main; main()", "serve",
                                       "--host", "127.0.0.1", "--port", str(gw_port)], env=env, cwd=work))
        wait_http(f"{gw_url}/health", procs[1])
        client = OpenAI(base_url=f"{gw_url}/v1", api_key="unused", max_retries=0, timeout=60)
        run(client, db, train, held_out, args, env, gw_url)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=20)


def train_and_promote(env: dict[str, str], gw_url: str, test_size: float) -> None:
    """`poolgate train --router knn --promote` on the judge-labelled, explored logs; wait for the hot reload."""
    cmd = [sys.executable, "-c", "from gateway.cli import main; main()", "train", "--router", "knn", "--pool", "auto",
           "--since", "1h", "--test-size", str(test_size), "--promote"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(f"$ poolgate train --router knn --pool auto --since 1h --test-size {test_size} --promote")
    print("\n".join("  " + line for line in (out.stdout + out.stderr).strip().splitlines()))
    if "promotion:  LIVE" not in out.stdout:
        return  # the gate refused (it says why above): the pool keeps serving cheapest with exploration
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        models = httpx.get(f"{gw_url}/v1/models", timeout=10).json()["data"]
        if next(m for m in models if m["id"] == "auto")["poolgate"]["router_version"] != "builtin":
            return
        time.sleep(0.5)
    print("  (no promoted version is being served)")


def run(client: object, db: Path, train: list[ReplayRecord], held_out: list[ReplayRecord],
        args: argparse.Namespace, env: dict[str, str], gw_url: str) -> None:
    what = ("router linucb (online, from nothing), quality-first" if args.mode == "online" else
            f"router cheapest with epsilon exploration (share {args.share}), balanced")
    print(f"pool auto: {what}, cost weight {args.cost_weight}/USD; judge replay-judge on every answer; "
          f"{len(train)} training prompts, {len(held_out)} held out")
    print(f"{'requests':>9} {'judge quality':>13} {'$ / 100 req':>11} {'labels':>6}  mix (mixtral / gpt-4)  version")
    seen = 0
    for r in range(args.rounds):
        batch = train[r * args.per_round:(r + 1) * args.per_round]
        ids = send(client, batch)
        quality, cost100, labels, mix = summary(db, ids)
        seen += len(batch)
        version = live_version(db)
        print(f"{seen:>9} {quality:>13.3f} {cost100:>11.4f} {labels:>6}  "
              f"{mix.get('mixtral-8x7b', 0):>7} / {mix.get('gpt-4-1106', 0):<12} {version}")
    if args.mode == "explore":
        train_and_promote(env, gw_url, args.test_size)
    print(f"held out ({len(held_out)} new prompts, each policy on the same ones):")
    print(f"  {'policy':<22} {'judge quality':>13} {'$ / 100 req':>11} {'utility':>8} {'labels':>6}  "
          f"mix (mixtral / gpt-4)")
    results = {}
    live = live_version(db)
    policies: list[tuple[str, str | None]] = [("learned " + live, None)]
    if args.mode == "explore" and live != "builtin":
        # the pool keeps exploring after the promotion; naming the live router turns exploration off, so this row
        # is what the learned router itself chose (the row above is the policy as served, exploration included)
        policies = [("learned, as served", None), (f"{live}, no exploration", live.split()[0])]
    for name, router in (*policies, ("always-cheapest", "cheapest"), ("always-strongest", "strongest")):
        ids = send(client, held_out, router)
        quality, cost100, labels, mix = summary(db, ids)
        results[router] = (quality, cost100, mix)
        utility = quality - args.cost_weight * cost100 / 100  # the objective's trade: quality - weight x USD a call
        print(f"  {name:<22} {quality:>13.3f} {cost100:>11.4f} {utility:>8.3f} {labels:>6}  "
              f"{mix.get('mixtral-8x7b', 0):>7} / {mix.get('gpt-4-1106', 0)}")
    # what a context-blind policy sending the same share to gpt-4 at random would score on these prompts (the
    # learned router's own share: without exploration when that row was measured)
    learned = policies[-1][1]
    share = results[learned][2].get("gpt-4-1106", 0) / len(held_out)
    blind = (1 - share) * results["cheapest"][0] + share * results["strongest"][0]
    blind_cost = (1 - share) * results["cheapest"][1] + share * results["strongest"][1]
    print(f"  {'same mix, at random':<22} {blind:>13.3f} {blind_cost:>11.4f} "
          f"{blind - args.cost_weight * blind_cost / 100:>8.3f}      -  (expected value, computed)")
    with sqlite3.connect(db) as conn:
        n, usd = conn.execute("SELECT count(*), sum(cost_usd) FROM requests WHERE router = 'judge' "
                              "AND policy = 'judge'").fetchone()
        pairs, pair_usd = conn.execute("SELECT count(*), sum(cost_usd) FROM requests WHERE policy = 'judge-pair'"
                                       ).fetchone()
    print(f"judge calls: {n}, cost ${usd or 0:.4f} (logged as requests rows with router = policy = 'judge')")
    if pairs:
        print(f"pair calls (the top choice asked for explored requests): {pairs}, cost ${pair_usd or 0:.4f} "
              "(rows with policy = 'judge-pair', no propensity)")


def live_version(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT router, version FROM router_versions WHERE pool = 'auto' AND status = 'live'"
                           ).fetchone()
    return f"{row[0]} {row[1]}" if row else "builtin"


if __name__ == "__main__":
    main()
