"""The bounded soak, short: 200 concurrent streaming clients for 20 s against ``poolgate serve`` over the replay
pool, logging to PostgreSQL. No errors, every stream ends with [DONE], every request has its row, RSS flat.

The multi-minute version is the same command by hand: ``python -m benchmarks.soak --clients 300 --duration 180``
(its figures are in docs/reliability.md). ``POOLGATE_SOAK_CLIENTS`` / ``POOLGATE_SOAK_DURATION`` override the size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_soak_of_concurrent_streaming_clients_has_no_error_no_lost_row_and_flat_memory(pg_database):
    clients = int(os.environ.get("POOLGATE_SOAK_CLIENTS", "200"))
    duration = float(os.environ.get("POOLGATE_SOAK_DURATION", "20"))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--clients", str(clients), "--duration", str(duration),
         "--database-url", pg_database, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=duration + 300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"soak: {json.dumps(result)}")
    assert result["errors"] == 0, result["error_samples"]
    assert result["completed"] >= clients  # every client finished at least one whole stream
    assert result["rows"]["missing"] == 0 and result["rows"]["logged"] == result["completed"]
    assert result["rows"]["other_rows"] == 0  # no row the clients did not cause (none doubled: primary key)
    # flat: the median RSS of the last fifth of the run within 32 MiB (and 20 %) of the first fifth after warm-up
    assert result["rss"]["growth_mb"] < 32 and result["rss"]["end_over_start"] < 1.2, result["rss"]
