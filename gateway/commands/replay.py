"""``poolgate replay``: serve recorded answers of real models as OpenAI-compatible endpoints, offline."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--host", default=None, help="bind address [default: POOLGATE_REPLAY_HOST or 127.0.0.1]")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="port [default: POOLGATE_REPLAY_PORT or 8001]"
)
@click.option(
    "--data",
    "data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="GSM8K responses CSV or sample .jsonl [default: POOLGATE_REPLAY_DATA or packaged sample]",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="delay before the first byte [default: POOLGATE_REPLAY_LATENCY_MS or 0]",
)
@click.option(
    "--ms-per-token",
    type=click.FloatRange(min=0),
    default=None,
    help="added per completion token [default: POOLGATE_REPLAY_MS_PER_TOKEN or 0]",
)
def replay(
    host: str | None,
    port: int | None,
    data: Path | None,
    latency_ms: float | None,
    ms_per_token: float | None,
) -> None:
    """Replay real recorded GSM8K answers of mixtral-8x7b (cheap) and gpt-4-1106 (strong).

    An exact prompt gets that model's recorded answer; any other prompt gets the answer to the most
    similar recorded prompt (header x-replay-match: nearest). Point a pool entry at
    http://HOST:PORT/<model>/v1 or send "model" in the body to http://HOST:PORT/v1.
    """
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import uvicorn  # imported here so `poolgate --help` stays instant

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.replay.data import ReplayStore
    from gateway.replay.server import create_replay_app
    from gateway.settings import Settings

    settings = Settings()
    host = host if host is not None else settings.replay_host
    port = port if port is not None else settings.replay_port
    data = data if data is not None else settings.replay_data
    try:
        store = ReplayStore.load(data)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load replay data: {exc}") from exc
    app = create_replay_app(
        store,
        latency_ms=latency_ms if latency_ms is not None else settings.replay_latency_ms,
        ms_per_token=ms_per_token if ms_per_token is not None else settings.replay_ms_per_token,
    )
    click.echo(
        f"poolgate replay: {len(store)} recorded prompts from {store.source}; "
        f"models {', '.join(store.models)} at http://{host}:{port}/v1"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
