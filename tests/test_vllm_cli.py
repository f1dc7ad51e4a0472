"""`flywheel engine vllm`: the printed `vllm serve` command line (vllm itself is not needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from gateway.cli.engine import app, vllm_argv


def test_prints_the_command_with_runtime_lora_on() -> None:
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
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve org/model --enable-lora --max-loras 2 "
        "--max-lora-rank 16 --max-cpu-loras 12 --port 8011"
    )


def test_defaults_follow_the_gateway_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import get_settings

    monkeypatch.setenv("FLYWHEEL_VLLM_MAX_ADAPTERS_PER_REPLICA", "24")
    monkeypatch.setenv("FLYWHEEL_MAX_LORA_RANK", "32")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["vllm", "--base", "m", "--", "--tensor-parallel-size", "2"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "--max-cpu-loras 24 " in result.output and "--max-lora-rank 32 " in result.output
    assert result.output.rstrip().endswith("--tensor-parallel-size 2")


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
