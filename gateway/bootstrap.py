"""First-start work: the base model, the development signing key, and the demo tenants."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from adapters.validate import BaseSpec, base_spec
from gateway.config import Settings
from gateway.db.models import Tenant
from gateway.db.session import Database
from gateway.engine.base import AdapterRef, Verifier

log = logging.getLogger("flywheel.bootstrap")

# FLYWHEEL_BASE_MODEL values that name a built-in base rather than a path or hub id.
DEFAULT_BASE = "smollm2-135m-instruct"  # the real default, from a registry package
TINY_BASE = "tiny-random"  # random weights, seconds to build: for fast unit tests only
DEMO_BASE_NAME = "flywheel-demo-base"
# (tenant, seed for a random adapter on the tiny base, house style trained on a real base)
DEMO_TENANTS = (("demo-acme", 1, "terse"), ("demo-globex", 2, "globex"))
DEMO_ADAPTER = "support"


@dataclass(frozen=True)
class BaseModel:
    path: Path
    name: str

    def spec(self) -> BaseSpec:
        return base_spec(self.path, self.name)


def resolve_base(settings: Settings, *, build: bool = True) -> BaseModel:
    """The configured base: SmolLM2 by default, the tiny random base, a local path or hub id.

    SmolLM2 is converted once from the wheel that ``make base`` fetched, then verified against
    its manifest on every start; nothing is downloaded here.
    """
    choice = settings.base_model or DEFAULT_BASE
    if choice == DEFAULT_BASE:
        from adapters.base_models import SMOLLM2, convert, verify

        path = settings.data_dir / "models" / DEFAULT_BASE
        if build:
            if (path / "config.json").exists():
                verify(path)
            else:
                log.info("converting %s into %s (first start only)", SMOLLM2.name, path)
                convert(path, SMOLLM2)
        return BaseModel(path, settings.base_model_name or SMOLLM2.name)
    if choice == TINY_BASE:
        path = settings.data_dir / "models" / "demo-base"
        if build:
            from adapters.demo import build_demo_base

            build_demo_base(path)
        return BaseModel(path, settings.base_model_name or DEMO_BASE_NAME)
    local = Path(choice).expanduser()
    if local.exists():
        return BaseModel(local.resolve(), settings.base_model_name or local.name)
    # A hub id: use the local cache only; nothing is downloaded at run time.
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(choice, local_files_only=True))
    return BaseModel(path, settings.base_model_name or choice)


def signing_keys(settings: Settings) -> tuple[Path | None, Path | None]:
    """(private, public) key paths; in development a keypair is created under data_dir."""
    default_dir = settings.data_dir / "signing"
    private = settings.signing_private_key or default_dir / "signing.key"
    public = settings.signing_public_key or default_dir / "signing.pub"
    if (
        settings.environment == "development"
        and not public.exists()
        and settings.signing_public_key is None
    ):
        from adapters.signing import generate_keypair

        private, public = generate_keypair(default_dir)
        log.info("created a development signing keypair in %s", default_dir)
    return (private if private.exists() else None, public if public.exists() else None)


def adapter_signer(settings: Settings) -> Callable[[Path], Path] | None:
    """Sign an adapter directory the way this deployment signs; None where it cannot sign.

    ``key`` mode signs with the ops private key (absent on gateway hosts, by design);
    ``sigstore`` mode signs keylessly (an OIDC identity, Fulcio, Rekor: needs the network).
    The callable returns the signature's path, written beside (never inside) the directory.
    """
    from adapters.signing import sign_adapter, sign_adapter_sigstore, signature_path_for

    if settings.signing_mode == "sigstore":
        token = settings.signing_identity_token
        return lambda path: sign_adapter_sigstore(
            path,
            signature_path_for(path),
            use_staging=settings.signing_sigstore_staging,
            identity_token=token.get_secret_value() if token else None,
        )
    private, _ = signing_keys(settings)
    if private is None:
        return None
    return lambda path: sign_adapter(path, private, signature_path_for(path))


def adapter_verifier(
    settings: Settings,
    on_refused: Callable[[AdapterRef, str], None] | None = None,
    *,
    required: bool | None = None,
) -> Verifier:
    """The signature check every engine runs before a load (key or Sigstore, per settings)."""
    from adapters.signing import SigstoreIdentity, make_verifier

    required = settings.require_signed_adapters if required is None else required
    if settings.signing_mode == "sigstore":
        identity = SigstoreIdentity(
            *settings.sigstore_identity(), use_staging=settings.signing_sigstore_staging
        )
        return make_verifier(None, required=required, on_refused=on_refused, sigstore=identity)
    _, public = signing_keys(settings)
    return make_verifier(public, required=required, on_refused=on_refused)


def check_signature(settings: Settings, path: Path, version_id: str) -> None:
    """Verify a stored adapter's signature now; raises AdapterLoadRefused when it fails."""
    adapter_verifier(settings, required=True)(AdapterRef("verify", path, version_id))


async def demo_bootstrap(
    db: Database, settings: Settings, base: BaseModel
) -> list[tuple[str, str]]:
    """On an empty database, create two demo tenants, each with its own signed adapter.

    Returns (tenant, key) pairs; the keys are printed once by the caller and never stored.
    """
    from adapters.registry import add_version
    from gateway.services.tenants import create_key, create_tenant

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
    from adapters.demo import build_demo_adapter, is_demo_base

    if is_demo_base(base.path):
        src = settings.data_dir / "models" / f"demo-adapter-{seed}"
        if not (src / "adapter_config.json").exists():
            build_demo_adapter(base.path, src, seed=seed)
        return src
    from retrain.demo import train_style_adapter

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
