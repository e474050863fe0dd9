"""``poolgate serve``: run the gateway (and, with no pool file, the offline replay demo backend)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click


def _wait_http(url: str, timeout_s: float = 90.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise click.ClickException(f"replay backend exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise click.ClickException(f"{url} did not come up within {timeout_s:.0f}s")


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the gateway dies, however the gateway dies
    (uvicorn re-raises SIGTERM after shutdown, which skips our ``finally``)."""
    try:
        # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the finally in serve() still stops it on a clean exit
        pass


def start_replay_child(host: str, port: int) -> subprocess.Popen[bytes]:
    """Start ``python -m gateway.replay`` on host:port and wait until it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.replay", "--host", host, "--port", str(port)], preexec_fn=_die_with_parent
    )
    try:
        _wait_http(f"http://{host}:{port}/v1/models", proc=proc)
    except BaseException:
        proc.terminate()
        raise
    return proc


@click.command()
@click.option("--host", default=None, help="bind address [POOLGATE_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="port [POOLGATE_PORT, 8000]")
@click.option("--pool-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="pool YAML [POOLGATE_POOL_FILE]; unset = demo pool over the replay backend")
@click.option("--no-replay", is_flag=True, help="with the demo pool, do not start the replay backend")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="access log lines on stderr: text or JSON lines [POOLGATE_LOG_FORMAT, text]; no prompts or keys")
@click.option("--access-log/--no-access-log", default=None, help="one line per request [POOLGATE_ACCESS_LOG, on]")
def serve(host: str | None, port: int | None, pool_file: Path | None, no_replay: bool, log_format: str | None,
          access_log: bool | None) -> None:
    """Serve the OpenAI-compatible gateway (SQLite log store and demo pool by default).

    Says what it is doing while it starts (log store, pool, routers, encoder, judge, listening): a status line on
    a terminal, plain ``poolgate: ...`` lines on stderr otherwise."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.commands.progress import startup_display

    with startup_display():
        _serve(host, port, pool_file, no_replay, log_format, access_log)


def _serve(host: str | None, port: int | None, pool_file: Path | None, no_replay: bool, log_format: str | None,
           access_log: bool | None) -> None:
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import uvicorn

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.access_log import configure_access_log
    from gateway.app import create_app, resolve_pool_file
    from gateway.http_guard import guarded_protocol
    from gateway.pools import PoolFileError
    from gateway.services import load_routing
    from gateway.settings import Settings
    from gateway.startup import startup_step
    from gateway.store import upgrade_embedded
    from gateway.store.db import redact
    from routers.base import RouterError

    if pool_file is not None:
        os.environ["POOLGATE_POOL_FILE"] = str(pool_file)
    settings = Settings()
    host = host or settings.host
    port = port or settings.port
    with startup_step(f"upgrading the log store's schema ({redact(settings.database_url)})"):
        upgrade_embedded(settings.database_url)
    if settings.access_log if access_log is None else access_log:
        configure_access_log("json" if (log_format or settings.log_format) == "json" else "text")
    try:
        with startup_step(f"loading the pool file {settings.pool_file or 'gateway/demo/pool.yaml (demo)'}"):
            pools, base_dir = resolve_pool_file(settings)
        routing = load_routing(pools, base_dir)
    except (PoolFileError, RouterError) as exc:
        raise click.ClickException(str(exc)) from None
    child = None
    if settings.pool_file is None and not no_replay:
        with startup_step(f"starting the replay backend on {settings.replay_host}:{settings.replay_port} (demo pool)"):
            child = start_replay_child(settings.replay_host, settings.replay_port)
    try:
        app = create_app(settings, pools, base_dir=base_dir, routing=routing)
        http = guarded_protocol(settings.max_header_bytes, settings.client_read_timeout_s)
        config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http=http, access_log=False,
                                log_level="warning", timeout_graceful_shutdown=10)
        click.echo(f"poolgate on http://{host}:{port}/v1  (log store: {redact(settings.database_url)})")
        _uvicorn_server()(config, f"listening on http://{host}:{port}/v1").run()
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=10)


def _uvicorn_server() -> type:
    """uvicorn's Server, announcing when its sockets listen (after the app's lifespan started the services)."""
    # why: `poolgate --help` imports every command module; uvicorn loads only when the gateway runs
    import uvicorn

    from gateway.startup import startup_note

    class Server(uvicorn.Server):
        def __init__(self, config: uvicorn.Config, listening: str) -> None:
            super().__init__(config)
            self.listening = listening

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                startup_note(self.listening)

    return Server
