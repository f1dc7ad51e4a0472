"""One settings object for the whole product; every field is an env var ``FLYWHEEL_<NAME>``.

Each field is documented in docs/configuration.md.  Defaults work on a fresh laptop: SQLite
under the data directory, the embedded engine, and a demo base built on first start.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".flywheel")
    database_url: str = ""  # empty: sqlite+aiosqlite:///<data_dir>/flywheel.db
    host: str = "127.0.0.1"
    port: int = 8000

    # Engine
    engine: Literal["embedded", "vllm"] = "embedded"
    base_model: str = ""  # local path or hub id; empty: build the demo base under data_dir
    base_model_name: str = ""  # name clients use for the bare base; empty: derived
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = 16
    max_model_len: int = 2048
    max_lora_rank: int = 64
    max_loras: int = 64  # adapters resident in the embedded engine at once
    demo_bootstrap: bool = True

    # vLLM backend
    vllm_urls: str = ""  # comma separated
    vllm_api_key: SecretStr | None = None
    vllm_max_adapters_per_replica: int = 8
    vllm_health_interval_s: float = 5.0
    vllm_request_timeout_s: float = 600.0

    # API limits
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 4096
    default_max_tokens: int = 256
    default_rpm: int = 600
    default_tpm: int = 200_000
    redis_url: str = ""
    rate_limit_fail_open: bool = True

    # Feedback and logging
    log_queue_size: int = 10_000
    log_batch_size: int = 500
    log_flush_interval_s: float = 0.2
    feedback_token_secret: SecretStr = SecretStr("dev-only-feedback-secret-change-me")
    feedback_token_ttl_s: int = 4 * 3600

    # Signing
    signing_public_key: Path | None = None  # empty: <data_dir>/signing/signing.pub if present
    signing_private_key: Path | None = None
    signing_mode: Literal["key", "sigstore"] = "key"
    require_signed_adapters: bool = True

    # Admin
    admin_token: SecretStr | None = None

    # Metrics
    metrics_tenant_label: bool = True

    log_level: str = "INFO"
    log_json: bool = True
    log_debug_content: bool = False

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'flywheel.db'}"

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def vllm_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.vllm_urls.split(",") if u.strip()]

    def check_production(self) -> None:
        """Refuse the development secrets outside development."""
        if self.environment == "production":
            if self.feedback_token_secret.get_secret_value().startswith("dev-only"):
                raise ValueError("FLYWHEEL_FEEDBACK_TOKEN_SECRET must be set in production")


@lru_cache
def get_settings() -> Settings:
    return Settings()


__all__ = ["Field", "Settings", "get_settings"]
