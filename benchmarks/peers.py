"""The peer gateways of ``benchmarks/overhead.py``: LiteLLM's proxy (Python) and Portkey's gateway (Node).

Each is installed on first use into a cache folder (a venv for LiteLLM, an npm folder for Portkey), started on
the fake backend with the least configuration that proxies one model, and described by what ``describe`` returns,
which the report prints beside the table.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Child, free_port

LITELLM_VENV = Path.home() / ".cache" / "poolgate" / "litellm-venv"
PORTKEY_DIR = Path.home() / ".cache" / "poolgate-bench" / "portkey"
#: the version measured in issue 22; ``--portkey-version`` picks another
PORTKEY_VERSION = "1.15.2"
#: Portkey's own lockfile versions: a plain install pulls hono 4.13 / @hono/node-server 1.19, with which every
#: streamed request fails with ``TypeError: immutable`` (Portkey issue #1389)
PORTKEY_OVERRIDES = {"@hono/node-server": "1.13.5", "hono": "4.9.7", "@hono/node-ws": "1.2.0"}


@dataclass
class Target:
    """Something to send requests to: the direct backend, a peer gateway, or poolgate with one router."""

    name: str
    port: int
    model: str
    api_key: str | None = None
    child: Child | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (Portkey's routing headers)
    served: int = 0  # requests sent so far (warm-ups included): the next prompt index
    result: dict[str, Any] = field(default_factory=dict)


# -- LiteLLM -------------------------------------------------------------------------------------------------------

def ensure_litellm(venv: Path) -> tuple[Path, str]:
    """``bin/litellm`` of ``venv``, creating the venv with ``pip install litellm[proxy]`` when it is missing."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        print(f"creating {venv} with litellm[proxy] (first run only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"], check=True)
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return exe, version


def litellm_config(backend_port: int) -> str:
    """One model on the fake backend; nothing else (no DB, cache, callbacks, router strategy, retries)."""
    return (
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench-model\n"
        f"      api_base: http://127.0.0.1:{backend_port}/v1\n"
        "      api_key: fake-key\n"
    )


def start_litellm(exe: Path, version: str, work: Path, backend_port: int) -> tuple[Target, dict[str, Any]]:
    port, key = free_port(), "sk-" + secrets.token_urlsafe(32)
    config = litellm_config(backend_port)
    (work / "litellm.yaml").write_text(config)
    env = {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    child = Child("litellm", [str(exe), "--config", str(work / "litellm.yaml"), "--host", "127.0.0.1",
                              "--port", str(port), "--num_workers", "1"], work / "litellm.log", env, cwd=work).start()
    child.wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout_s=180)
    about = {"version": version, "config": config, "workers": 1,
             "env": "LITELLM_LOG=ERROR (no access log), LITELLM_LOCAL_MODEL_COST_MAP=True, "
                    "LITELLM_MASTER_KEY=<random 43 chars> (checked on every request); no database"}
    return Target("litellm", port, "bench", key, child), about


# -- Portkey -------------------------------------------------------------------------------------------------------

def portkey_package_json(version: str) -> str:
    return json.dumps({"name": "poolgate-bench-portkey", "private": True,
                       "dependencies": {"@portkey-ai/gateway": version}, "overrides": PORTKEY_OVERRIDES}, indent=2)


def _installed_version(folder: Path, package: str) -> str | None:
    try:
        meta = json.loads((folder / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return str(meta.get("version"))


def ensure_portkey(folder: Path, version: str) -> Path:
    """The gateway's ``start-server.js`` under ``folder``, installed with npm from a package.json written here
    (the pinned version and the hono overrides) when it is missing or another version is installed."""
    script = folder / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    wanted = portkey_package_json(version)
    pinned = {"@portkey-ai/gateway": version, **PORTKEY_OVERRIDES}
    current = (folder / "package.json").read_text() if (folder / "package.json").exists() else None
    if script.exists() and current == wanted and all(_installed_version(folder, p) == v for p, v in pinned.items()):
        return script
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError("Portkey needs node and npm on PATH (or pass --no-portkey)")
    print(f"installing @portkey-ai/gateway {version} into {folder} with npm (first run only) ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text(wanted)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True)
    missing = [f"{p} {v} (got {_installed_version(folder, p)})" for p, v in pinned.items()
               if _installed_version(folder, p) != v]
    if missing or not script.exists():
        raise RuntimeError(f"npm did not install what package.json pins: {', '.join(missing) or script}")
    return script


def start_portkey(script: Path, version: str, work: Path, backend_port: int) -> tuple[Target, dict[str, Any]]:
    """Portkey's documented server command; every request names the provider and the fake backend in headers."""
    port = free_port()
    node = shutil.which("node") or "node"
    folder = script.parents[4]  # <folder>/node_modules/@portkey-ai/gateway/build/start-server.js
    child = Child("portkey", [node, str(script.relative_to(folder)), f"--port={port}"], work / "portkey.log",
                  {"NODE_ENV": "production"}, cwd=folder).start()
    child.wait_http(f"http://127.0.0.1:{port}/", timeout_s=60)
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{backend_port}/v1"}
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    about = {"version": version, "node": node_version, "workers": 1,
             "hono": {p: _installed_version(folder, p) for p in PORTKEY_OVERRIDES},
             "command": f"node {script.relative_to(folder)} --port={port} (NODE_ENV=production: no UI routes)",
             "headers": headers,
             "env": "open-source build: no key checked (the bearer key is forwarded to the backend), caching off "
                    "(no cache header or config), no log store (logs only to UI clients, none connected), "
                    "no retries; listens on all interfaces (it has no host flag), measured over 127.0.0.1"}
    return Target("portkey", port, "bench-model", "fake-key", child, headers), about
