"""The README's tenancy/SDK section runs as written: its shell blocks and Python examples,
against `poolgate serve` (the offline demo) started with the section's own environment."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import wait_until_healthy
from tests.servers import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Teams: API keys, rate limits, budgets, metrics, admin API and the Python SDK"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def section() -> str:
    """The README's tenancy section: from its heading to the next level-2 heading."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else len(text)]


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(section()) if kind == lang]


def doc_exports() -> dict[str, str]:
    """The ``export NAME=value`` lines of the block that starts the gateway."""
    serve_block = next(b for b in blocks("bash") if "poolgate serve" in b)
    return dict(re.findall(r"^export (\w+)=(\S+)$", serve_block, re.M))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """`poolgate serve` (demo pool + replay backend, SQLite in a temp dir) with the doc's exports."""
    tmp = tmp_path_factory.mktemp("doc")
    port, replay_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLGATE_")}
    env.update(doc_exports(), POOLGATE_PORT=str(port), POOLGATE_REPLAY_PORT=str(replay_port),
               POOLGATE_BASE_URL=f"http://127.0.0.1:{port}", HF_HUB_OFFLINE="1")
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(["poolgate", "serve"], env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}", lambda: (tmp / "serve.log").read_text(), 60)
        yield env, tmp
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{args[:2]} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_the_doc_turns_auth_on_with_a_master_key() -> None:
    exports = doc_exports()
    assert exports["POOLGATE_AUTH_ENABLED"] == "true" and exports["POOLGATE_MASTER_KEY"]


def test_shell_blocks_run_as_written(served: tuple[dict[str, str], Path]) -> None:
    env, cwd = served
    outputs = [run(["bash", "-e", "-c", block], env, cwd) for block in blocks("bash") if "poolgate serve" not in block]
    keys_out, admin_out = outputs
    assert re.search(r"^secret: pg-\S{40,}$", keys_out, re.M)
    assert re.search(r"research .* \$5/day +60 +20000 +auto +active", keys_out)
    assert re.search(r"^revoked key_\w+ \(temp\)", keys_out, re.M)
    assert '"name":"auto"' in admin_out.replace(" ", "") and "ok   mixtral-8x7b" in admin_out


def run_python(block: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run one example in this interpreter (a fresh namespace, as a script would) and return what it printed."""
    exec(compile(block, "<README.md>", "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


def test_python_examples_run_as_written(
    served: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env, _ = served
    for name in [k for k in os.environ if k.startswith("POOLGATE_")]:
        monkeypatch.delenv(name)
    for name in ("POOLGATE_BASE_URL", "POOLGATE_MASTER_KEY"):
        monkeypatch.setenv(name, env[name])
    sync_example, async_example, admin_example = blocks("python")
    out = run_python(sync_example, capsys)
    assert "mixtral-8x7b gpt-4-1106" in out  # a large lambda picks the cheap model, strongest the strong one
    assert re.search(r"^ (mixtral-8x7b|gpt-4-1106) True$", out, re.M)  # a stream's cost header is an estimate
    assert re.search(r"\b15\b", out)  # the replayed model's recorded answer to the football question (15 wins)
    out = run_python(async_example, capsys)
    first = out.splitlines()[0]
    assert first.startswith("[") and first.count("mixtral-8x7b") + first.count("gpt-4-1106") == 3
    out = run_python(admin_example, capsys)
    assert "sdk-example" in out and "'requests_in_window': 4" in out, out
    assert "'requests': 4" in out and "True knn" in out  # the demo pool's learned router
