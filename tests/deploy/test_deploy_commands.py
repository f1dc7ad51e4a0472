"""The deployment files' and the docs' ``flywheel ...`` command lines, parsed by the real CLI.

Every ``flywheel`` command line written in

* the compose stacks (a service's ``entrypoint`` + ``command``),
* the Kubernetes manifests (a container's ``command`` + ``args``, exec handlers),
* the Dockerfile (``CMD``, ``ENTRYPOINT``, and ``RUN``/``HEALTHCHECK`` lines that call it),
* the shell code blocks (```bash, ```sh, ```shell, ```console) of README.md and docs/*.md,
  including ``flywheel`` run through ``docker``, ``kubectl ... --`` or ``$COMPOSE exec``,

goes through the CLI's own parser (``gateway.cli.main.app``, Typer on click) as written, and
nothing runs: each group resolves its subcommand and each command parses its options and
arguments (``make_context`` with ``resilient_parsing=False``); no callback is called.  A command
or option that does not exist, a missing required option, or a value of the wrong type fails the
test, which names the file and line.  (The CPU compose stack and docs/vllm.md called ``flywheel engine
...`` while the ``engine`` group was not mounted on the CLI, which said "No such command
'engine'" only when a container started.  A self-test below unmounts it again and shows each
of those lines failing.)

Commands mentioned in running text (an inline `flywheel ...` code span in the docs, or in a
deploy file's comments) are often synopses (``[--url]``, ``--tenant T``), so for them only the
names are checked: every subcommand named exists, and every ``--option`` named is one of its
options.

Placeholders stand for values the reader fills in, so they are accepted by any parameter type
but still have to be in a valid position: shell variables (``$KEY``, ``${VAR}``), ``<name>``,
ALL-CAPS words (``--tenant T``, ``--version V``, ``DIR``) and ``...`` as an option's value.
Paths are not checked for existence (the docs' ``./my-lora`` is not here).  ``[--opt value]``
(an optional part) is checked as if written, with the first of ``a|b`` alternatives.  A ``...``
anywhere else elides arguments: it is dropped, and only then may a required parameter be
missing (it may be in the elided part); everything written must still parse.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
import yaml

from gateway.cli import main
from tools.harness import REPO

ROOT = REPO
DEPLOY = ROOT / "deploy"
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "zsh"}
# Commands that run another command given later on their line: `flywheel` after one of these
# (and not as an option's value: `kubectl -n flywheel ...`) is a command, not a name.
WRAPPERS = {"docker", "podman", "kubectl", "sudo", "env", "exec", "time", "nohup", "uv"}
ELLIPSIS = "..."


@dataclass(frozen=True)
class Command:
    source: str  # "path:line", relative to the repository
    argv: tuple[str, ...]  # after `flywheel`
    text: str  # as written (the whole shell line, or the argv joined)

    @property
    def elided(self) -> bool:
        return ELLIPSIS in self.argv

    def __str__(self) -> str:
        return f"{self.source}: `{self.text}`"


# --- finding `flywheel` in a shell line --------------------------------------------------------


def is_flywheel(token: str) -> bool:
    return token == "flywheel" or token.endswith("/bin/flywheel")


def optional_parts(line: str) -> str:
    """``[--opt a|b]`` -> ``--opt a`` and ``[NAME]`` -> ``NAME``: optional parts, written out."""

    def written(m: re.Match[str]) -> str:
        return " ".join(word.split("|")[0] for word in m.group(1).split())

    pattern = r"(?<!\S)\[(-[^\[\]]*|[A-Z][A-Z0-9_]*)\](?!\S)"
    while re.search(pattern, line):
        line = re.sub(pattern, written, line)
    return line


def shell_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line (comments, redirections and operators gone)."""
    line = re.sub(r"<([A-Za-z][\w .-]*)>", r"PLACEHOLDER_\1", line)  # <gateway-pod>, <digest>
    line = re.sub(r"(?<=\s)\d+(?=[<>])", "", line)  # 2>&1: the descriptor goes with the `>`
    lexer = shlex.shlex(optional_parts(line), posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    current: list[str] = []
    redirect = False
    for token in lexer:
        if redirect:
            redirect = False
        elif token and set(token) <= set("<>&"):
            if token not in ("&", "&&"):
                redirect = True  # the next token is the redirection's target
            else:
                yield current
                current = []
        elif token and set(token) <= set(";|()"):
            yield current
            current = []
        else:
            current.append(token)
    yield current


def flywheel_argv(words: list[str]) -> list[str] | None:
    """The arguments after `flywheel` in a simple command, or None when it does not run it."""
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[i]):
        i += 1  # NAME=value assignments before the command
    if i < len(words) and is_flywheel(words[i]):
        return words[i + 1 :]
    if i < len(words) and (words[i] in WRAPPERS or words[i].startswith("$")):
        for j in range(i + 1, len(words)):
            previous = words[j - 1]
            if is_flywheel(words[j]) and (previous == "--" or not previous.startswith("-")):
                return words[j + 1 :]
    return None


