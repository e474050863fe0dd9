"""The one settings class. Every field reads ``POOLGATE_<NAME>`` from the environment (or ``.env``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Gateway settings. Defaults run the embedded demo: SQLite in the working directory, demo pool."""

    model_config = SettingsConfigDict(env_prefix="POOLGATE_", env_file=".env", extra="ignore")

    # -- serving -----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    pool_file: Path | None = Field(
        default=None, description="YAML pool file; unset = the demo pool over the replay backend"
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, description="requests larger than this get 413")
    max_header_bytes: int = Field(default=64 * 1024, gt=0, description="request line + headers over this get 431")
    access_log: bool = Field(default=True, description="poolgate serve: one line per request on stderr")
    log_format: Literal["text", "json"] = Field(default="text", description="access log: text lines or JSON lines")
    client_read_timeout_s: float = Field(
        default=30.0, gt=0, description="a client must send its request head, and then its body, within this (408)")

    otel_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP collector for OpenTelemetry traces (poolgate[otel]); unset = none")

    # -- upstream (gateway/proxy/upstream.py: one transport for every backend call) -------------------------
    max_response_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="a plain backend answer over this fails (next backend, or 502)")
    max_stream_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="a streamed answer over this is cut with an error event")
    upstream_max_connections: int = Field(default=1000, ge=1, description="upstream exchanges at once, in all")
    upstream_max_connections_per_host: int = Field(
        default=500, ge=1, description="upstream exchanges at once per backend origin (scheme, host, port)")
    upstream_pool_timeout_s: float = Field(
        default=10.0, gt=0, description="longest wait for a free upstream connection slot (then the next backend)")
    upstream_max_header_bytes: int = Field(default=64 * 1024, gt=0, description="a backend's response head cap")
    upstream_max_header_count: int = Field(default=100, gt=0, description="headers a backend's response may have")

    # -- log store ---------------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./poolgate.db"
    log_queue_size: int = Field(default=10_000, description="bounded in-memory queue of log rows")
    log_batch_size: int = 200
    log_flush_interval_s: float = 0.5
    spool_dir: Path = Path(".poolgate/spool")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, description="local spool bound when the DB is down")
    spool_full_policy: Literal["drop", "refuse"] = Field(
        default="drop", description="spool full: 'drop' new log rows (counted) or 'refuse' requests with 503")
    log_journal: bool = Field(
        default=True, description="append each log row to a journal file in spool_dir before answering, so a "
        "killed process (SIGKILL, OOM) loses no row; no fsync (survives the process, not the machine)")
    log_write_timeout_s: float = Field(
        default=10.0, gt=0, description="a log insert slower than this counts as the database down (rows spooled)")
    store_prompts: bool = Field(default=False, description="store the last user message text (needed by train)")
    store_responses: bool = Field(default=False, description="store the answer text")
    response_store_entries: int = Field(
        default=10_000, ge=0, description="conversations kept for /v1/responses' previous_response_id, per replica "
        "(in process, least recently used dropped first; 0: none kept)")

    # -- routing -----------------------------------------------------------------------------------
    artifacts_dir: Path = Path(".poolgate/artifacts")
    online_save_every: int = Field(default=50, ge=1, description="online router: save and promote a new version "
                                   "every this many feedback updates (gateway/loop/online.py)")
    router_reload_interval_s: float = Field(default=5.0, gt=0, description="how often to poll for promoted routers")
    embedding_cache_dir: Path | None = Path(".poolgate/embeddings")
    embedding_encoder: Literal["minilm", "minilm-static"] = Field(
        default="minilm-static",
        description="encoder that training commands fit learned routers on (a router is served with the encoder it "
        "was fitted with); see docs/encoders.md",
    )
    static_model_dir: Path | None = Field(
        default=None, description="a Model2Vec model folder for minilm-static instead of the packaged one "
        "(routers/encoders/distill.py makes one; a router must be served with the model it was fitted on)"
    )
    embedding_batch_window_ms: float = Field(
        default=0.0, description="wait for company before an idle encoder starts a batch (busy: texts queue anyway)"
    )
    default_output_tokens: int = 256

    # -- replay demo backend -----------------------------------------------------------------------
    replay_host: str = "127.0.0.1"
    replay_port: int = 8001
    replay_latency_ms: float = Field(default=0.0, description="fixed delay before the first byte")
    replay_ms_per_token: float = Field(default=0.0, description="added per completion token (streaming pace)")
    replay_data: Path | None = Field(default=None, description="a GSM8K responses CSV; unset = packaged sample")

    # -- tenancy -----------------------------------------------------------------------------------
    auth_enabled: bool = Field(default=False, description="require API keys (off only for the local demo)")
    master_key: str | None = Field(default=None, description="admin API key; also accepted on /v1 with no limits")
    ui_secure_cookie: bool | None = Field(
        default=None, description="mark the dashboard's session cookie Secure; unset = when the request is HTTPS "
                                  "(set true behind a proxy that terminates TLS)")
    redis_url: str | None = Field(default=None, description="shared limits across replicas; unset = in-process")
    redis_key_prefix: str = Field(default="poolgate:", description="prefix of every Redis key the gateway writes")
    redis_timeout_s: float = Field(default=0.5, gt=0, description="connect/read timeout of a limit check")
    redis_max_connections: int = Field(default=32, ge=1, description="Redis connections per process (requests queue)")
    redis_retry_s: float = Field(default=1.0, gt=0, description="after a Redis failure, skip Redis this long")
    redis_failure_rpm: Literal["open", "closed"] = Field(
        default="open", description="Redis unreachable: 'open' lets requests past rpm, 'closed' refuses with 503")
    redis_failure_tpm: Literal["open", "closed"] = Field(default="open", description="as redis_failure_rpm, for tpm")
    redis_failure_budget: Literal["open", "closed"] = Field(
        default="closed", description="as redis_failure_rpm, for budgets (closed: never spend unchecked)")
    key_cache_ttl_s: float = Field(default=10.0, ge=0, description="API key lookups are cached this long")
    budget_pressure_start: float = Field(
        default=0.5, ge=0, le=1, description="share of a key's budget spent before routing starts to save on it")
    budget_min_quality_target: float = Field(
        default=0.8, gt=0, le=1,
        description="quality_target a key's requests are routed with as its budget runs out (from 1 at the start)")
