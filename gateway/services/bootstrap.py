"""First-start work: the demo tenants (the base model and the signing key are the adapters
domain's: adapters/base_models.py, adapters/signing.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from sqlalchemy import func, select

from adapters.base_models import BaseModel
from adapters.demo import build_demo_adapter
from adapters.registry import add_version
from adapters.signing import adapter_signer
from gateway.core.config import Settings
from gateway.core.db.models import Tenant
from gateway.core.db.session import Database
from gateway.core.tenants import create_key, create_tenant
from gateway.engine.base import is_demo_base

log = logging.getLogger("flywheel.bootstrap")

# (tenant, seed for a random adapter on the tiny base, house style trained on a real base)
DEMO_TENANTS = (("demo-acme", 1, "terse"), ("demo-globex", 2, "globex"))
DEMO_ADAPTER = "support"


async def demo_bootstrap(
    db: Database, settings: Settings, base: BaseModel
) -> list[tuple[str, str]]:
    """On an empty database, create two demo tenants, each with its own signed adapter.

    Returns (tenant, key) pairs; the keys are printed once by the caller and never stored.
    """
    async with db.session() as session:
        if await session.scalar(select(func.count()).select_from(Tenant)):
            return []
    sources = [
        await asyncio.to_thread(_demo_adapter, settings, base, seed, style)
        for _, seed, style in DEMO_TENANTS
    ]
    signer = adapter_signer(settings)
    created: list[tuple[str, str]] = []
    async with db.transaction() as session:
        for (name, _, _), src in zip(DEMO_TENANTS, sources, strict=True):
            tenant = await create_tenant(session, name)
            _, secret = await create_key(session, tenant)
            version = await add_version(
                session,
                tenant,
                DEMO_ADAPTER,
                src,
                base=base.spec(),
                artifact_dir=settings.artifact_dir,
                max_rank=settings.max_lora_rank,
                actor="bootstrap",
            )
            if signer is not None:
                version.signature_path = str(signer(Path(version.path)))
            created.append((name, secret))
    return created


def _demo_adapter(settings: Settings, base: BaseModel, seed: int, style: str) -> Path:
    """A demo tenant's adapter: a random LoRA on the tiny base, a trained house style on a real
    one (random weights would turn real text into garbage). Built once under data_dir."""
    if is_demo_base(base.path):
        src = settings.data_dir / "models" / f"demo-adapter-{seed}"
        if not (src / "adapter_config.json").exists():
            build_demo_adapter(base.path, src, seed=seed)
        return src
    from retrain.demo import train_style_adapter  # deferred: TRL and torch, real bases only

    src = settings.data_dir / "models" / f"demo-adapter-{style}"
    if not (src / "adapter_config.json").exists():
        log.info("training the demo %r house style on %s (first start only)", style, base.name)
        result = train_style_adapter(base.path, src, style)  # type: ignore[arg-type]
        log.info("demo %r adapter trained in %.0f s", style, sum(result.timings.values()))
    return src


def print_demo_keys(created: list[tuple[str, str]]) -> None:
    if not created:
        return
    lines = ["", "Demo tenants created. Their API keys are shown once, now:"]
    lines += [f"  {name:<12} {key}   (model: {DEMO_ADAPTER!r})" for name, key in created]
    lines.append("")
    print("\n".join(lines), file=sys.stdout, flush=True)