def commands_in_shell(line: str, source: str) -> Iterator[Command]:
    for words in shell_commands(line):
        argv = flywheel_argv(words)
        if argv is not None:
            yield Command(source, tuple(argv), " ".join(line.split()))


def commands_in_argv(argv: list[str], source: str) -> Iterator[Command]:
    """An exec-form command line: `flywheel ...`, or a shell running a script."""
    if argv and is_flywheel(argv[0]):
        yield Command(source, tuple(argv[1:]), shlex.join(argv))
    elif len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        for line in argv[2].splitlines():
            yield from commands_in_shell(line, source)


# --- the sources ------------------------------------------------------------------------------


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def scalars(node: yaml.Node | None) -> list[str]:
    if node is None:
        return []
    if isinstance(node, yaml.ScalarNode):
        return shlex.split(node.value)  # compose splits a string command shell-like
    assert isinstance(node, yaml.SequenceNode), node.start_mark
    return [child.value for child in node.value]


def lookup(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    """A key of a YAML mapping, following merge keys (``<<: *anchor``) as YAML does."""
    merged: list[yaml.Node] = []
    for k, v in mapping.value:
        if k.value == key:
            return v
        if k.value == "<<":
            merged += v.value if isinstance(v, yaml.SequenceNode) else [v]
    for other in merged:
        assert isinstance(other, yaml.MappingNode)
        found = lookup(other, key)
        if found is not None:
            return found
    return None


def compose_commands() -> Iterator[Command]:
    for path in sorted((DEPLOY / "compose").glob("docker-compose*.yml")):
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
        services = lookup(root, "services")
        assert isinstance(services, yaml.MappingNode)
        for _, svc in services.value:
            entrypoint, command = lookup(svc, "entrypoint"), lookup(svc, "command")
            if entrypoint is None and command is None:
                continue  # the image's CMD: checked with the Dockerfile
            where = command if command is not None else entrypoint
            assert where is not None
            source = f"{relative(path)}:{where.start_mark.line + 1}"
            yield from commands_in_argv(scalars(entrypoint) + scalars(command), source)


def mappings(node: yaml.Node) -> Iterator[yaml.MappingNode]:
    if isinstance(node, yaml.MappingNode):
        yield node
        for _, value in node.value:
            yield from mappings(value)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            yield from mappings(child)


def k8s_commands() -> Iterator[Command]:
    """Containers (`command` + `args`: the images have no ENTRYPOINT, see below) and exec
    handlers (probes, lifecycle hooks: `command`)."""
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in yaml.compose_all(path.read_text(), Loader=yaml.SafeLoader):
            for mapping in mappings(doc):
                command, args = lookup(mapping, "command"), lookup(mapping, "args")
                if command is None and args is None:
                    continue
                if isinstance(command, yaml.MappingNode) or isinstance(args, yaml.MappingNode):
                    continue  # a field that happens to be called so, not an argv
                where = command if command is not None else args
                assert where is not None
                source = f"{relative(path)}:{where.start_mark.line + 1}"
                yield from commands_in_argv(scalars(command) + scalars(args), source)


def dockerfile_lines() -> Iterator[tuple[int, str]]:
    """(first line number, logical line): continuations joined, comments dropped."""
    pending, start = "", 0
    for number, raw in enumerate((ROOT / "Dockerfile").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        yield start, pending + line
        pending = ""


def dockerfile_commands() -> Iterator[Command]:
    for number, line in dockerfile_lines():
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        source = f"Dockerfile:{number}"
        if keyword == "HEALTHCHECK":
            m = re.search(r"(?:^|\s)CMD\s+(.*)$", rest)
            if m is None:
                continue  # HEALTHCHECK NONE
            keyword, rest = "CMD", m.group(1)
        if keyword == "RUN":
            rest = re.sub(r"^(--\S+\s+)*", "", rest)  # --mount=..., --network=...
        if keyword in ("CMD", "ENTRYPOINT") and rest.startswith("["):
            yield from commands_in_argv(json.loads(rest), source)
        elif keyword in ("CMD", "ENTRYPOINT", "RUN"):
            yield from commands_in_shell(rest, source)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def markdown_commands() -> Iterator[Command]:
    """Shell code blocks.  A block that shows `$ ` prompts has commands only on those lines
    (the rest is their output); a trailing backslash continues a line."""
    for path in markdown_files():
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"\s*(`{3,})\s*(\S*)", lines[i])
            if not fence:
                i += 1
                continue
            close = next(
                (j for j in range(i + 1, len(lines)) if lines[j].strip() == fence.group(1)),
                len(lines),
            )
            if fence.group(2).lower() in SHELL_BLOCKS:
                yield from block_commands(path, lines, i + 1, close)
            i = close + 1


def block_commands(path: Path, lines: list[str], start: int, end: int) -> Iterator[Command]:
    prompted = any(re.match(r"\s*\$ ", lines[k]) for k in range(start, end))
    k = start
    while k < end:
        first = k
        line = lines[k]
        while line.rstrip().endswith("\\") and k + 1 < end:
            k += 1
            line = line.rstrip()[:-1] + " " + lines[k].strip()
        k += 1
        prompt = re.match(r"\s*\$ (.*)", line)
        if prompted and not prompt:
            continue
        yield from commands_in_shell(
            prompt.group(1) if prompt else line, f"{relative(path)}:{first + 1}"
        )


@cache
def all_commands() -> tuple[Command, ...]:
    found: dict[tuple[str, tuple[str, ...]], Command] = {}
    for cmd in [
        *compose_commands(),
        *k8s_commands(),
        *dockerfile_commands(),
        *markdown_commands(),
    ]:
        found.setdefault((cmd.source, cmd.argv), cmd)  # engine-1/engine-2 share one anchor
    return tuple(found.values())


def mention_sources() -> list[Path]:
    suffixes = {".yml", ".yaml", ".sh", ".txt", ".example"}  # not local secrets, not JSON
    deploy = [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and p.suffix in suffixes]
    return [*markdown_files(), ROOT / "Dockerfile", *deploy]


def mentions() -> Iterator[Command]:
    """Inline `flywheel ...` code spans outside code blocks (one line each)."""
    for path in mention_sources():
        text = path.read_text()
        # Fenced blocks are commands, checked in full above; blank them, keeping line numbers.
        text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        for m in re.finditer(r"(?<!`)`((?:\.venv/bin/)?flywheel [^`\n]+)`(?!`)", text):
            line = text.count("\n", 0, m.start()) + 1
            words = optional_parts(m.group(1)).split()[1:]
            yield Command(f"{relative(path)}:{line}", tuple(words), m.group(1))


# --- parsing without running ------------------------------------------------------------------
# Only what click and Typer share is used (Typer 0.29 carries its own copy of click, with
# parameters that convert values themselves): commands, their params' process_value, groups'
# resolve_command, and exceptions recognised by their class names.


def is_placeholder(value: str) -> bool:
    return (
        "$" in value
        or value.startswith("PLACEHOLDER_")
        or value == ELLIPSIS
        or re.fullmatch(r"[A-Z][A-Z0-9_]*", value) is not None
    )


def has_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return is_placeholder(value)
    return isinstance(value, (list, tuple)) and any(has_placeholder(v) for v in value)


def raised(exc: BaseException, name: str) -> bool:
    return any(c.__name__ == name for c in type(exc).__mro__)


def is_group(command: Any) -> bool:
    return hasattr(command, "commands") and hasattr(command, "resolve_command")


def lenient(command: Any) -> Any:
    """Each parameter converts and checks values as it does, except that placeholders pass
    and a path that does not exist here (the docs' ``./my-lora``) is not an error."""
    for param in command.params:
        if not getattr(param, "_lenient", False):
            param.process_value = _lenient_process(param.process_value)
            param._lenient = True
    if is_group(command):
        for sub in command.commands.values():
            lenient(sub)
    return command


def _lenient_process(process: Any) -> Any:
    def process_value(ctx: Any, value: Any) -> Any:
        if has_placeholder(value):
            return value
        try:
            return process(ctx, value)
        except Exception as exc:
            if raised(exc, "BadParameter") and "does not exist" in str(exc):
                return value
            raise

    return process_value


def cli(app: typer.Typer | None = None) -> Any:
    return lenient(typer.main.get_command(app or main.app))


def value_options(command: Any) -> set[str]:
    return {
        opt
        for p in command.params
        if not getattr(p, "is_flag", False) and not getattr(p, "count", False)
        for opt in p.opts
        if opt.startswith("-")
    }


def drop_elisions(argv: list[str], command: Any) -> list[str]:
    """`...` as an option's value is a placeholder; anywhere else it elides arguments."""
    takes_value = value_options(command)
    return [
        a for i, a in enumerate(argv) if a != ELLIPSIS or (i > 0 and argv[i - 1] in takes_value)
    ]


def parse(cmd: Command, root: Any) -> str:
    """Parse like `flywheel <argv>` would, call nothing; returns the command path, or fails
    naming the file and line."""
    command, name, args, parent = root, "flywheel", list(cmd.argv), None
    failure = ""
    try:
        while True:
            if not is_group(command):
                args = drop_elisions(args, command)
            ctx = command.make_context(name, args, parent=parent, resilient_parsing=False)
            if not is_group(command):
                return str(ctx.command_path)
            protected = getattr(ctx, "_protected_args", None)
            if protected is None:  # click before 8.2
                protected = ctx.protected_args
            sub_name, sub, rest = command.resolve_command(ctx, [*protected, *ctx.args])
            assert sub_name is not None and sub is not None
            command, name, args, parent = sub, sub_name, rest, ctx
    except Exception as exc:
        if raised(exc, "Exit"):  # --help
            assert getattr(exc, "exit_code", 0) == 0, f"{cmd}: exits {exc}"
            return name
        if raised(exc, "MissingParameter") and cmd.elided:
            return f"{name} (a required parameter may be in the elided part)"
        if raised(exc, "UsageError"):
            context = getattr(exc, "ctx", None)
            where = f" ({context.command_path})" if context is not None else ""
            failure = f"{cmd}\n  does not parse{where}: {exc.format_message()}"  # type: ignore[attr-defined]
        else:
            raise
    pytest.fail(failure, pytrace=False)  # outside the handler: no chained traceback


def check_names(cmd: Command, root: Any) -> None:
    """A mention's subcommands and ``--options`` exist (its values are not checked)."""
    command, path, words = root, ["flywheel"], list(cmd.argv)
    while is_group(command) and words and not words[0].startswith("-") and words[0] != ELLIPSIS:
        sub = command.commands.get(words[0])
        if sub is None:
            names = ", ".join(sorted(command.commands))
            pytest.fail(
                f"{cmd}\n  `{' '.join(path)}` has no command {words[0]!r} (it has: {names})",
                pytrace=False,
            )
        command = sub
        path.append(words.pop(0))
    if is_group(command):
        return  # a group named as such: `flywheel adapters`
    if "--" in words:
        words = words[: words.index("--")]  # what follows is passed on (engine vllm)
    known = {"--help"}
    for param in command.params:
        known |= {*param.opts, *getattr(param, "secondary_opts", [])}
    named = [o for w in words for o in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", w)]
    unknown = [o for o in named if o not in known]
    if unknown and not (command.context_settings or {}).get("ignore_unknown_options"):
        pytest.fail(
            f"{cmd}\n  `{' '.join(path)}` has no option {', '.join(unknown)} "
            f"(it has: {', '.join(sorted(known))})",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _no_flywheel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options with envvars must not be satisfied by this shell's environment."""
    import os

    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize("cmd", all_commands(), ids=lambda c: f"{c.source}:{' '.join(c.argv[:2])}")
def test_command_parses(cmd: Command) -> None:
    parse(cmd, cli())


@pytest.mark.parametrize("cmd", list(mentions()), ids=lambda c: c.source)
def test_mentioned_command_exists(cmd: Command) -> None:
    check_names(cmd, cli())


# --- the extraction finds what is there ----------------------------------------------------------


def test_every_kind_of_source_is_checked() -> None:
    commands = all_commands()
    sources = {c.source.split(":")[0] for c in commands}
    assert "Dockerfile" in sources
    assert {"README.md", "docs/deployment.md", "docs/vllm.md"} <= sources
    assert any(s.startswith("deploy/compose/") for s in sources)
    assert any(s.startswith("deploy/k8s/") for s in sources)
    by_argv = {(c.source.split(":")[0], c.argv[:2]) for c in commands}
    expected = [
        ("deploy/compose/docker-compose.cpu.yml", ("engine", "local")),
        ("deploy/compose/docker-compose.cpu.yml", ("base", "prepare")),
        ("deploy/compose/docker-compose.gpu.yml", ("db", "upgrade")),
        ("deploy/k8s/migrate-job.yaml", ("db", "upgrade")),
        ("Dockerfile", ("serve",)),
        ("Dockerfile", ("retrain", "worker")),
        ("Dockerfile", ("base", "fetch")),
        ("docs/vllm.md", ("engine", "vllm")),
        ("docs/deployment.md", ("tenants", "create")),  # through `$COMPOSE exec gateway`
        ("docs/deployment.md", ("adapters", "promote")),  # through `kubectl exec ... --`
    ]
    for source, argv in expected:
        assert (source, argv) in by_argv or (source, argv[:1]) in by_argv, (source, argv)


def test_images_have_no_entrypoint() -> None:
    """The argv composition above (compose: entrypoint + command; Kubernetes: command + args;
    neither given: CMD) holds because no image target has an ENTRYPOINT."""
    assert not [line for _, line in dockerfile_lines() if line.upper().startswith("ENTRYPOINT")]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("flywheel serve --workers 4   # comment", ["serve", "--workers", "4"]),
        (".venv/bin/flywheel demo loop", ["demo", "loop"]),
        ("FLYWHEEL_ENGINE=vllm flywheel serve > log.txt 2>&1", ["serve"]),
        ("$COMPOSE exec gateway flywheel tenants create acme", ["tenants", "create", "acme"]),
        (
            "kubectl -n flywheel exec <pod> -- flywheel adapters list --tenant T",
            ["adapters", "list", "--tenant", "T"],
        ),
        ("kubectl -n flywheel cp ./a <pod>:/b", None),
        ("docker build --target gateway -t flywheel/gateway:0.1.0 .", None),
        ("useradd --gid flywheel --shell /usr/sbin/nologin flywheel", None),
        ("make base && flywheel base verify", ["base", "verify"]),
        (
            "flywheel retrain worker [--poll 10] [--method auto|dpo]",
            ["retrain", "worker", "--poll", "10", "--method", "auto"],
        ),
    ],
)
def test_finding_flywheel_in_a_shell_line(line: str, expected: list[str] | None) -> None:
    found = [list(c.argv) for c in commands_in_shell(line, "x:1")]
    assert found == ([expected] if expected is not None else [])


# --- the check fails where it should ------------------------------------------------------------


def check_fails(argv: list[str], match: str, root: Any = None) -> None:
    cmd = Command("example.md:1", tuple(argv), "flywheel " + " ".join(argv))
    with pytest.raises(pytest.fail.Exception, match=match):
        parse(cmd, root or cli())


def test_the_check_catches_an_unmounted_command_group() -> None:
    """The bug it is for: every deploy file and doc called `flywheel engine ...` while the CLI
    did not mount the group.  With `engine` unmounted again, each of those lines fails."""
    unmounted = typer.Typer()
    unmounted.registered_commands = list(main.app.registered_commands)
    unmounted.registered_groups = [g for g in main.app.registered_groups if g.name != "engine"]
    root = cli(unmounted)
    engine = [c for c in all_commands() if c.argv[:1] == ("engine",)]
    assert {c.source.split(":")[0] for c in engine} >= {
        "deploy/compose/docker-compose.cpu.yml",
        "docs/vllm.md",
    }
    for cmd in engine:
        parse(cmd, cli())  # mounted: parses
        with pytest.raises(pytest.fail.Exception, match=r"No such command 'engine'"):
            parse(cmd, root)


def test_the_check_catches_unknown_options_bad_values_and_missing_ones() -> None:
    promote = ["adapters", "promote", "--tenant", "T", "--adapter", "N"]
    parse(Command("x:1", (*promote, "--version", "V"), ""), cli())  # a placeholder: accepted
    parse(Command("x:1", (*promote, "--version", "2"), ""), cli())
    check_fails([*promote, "--version", "two"], r"Invalid value for '--version'.*integer")
    check_fails([*promote, "--versoin", "2"], r"No such option: --versoin")
    check_fails(["adapters", "promote", "--tenant", "T", "--version", "2"], r"--adapter")
    check_fails(["engine", "locale"], r"No such command 'locale'")
    check_fails(["engine", "local", "--port"], r"--port")
    # An elision excuses what may be elided (a required option), never what is written.
    elided = Command("x:1", ("adapters", "promote", ELLIPSIS, "--version", "2"), "")
    assert "elided" in parse(elided, cli())
    check_fails(["adapters", "promote", ELLIPSIS, "--versoin", "2"], r"No such option: --versoin")
    check_fails(["adapters", "promote", ELLIPSIS, "--version", "two"], r"integer")
    # (`flywheel engine vllm` passes options it does not know on to vLLM, as documented.)
    parse(Command("x:1", ("engine", "vllm", "--base", "B", "--", "--dtype", "bfloat16"), ""), cli())


def test_the_name_check_catches_unknown_commands_and_options() -> None:
    check_names(Command("x:1", ("demo", "loop", "--url"), ""), cli())
    check_names(Command("x:1", ("engine",), ""), cli())
    with pytest.raises(pytest.fail.Exception, match=r"no option --rounds"):
        check_names(Command("x:1", ("demo", "loop", "--url", "--rounds"), ""), cli())
    with pytest.raises(pytest.fail.Exception, match=r"`flywheel` has no command 'engines'"):
        check_names(Command("x:1", ("engines", "local"), ""), cli())
    spans = {(c.source.split(":")[0], c.argv[:2]) for c in mentions()}
    assert ("docs/cli.md", ("engine", "vllm")) in spans
    assert ("Dockerfile", ("engine", "local")) in spans
