"""The FastAPI application and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from adapters.base_models import resolve_base
from adapters.promotion import Promoter
from adapters.signing import adapter_verifier
from feedback.log import CompletionLog
from feedback.pending import SharedPending
from gateway.api import errors as api_errors
from gateway.api import health
from gateway.api import openapi as api_openapi
from gateway.api.admin.router import router as admin_router
from gateway.api.console import router as console_router
from gateway.api.feedback.router import router as feedback_router
from gateway.api.middleware import RequestIdMiddleware
from gateway.api.openai.router import completions_router
from gateway.api.openai.router import router as openai_router
from gateway.core import metrics
from gateway.core.admin_tokens import admin_token_location, ensure_dev_admin_token
from gateway.core.audit import refused_load_recorder
from gateway.core.cache import StaleIfErrorCache
from gateway.core.config import Settings, get_settings
from gateway.core.db.migrate import upgrade
from gateway.core.db.session import Database
from gateway.core.logs import configure_logging
from gateway.core.ratelimit import InMemoryRateLimiter, RateLimiter
from gateway.core.ratelimit_redis import RedisRateLimiter
from gateway.core.redis import redis_client
from gateway.engine.base import Engine
from gateway.engine.vllm import VLLMEngine
from gateway.services.bootstrap import demo_bootstrap, print_demo_keys
from gateway.state import AppState

log = logging.getLogger("flywheel")


async def build_engine(settings: Settings, db: Database) -> Engine:

    verifier = adapter_verifier(
        settings, on_refused=refused_load_recorder(db, asyncio.get_running_loop())
    )
    if settings.engine == "vllm":
        return VLLMEngine(settings, verifier=verifier)
    # deferred: torch and transformers, for the embedded engine only
    from gateway.engine.embedded import EmbeddedEngine

    base = await asyncio.to_thread(resolve_base, settings)
    return EmbeddedEngine.from_settings(settings, base.path, base.name, verifier=verifier)


def build_limiter(settings: Settings, redis: Redis | None) -> RateLimiter:
    if redis is not None:
        return RedisRateLimiter(redis, fail_open=settings.rate_limit_fail_open)
    return InMemoryRateLimiter()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:

    settings: Settings = app.state.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics.configure(settings.metrics_tenant_label)
    db = Database(settings.resolved_database_url, pool_timeout=settings.database_pool_timeout_s)
    await upgrade(db.engine)
    engine = await build_engine(settings, db)
    completions = CompletionLog(
        db,
        spool_dir=settings.data_dir / "spool",
        queue_size=settings.log_queue_size,
        batch_size=settings.log_batch_size,
        flush_interval_s=settings.log_flush_interval_s,
        claim_spool=True,  # one spool per worker process (flywheel serve --workers)
    )
    # One Redis client (one bounded pool) for the rate limiter and the pending marks.
    redis = (
        redis_client(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            pool_timeout_s=settings.redis_pool_timeout_s,
        )
        if settings.redis_url
        else None
    )
    limiter = build_limiter(settings, redis)
    pending = (
        SharedPending(redis, ttl_s=settings.pending_completion_ttl_s) if redis is not None else None
    )
    try:
        await engine.start()
        if settings.bootstraps_demo:
            base = await asyncio.to_thread(resolve_base, settings)
            print_demo_keys(await demo_bootstrap(db, settings, base))
        await completions.start()
        async with db.transaction() as session:
            await ensure_dev_admin_token(session, settings)
        console = f"{settings.resolved_gateway_url}/console" if settings.console else "off"
        log.info("console: %s; admin token: %s", console, admin_token_location(settings))
        app.state.flywheel = AppState(
            settings=settings,
            db=db,
            engine=engine,
            limiter=limiter,
            completions=completions,
            auth_cache=StaleIfErrorCache(settings.auth_cache_ttl_s),
            route_cache=StaleIfErrorCache(settings.route_cache_ttl_s),
            models_cache=StaleIfErrorCache(settings.route_cache_ttl_s),
            promoter=Promoter(db, engine),
            pending=pending,
        )
        yield
    finally:
        # Order matters: stop taking work, then flush the log while the database is still open.
        await engine.stop()
        await completions.stop()
        await limiter.close()
        if pending is not None:
            await pending.close()
        if redis is not None:
            await redis.aclose()
        await db.close()
        metrics.process_exited()


def create_app(settings: Settings | None = None) -> FastAPI:

    app = FastAPI(
        title="Flywheel",
        version="0.1.0",
        summary="OpenAI-compatible multi-LoRA gateway with a feedback loop",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    app.add_middleware(RequestIdMiddleware)
    api_errors.install(app)
    api_openapi.install(app)
    app.include_router(health.router)
    app.include_router(completions_router)
    app.include_router(openai_router)
    app.include_router(feedback_router)
    app.include_router(admin_router)
    if app.state.settings.console:
        app.include_router(console_router)
    return app


def worker_app() -> FastAPI:
    """The app of one ``flywheel serve --workers N`` process (uvicorn's factory): each worker
    is a fresh interpreter, so it configures its own logging from the same settings."""

    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)
