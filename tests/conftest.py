"""Shared fixtures: a demo base model and demo adapters built locally once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adapters.demo import build_demo_base

    return build_demo_base(tmp_path_factory.mktemp("models") / "demo-base")


@pytest.fixture(scope="session")
def demo_adapters(demo_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight demo LoRA adapters with different seeds (so different outputs)."""
    from adapters.demo import build_demo_adapter

    root = tmp_path_factory.mktemp("adapters")
    return [build_demo_adapter(demo_base, root / f"a{i}", seed=100 + i) for i in range(8)]
