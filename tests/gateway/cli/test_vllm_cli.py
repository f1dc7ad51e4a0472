"""`flywheel engine vllm`: the printed vLLM server command line (vllm itself is not needed).

Starting a real replica with `--exec` is tests/e2e/test_vllm_cpu.py (vLLM's CPU build)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gateway.cli.engine import VLLM_CPU_VERSION, app, vllm_argv, vllm_python
from gateway.core.config import get_settings
from tools.harness import REPO


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_prints_the_command_with_runtime_lora_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_VLLM_PYTHON", "/opt/vllm/bin/python")
    result = CliRunner().invoke(
        app,
        [
            "vllm",
            "--base",
            "org/model",
            "--max-loras",
            "2",
            "--max-lora-rank",
            "16",
            "--max-cpu-loras",
            "12",
            "--port",
            "8011",
        ],
    )
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line == (
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True /opt/vllm/bin/python -m "
        "vllm.entrypoints.openai.api_server --model org/model --enable-lora --max-loras 2 "
        "--max-lora-rank 16 --max-cpu-loras 12 --port 8011 "
        "--enable-auto-tool-choice --tool-call-parser hermes --tool-strict-level parameter"
    )


def test_defaults_follow_the_gateway_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_VLLM_MAX_ADAPTERS_PER_REPLICA", "24")
    monkeypatch.setenv("FLYWHEEL_MAX_LORA_RANK", "32")
    result = CliRunner().invoke(app, ["vllm", "--base", "m", "--", "--tensor-parallel-size", "2"])
    assert result.exit_code == 0, result.output
    assert "--max-cpu-loras 24 " in result.output and "--max-lora-rank 32 " in result.output
    assert result.output.rstrip().endswith("--tensor-parallel-size 2")


def test_tool_flags_follow_the_parser() -> None:
    """The strict level goes with the parser (vLLM reads it only for structural-tag tool calls);
    without a parser neither is passed, and a level vLLM does not know is refused here."""
    argv = vllm_argv(
        "m", port=1, max_loras=1, max_lora_rank=8, max_cpu_loras=1, tool_strict_level="auto"
    )
    assert argv[-5:] == [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--tool-strict-level",
        "auto",
    ]
    bare = vllm_argv(
        "m", port=1, max_loras=1, max_lora_rank=8, max_cpu_loras=1, tool_call_parser=""
    )
    assert not any(a.startswith("--tool") or a == "--enable-auto-tool-choice" for a in bare)
    with pytest.raises(typer.BadParameter, match="--tool-strict-level"):
        vllm_argv(
            "m", port=1, max_loras=1, max_lora_rank=8, max_cpu_loras=1, tool_strict_level="all"
        )
    result = CliRunner().invoke(app, ["vllm", "--base", "m", "--tool-strict-level", "function"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("--tool-call-parser hermes --tool-strict-level function")


def test_cpu_cache_smaller_than_gpu_slots_is_refused() -> None:
    with pytest.raises(typer.BadParameter):
        vllm_argv("m", port=1, max_loras=8, max_lora_rank=8, max_cpu_loras=4)


def test_module_is_runnable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.engine", "local", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--max-loras" in done.stdout


def test_the_interpreter_is_the_cpu_venv_once_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv = tmp_path / "vllm-cpu"
    monkeypatch.setenv("FLYWHEEL_VLLM_VENV", str(venv))
    assert vllm_python() == "python3"  # nothing built there
    (venv / "bin").mkdir(parents=True)
    assert vllm_python() == "python3"  # half built: no stamp, never used
    (venv / f".flywheel-vllm-cpu-{VLLM_CPU_VERSION}").touch()
    assert vllm_python() == str(venv / "bin" / "python")
    assert vllm_python("/usr/bin/python3.12") == "/usr/bin/python3.12"  # the setting wins
    monkeypatch.delenv("FLYWHEEL_VLLM_PYTHON", raising=False)
    result = CliRunner().invoke(app, ["vllm", "--base", "m"])
    assert result.output.split()[1:4] == [
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]


def test_the_cpu_version_is_the_one_make_vllm_builds() -> None:
    script = REPO / "deploy" / "vllm-cpu" / "build-venv.sh"
    built = re.search(r'VLLM_CPU_VERSION="\$\{VLLM_CPU_VERSION:-([^}]+)\}"', script.read_text())
    assert built is not None and built.group(1) == VLLM_CPU_VERSION


def test_exec_without_an_interpreter_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_VLLM_PYTHON", "/nonexistent/bin/python")
    result = CliRunner().invoke(app, ["vllm", "--base", "m", "--exec"])
    assert result.exit_code == 1
    assert "make vllm" in result.output and "FLYWHEEL_VLLM_PYTHON" in result.output
