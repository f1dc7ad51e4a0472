"""Every CLI module's command group is reachable from `flywheel` (engine was once not)."""

from __future__ import annotations

import importlib
import pkgutil

import typer
from typer.main import get_command

import gateway.cli
from gateway.cli.main import app


def _groups() -> dict[str, typer.Typer]:
    found = {}
    for info in pkgutil.iter_modules(gateway.cli.__path__):
        module = importlib.import_module(f"gateway.cli.{info.name}")
        sub = getattr(module, "app", None)
        if isinstance(sub, typer.Typer) and sub is not app:
            found[info.name] = sub
    return found


def test_every_cli_group_is_mounted() -> None:
    mounted = {group.typer_instance for group in app.registered_groups}
    missing = sorted(name for name, sub in _groups().items() if sub not in mounted)
    assert not missing, f"CLI modules whose commands `flywheel` cannot reach: {missing}"


def test_the_documented_top_level_commands_exist() -> None:
    command = get_command(app)
    names = set(command.commands)  # type: ignore[attr-defined]
    assert {"serve", "engine", "base", "retrain", "demo", "adapters", "golden"} <= names
    assert len(_groups()) >= 12
