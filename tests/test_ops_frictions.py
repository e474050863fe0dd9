"""What a newcomer tripped over, each now behaving: train needs the serving pool file, feedback reads the SDK's
variables, ``pools validate`` catches what would fail later (at the right line), ``keys create`` works in a fresh
folder, the SDK says plainly that the gateway is down, and strict capabilities are a pool setting."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.client import AsyncPoolgate, Poolgate, PoolgateConnectionError, PoolgateError
from tests.conftest import backend_yaml

MASTER = "ops-test-master"
IMAGE = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def validate(tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None):
    (tmp_path / "pool.yaml").write_text(text)
    return CliRunner().invoke(main, ["pools", "validate", str(tmp_path / "pool.yaml"), *args], env=env)


GOOD = """backends:
  - name: a
    base_url: http://127.0.0.1:8001/v1
    model: m
pools:
  - name: p
    members: [a]
"""


# -- poolgate train ---------------------------------------------------------------------------------
def test_train_without_a_pool_file_refuses_instead_of_using_the_demo_pool(tmp_path: Path) -> None:
    env = {"POOLGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db", "POOLGATE_POOL_FILE": None,
           "POOLGATE_ARTIFACTS_DIR": str(tmp_path / "art")}
    out = CliRunner().invoke(main, ["train", "--router", "knn", "--pool", "auto"], env=env)
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "pass --pool-file FILE or set POOLGATE_POOL_FILE" in out.output and "--demo-pool" in out.output
    # asking for the demo pool by name gets past the choice (to the empty log's count)
    out = CliRunner().invoke(main, ["train", "--router", "knn", "--pool", "auto", "--demo-pool"], env=env)
    assert out.exit_code == 1 and "training needs at least 20" in out.output, out.output


# -- poolgate feedback ------------------------------------------------------------------------------
def test_feedback_reads_the_sdks_base_url_and_key_variables(fake_backends, gateway) -> None:
    _, backend = fake_backends("a")
    gw = gateway(f"backends:\n{backend_yaml('a', backend.url)}\npools:\n  - name: auto\n    members: [a]\n",
                 auth_enabled=True, master_key=MASTER)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {MASTER}"},
                      json={"model": "auto", "messages": [{"role": "user", "content": "2+2?"}]})
    request_id = resp.headers["x-poolgate-request-id"]
    # POOLGATE_PORT points nowhere: only POOLGATE_BASE_URL (the SDK's, with its /v1) can find the gateway
    env = {"POOLGATE_BASE_URL": f"{gw.url}/v1", "POOLGATE_PORT": str(free_port()), "POOLGATE_MASTER_KEY": MASTER,
           "POOLGATE_API_KEY": None}
    out = CliRunner().invoke(main, ["feedback", request_id, "--up"], env=env)
    assert out.exit_code == 0, out.output
    assert f"recorded: request {request_id} score 1.0" in out.output
    out = CliRunner().invoke(main, ["feedback", request_id, "--up"], env={**env, "POOLGATE_MASTER_KEY": None})
    assert out.exit_code == 1 and "HTTP 401" in out.output


# -- poolgate pools validate ------------------------------------------------------------------------
def test_validate_rejects_a_port_out_of_range_at_its_line(tmp_path: Path) -> None:
    out = validate(tmp_path, GOOD.replace(":8001/", ":99999/"))
    assert out.exit_code == 2
    assert "pool.yaml:3: backends.0.base_url: bad port in 'http://127.0.0.1:99999/v1'" in out.output


def test_validate_rejects_a_learned_router_without_an_artifact(tmp_path: Path) -> None:
    out = validate(tmp_path, GOOD + "    router: knn\n")
    assert out.exit_code == 2
    assert "pool.yaml:8: pools.0.router: router 'knn' learns from data and the pool has no artifact:" in out.output
    out = validate(tmp_path, GOOD + "    router: knn\n    artifact: missing.router\n")
    assert out.exit_code == 2 and "pool.yaml:9: pools.0.artifact: no such file missing.router" in out.output
    assert validate(tmp_path, GOOD + "    router: strongest\n").exit_code == 0


def test_an_unset_api_key_variable_is_a_warning_and_fails_with_strict(tmp_path: Path) -> None:
    text = GOOD.replace("    model: m\n", "    model: m\n    api_key_env: OPS_TEST_UNSET_KEY\n")
    out = validate(tmp_path, text, env={"OPS_TEST_UNSET_KEY": None})
    assert out.exit_code == 0 and "warning:" in out.output and "ok" in out.output
    assert "pool.yaml:5: backends.0.api_key_env: OPS_TEST_UNSET_KEY is not set here" in out.output
    assert validate(tmp_path, text, "--strict", env={"OPS_TEST_UNSET_KEY": None}).exit_code == 2
    assert "warning" not in validate(tmp_path, text, env={"OPS_TEST_UNSET_KEY": "sk-x"}).output


def test_unknown_router_and_member_errors_point_at_the_pools_line(tmp_path: Path) -> None:
    two = GOOD + "  - name: q\n    members: [a, zz]\n"
    out = validate(tmp_path, two)
    assert out.exit_code == 2 and "pool.yaml:9: pools.1.members.1: pool 'q': members ['zz']" in out.output
    out = validate(tmp_path, GOOD + "  - name: q\n    members: [a]\n    router: nope\n")
    assert out.exit_code == 2 and "pool.yaml:10: pools.1.router: pool 'q': unknown router 'nope'" in out.output


def test_bad_indentation_names_the_line_without_pyyamls_dump(tmp_path: Path) -> None:
    out = validate(tmp_path, GOOD.replace("    model: m", "   model: m"))
    assert out.exit_code == 2
    assert "pool.yaml:4:4: not valid YAML: this line's indentation does not line up" in out.output
    assert "<block" not in out.output and "in \"<unicode string>\"" not in out.output


# -- poolgate keys in a fresh folder ----------------------------------------------------------------
def test_keys_create_in_a_fresh_folder_creates_the_embedded_schema(tmp_path: Path) -> None:
    env = {"POOLGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/fresh.db"}
    out = CliRunner().invoke(main, ["keys", "create", "--name", "alice"], env=env)
    assert out.exit_code == 0, out.output
    assert "created " in out.output and "secret: " in out.output
    listed = CliRunner().invoke(main, ["keys", "list"], env=env)
    assert listed.exit_code == 0 and "alice" in listed.output


# -- the SDK when the gateway is down ---------------------------------------------------------------
def test_sdk_admin_calls_raise_its_own_error_when_the_gateway_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Poolgate(url, master_key="m") as pg:
        with pytest.raises(PoolgateConnectionError, match=f"cannot reach the gateway at {url}") as info:
            pg.admin.list_keys()
        assert isinstance(info.value, PoolgateError) and info.value.status == 0
        with pytest.raises(PoolgateConnectionError):
            pg.feedback("req-1", 1.0)


async def test_async_sdk_admin_calls_raise_its_own_error_when_the_gateway_is_down() -> None:
    async with AsyncPoolgate(f"http://127.0.0.1:{free_port()}", master_key="m") as pg:
        with pytest.raises(PoolgateConnectionError, match="is it running"):
            await pg.admin.pools()


# -- capabilities a pool did not declare ------------------------------------------------------------
@pytest.mark.parametrize("strict", [False, True])
def test_an_image_request_to_a_pool_without_vision_follows_the_pools_rule(fake_backends, gateway, strict) -> None:
    _, backend = fake_backends("a")
    gw = gateway(f"backends:\n{backend_yaml('a', backend.url)}\npools:\n  - name: auto\n    members: [a]\n"
                 f"    strict_capabilities: {str(strict).lower()}\n")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    if not strict:
        assert client.chat.completions.create(model="auto", messages=IMAGE).choices  # type: ignore[arg-type]
        return
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=IMAGE)  # type: ignore[arg-type]
    err = info.value.body
    assert isinstance(err, dict) and err["code"] == "unsatisfiable" and err["param"] == "poolgate.flags.capabilities"
    assert "['vision'] (strict_capabilities: only declared capabilities count)" in err["message"]


@pytest.mark.parametrize("strict", [False, True])
def test_min_context_with_an_undeclared_window_follows_the_pools_rule(fake_backends, gateway, strict) -> None:
    _, backend = fake_backends("a")
    gw = gateway(f"backends:\n{backend_yaml('a', backend.url)}\npools:\n  - name: auto\n    members: [a]\n"
                 f"    strict_capabilities: {str(strict).lower()}\n")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    args = {"model": "auto", "messages": [{"role": "user", "content": "hi"}],
            "extra_body": {"poolgate": {"flags": {"min_context": 100000}}}}
    if not strict:
        assert client.chat.completions.create(**args).choices  # type: ignore[call-overload]
        return
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)  # type: ignore[call-overload]
    err = info.value.body
    assert isinstance(err, dict) and err["param"] == "poolgate.flags.min_context"
    assert "strict_capabilities: an undeclared context_window fails" in err["message"]


# -- the demo's recorded prompts --------------------------------------------------------------------
def test_every_readme_question_is_a_recorded_prompt_of_the_demo() -> None:
    import re

    from gateway.replay.data import ReplayStore

    store = ReplayStore.load()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    questions = re.findall(r'"role": "user", "content": "([^"]+)"', readme)
    assert len(questions) >= 6
    assert [q for q in questions if store.match(q).kind != "exact"] == []


@pytest.mark.parametrize("stream", [False, True])
def test_the_gateway_passes_the_replays_nearest_match_signal_on(gateway, stream: bool) -> None:
    from gateway.replay.data import ReplayStore
    from gateway.replay.server import create_replay_app
    from tests.servers import ServerThread

    store = ReplayStore.load()
    with ServerThread(create_replay_app(store)) as replay:
        gw = gateway(f"""backends:
  - name: mixtral-8x7b
    base_url: {replay.url}/v1
    model: mixtral-8x7b
pools:
  - name: auto
    members: [mixtral-8x7b]
""")
        for prompt, kind in ((store.records[0].prompt, "exact"), ("What is the capital of France?", "nearest")):
            body = {"model": "auto", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
            resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-poolgate-replay-match"] == kind
            similarity = float(resp.headers["x-poolgate-replay-similarity"])
            assert similarity == 1.0 if kind == "exact" else 0.0 <= similarity < 1.0
            assert "x-replay-correct" not in resp.headers and "x-poolgate-replay-correct" not in resp.headers


# -- a light SDK ------------------------------------------------------------------------------------
def test_importing_the_sdk_loads_no_torch_numpy_fastapi_or_openai() -> None:
    import subprocess
    import sys

    code = ("import sys, gateway.client; "
            "print(sorted(m for m in ('torch', 'numpy', 'fastapi', 'openai', 'sqlalchemy') if m in sys.modules))")
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root,
                         env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"
