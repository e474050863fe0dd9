"""Off-policy estimators on recorded GSM8K correctness: naive filled-cell vs IPS vs SNIPS vs DR error.

One command (from the repository root): ``python benchmarks/off_policy.py`` (``--help`` for the knobs).

The packaged replay sample (300 GSM8K prompts, Mixtral's and GPT-4's recorded correctness on each) is logged by a
biased policy (about 90 % to GPT-4, more on the prompts Mixtral gets wrong; ``training/off_policy_sim.py``);
each target policy's true quality is known from the data. Prints, per target, the truth and each estimate's error
with the 95 % bootstrap interval and the effective sample size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SAMPLE = Path(__file__).resolve().parent.parent / "gateway" / "replay" / "sample" / "gsm8k_sample.jsonl"


def main(argv: list[str] | None = None) -> int:
    from training.load_file import load_replay_sample
    from training.off_policy_sim import simulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=10, help="logging rounds over the 300 prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)

    data = load_replay_sample(SAMPLE)
    weak, strong = data.models.index("mixtral-8x7b"), data.models.index("gpt-4-1106")
    long_prompt = np.asarray([len(q) for q in data.queries]) > np.median([len(q) for q in data.queries])
    targets = {
        "always-mixtral": lambda idx: np.full(len(idx), weak),
        "gpt-4 on long prompts": lambda idx: np.where(long_prompt[idx], strong, weak),
    }
    results = simulate(data.quality, targets, weak, strong, passes=args.passes, seed=args.seed, n_boot=args.boot)
    print(f"{len(data)} prompts x {args.passes} passes; logging policy: P(gpt-4) 0.95 where Mixtral is wrong, 0.85 "
          "elsewhere")
    for res in results:
        r = res.report
        print(f"\ntarget {res.target}: true quality {res.truth:.4f}  (events {r.n}, ESS {r.ess:.1f}, "
              f"match {r.match_rate:.3f})")
        print(f"  {'estimator':<8} {'estimate':>9} {'error':>8}   95% interval")
        print(f"  {'naive':<8} {res.naive:>9.4f} {res.naive - res.truth:>+8.4f}   (filled cells, no interval)")
        for name in ("ips", "snips", "dr"):
            e = getattr(r, name)
            inside = "contains truth" if e.low <= res.truth <= e.high else "MISSES truth"
            print(f"  {name:<8} {e.value:>9.4f} {e.value - res.truth:>+8.4f}   [{e.low:.4f}, {e.high:.4f}] {inside}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
