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

    # -- log store ---------------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./poolgate.db"
    log_queue_size: int = Field(default=10_000, description="bounded in-memory queue of log rows")
    log_batch_size: int = 200
    log_flush_interval_s: float = 0.5
    spool_dir: Path = Path(".poolgate/spool")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, description="local spool bound when the DB is down")
    spool_full_policy: Literal["drop", "refuse"] = Field(
        default="drop", description="spool full: 'drop' new log rows (counted) or 'refuse' requests with 503")
    log_write_timeout_s: float = Field(
        default=10.0, gt=0, description="a log insert slower than this counts as the database down (rows spooled)")
    store_prompts: bool = Field(default=False, description="store the last user message text (needed by train)")
    store_responses: bool = Field(default=False, description="store the answer text")

    # -- routing -----------------------------------------------------------------------------------
    artifacts_dir: Path = Path(".poolgate/artifacts")
    embedding_cache_dir: Path | None = Path(".poolgate/embeddings")
    embedding_batch_window_ms: float = 2.0
    default_output_tokens: int = 256

    # -- replay demo backend -----------------------------------------------------------------------
    replay_host: str = "127.0.0.1"
    replay_port: int = 8001
    replay_latency_ms: float = Field(default=0.0, description="fixed delay before the first byte")
    replay_ms_per_token: float = Field(default=0.0, description="added per completion token (streaming pace)")
    replay_data: Path | None = Field(default=None, description="a GSM8K responses CSV; unset = packaged sample")

    # -- tenancy -----------------------------------------------------------------------------------
    auth_enabled: bool = False
    master_key: str | None = None
    redis_url: str | None = None
