"""``poolgate serve``: run the gateway (and, with no pool file, the offline replay demo backend)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

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


def settle_heap() -> None:
    """Once the app has started (routers, tables and modules loaded): collect, then freeze what is left.

    Why: CPython's oldest-generation collection walks every tracked object, and a started gateway holds a few
    hundred thousand that live until exit (modules, the FastAPI app, router artifacts). Each such collection
    stopped the event loop for tens of milliseconds (hundreds on a loaded machine), which was most of the p99 at
    concurrency 32 (benchmarks/README.md, "Profile"). Frozen objects are never scanned again; objects made by
    requests are collected as before.

    The tokenizer loads first (it otherwise loads in the first request that counts tokens: ~0.1 s, and its
    tables are worth freezing with the rest).
    """
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from routers.pricing import encoding

    encoding()
    gc.collect()
    gc.freeze()


def _run_server(app: object, host: str, port: int, http: object, worker_index: int | None, listening: str) -> None:
    """uvicorn's server on the app; once its sockets listen (the lifespan started the services) it says so and
    settles the heap."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import uvicorn

    from gateway.commands.workers import reuseport_socket
    from gateway.startup import startup_note

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
            await super().startup(sockets=sockets)  # type: ignore[arg-type]
            if self.started:
                startup_note(listening)
            settle_heap()

    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http=http, access_log=False,  # type: ignore[arg-type]
                            log_level="warning", timeout_graceful_shutdown=10)
    server = Server(config)
    # a worker binds the port next to the others (SO_REUSEPORT); a single process lets uvicorn bind it
    server.run(sockets=[reuseport_socket(host, port)] if worker_index is not None else None)


@click.command()
@click.option("--host", default=None, help="bind address [POOLGATE_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="port [POOLGATE_PORT, 8000]")
@click.option("--pool-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="pool YAML [POOLGATE_POOL_FILE]; unset = demo pool over the replay backend")
@click.option("--no-replay", is_flag=True, help="with the demo pool, do not start the replay backend")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="access log lines on stderr: text or JSON lines [POOLGATE_LOG_FORMAT, text]; no prompts or keys")
@click.option("--access-log/--no-access-log", default=None, help="one line per request [POOLGATE_ACCESS_LOG, on]")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="gateway processes on the port (SO_REUSEPORT), e.g. one per core. Per worker: its spool and "
                   "journal (<spool_dir>/worker-<i>), circuit breakers, embedding cache, the Responses "
                   "previous_response_id store, loaded router versions, in-process limits and metrics. Shared "
                   "through the database or Redis: keys, request rows, router versions, limits (only with "
                   "POOLGATE_REDIS_URL; without it each worker counts its own). See docs/architecture.md.")
@click.option("--worker-index", type=int, default=None, hidden=True, help="set by the supervisor for its workers")
def serve(host: str | None, port: int | None, pool_file: Path | None, no_replay: bool, log_format: str | None,
          access_log: bool | None, workers: int, worker_index: int | None) -> None:
    """Serve the OpenAI-compatible gateway (SQLite log store and demo pool by default).

    Says what it is doing while it starts (log store, pool, routers, encoder, judge, listening): a status line on
    a terminal, plain ``poolgate: ...`` lines on stderr otherwise."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.commands.progress import startup_display

    with startup_display():
        _serve(host, port, pool_file, no_replay, log_format, access_log, workers, worker_index)


def _serve(host: str | None, port: int | None, pool_file: Path | None, no_replay: bool, log_format: str | None,
           access_log: bool | None, workers: int, worker_index: int | None) -> None:
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.access_log import configure_access_log
    from gateway.app import create_app, resolve_pool_file
    from gateway.commands.workers import Supervisor, fold_spools, worker_env
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
    if workers > 1 and port == 0:
        raise click.ClickException("--workers needs a fixed --port (each worker binds the same one)")
    if worker_index is None:  # the supervisor (or the single process): once per start, before any worker runs
        with startup_step(f"upgrading the log store's schema ({redact(settings.database_url)})"):
            upgrade_embedded(settings.database_url)
        fold_spools(settings.spool_dir, workers)
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
        if worker_index is None:
            click.echo(f"poolgate on http://{host}:{port}/v1  (log store: {redact(settings.database_url)}"
                       + (f", {workers} workers" if workers > 1 else "") + ")")
        if workers > 1:  # the supervisor: its workers load the app themselves
            supervisor = Supervisor(workers, worker_env(host, port, log_format, access_log), settings.spool_dir,
                                    preexec=_die_with_parent)
            sys.exit(supervisor.run())
        app = create_app(settings, pools, base_dir=base_dir, routing=routing)
        http = guarded_protocol(settings.max_header_bytes, settings.client_read_timeout_s)
        _run_server(app, host, port, http, worker_index, f"listening on http://{host}:{port}/v1")
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=10)


