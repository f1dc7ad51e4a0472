"""Content-addressed artifact store for adapter directories.

An adapter version lives at ``<artifact_dir>/sha256/<digest>/`` and is never overwritten:
engines (vLLM in particular) re-read adapter files after evicting them from their caches, so
files must stay put while any engine may hold the name.  Its signature, when there is one,
lives beside it as ``<digest>.sig.json`` (outside the directory, or verification would see an
extra file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Files PEFT writes that carry no weights; copied when present, ignored in the digest so a
# README edit does not make a new version.
OPTIONAL_FILES = ("README.md",)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def adapter_digest(src: Path) -> str:
    """Digest over the required files' names and contents."""
    h = hashlib.sha256()
    for name in REQUIRED_FILES:
        h.update(name.encode() + b"\0" + _sha256_file(src / name).encode() + b"\n")
    return h.hexdigest()


def store_adapter(src: Path, artifact_dir: Path) -> tuple[str, Path]:
    """Copy ``src`` into the store; return (digest, stored path).  Idempotent per content."""
    digest = adapter_digest(src)
    root = artifact_dir / "sha256"
    dest = root / digest
    if dest.exists():
        return digest, dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
    try:
        for name in REQUIRED_FILES + OPTIONAL_FILES:
            if (src / name).exists():
                shutil.copyfile(src / name, tmp / name)
                os.chmod(tmp / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process stored the same content first; theirs is identical.
            if not dest.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest, dest
