"""What docs/cli.md promises of every command: a usage error is one line on stderr and exit 1
(exit 2 is `flywheel gate run`'s "rejected"), and an adapter is named `--adapter` everywhere a
version is named."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app


def flywheel(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), prog_name="flywheel")
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (["adapters", "verify", "--tenant", "t"], "Missing option '--adapter'", "adapters verify"),
        (["adapters", "list", "--tenantt", "t"], "No such option: --tenantt", "adapters list"),
        (["no-such-command"], "No such command 'no-such-command'", ""),
        (["--bogus"], "No such option: --bogus", ""),
        (
            ["gate", "run", "--tenant", "t", "--adapter", "a", "--version", "two"],
            "Invalid value for '--version'",
            "gate run",
        ),
        (  # a value the command itself refuses (typer.BadParameter raised inside it)
            ["retrain", "run", "--tenant", "t", "--adapter", "a", "--method", "magic"],
            "--method must be auto or one of",
            "retrain run",
        ),
        (
            ["tenants", "update", "t", "--retrain-max-age-hours", "0"],
            "--retrain-max-age-hours must be a number of hours above 0",
            "tenants update",
        ),
        (
            ["adapters", "add", "--tenant", "t", "--adapter", "a", "/no/such/dir"],
            "'/no/such/dir' does not exist",
            "adapters add",
        ),
    ],
)
def test_a_usage_error_is_one_line_on_stderr_and_exit_1(
    args: list[str], message: str, command: str
) -> None:
    code, stdout, stderr = flywheel(*args)
    assert code == 1, (code, stderr)
    assert stdout == ""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr  # one line
    assert stderr.startswith("error: ") and message in stderr, stderr
    assert f"see '{' '.join(['flywheel', command]).strip()} --help'" in stderr
    assert not set(stderr) & set("╭│╰─"), stderr  # no framed box


def test_a_group_without_its_command_prints_its_help_and_fails() -> None:
    code, stdout, stderr = flywheel("adapters")
    assert code == 1
    assert all(name in stdout + stderr for name in ("add", "verify", "promote", "rollback"))


def test_help_still_succeeds() -> None:
    code, stdout, _ = flywheel("adapters", "verify", "--help")
    assert code == 0 and "--adapter" in stdout and "--version" in stdout


@pytest.mark.usefixtures("cli_database")
def test_verify_names_the_adapter_like_promote_and_gate(demo_adapters: list[Path]) -> None:
    """`--adapter` as in promote/rollback/sign/golden/gate/retrain; `--name`, its old spelling,
    still works for scripts written against it, and `adapters add` takes both too."""
    tenant = f"verify-{uuid.uuid4().hex[:8]}"
    code, _, stderr = flywheel("tenants", "create", tenant)
    assert code == 0, stderr
    add = ("adapters", "add", "--tenant", tenant, "--sign")
    code, stdout, stderr = flywheel(*add, "--adapter", "support", str(demo_adapters[0]))
    assert code == 0 and stdout.startswith("support@1 "), stderr
    code, stdout, stderr = flywheel(*add, "--name", "support", str(demo_adapters[1]))
    assert code == 0 and stdout.startswith("support@2 "), stderr

    for spelling in ("--adapter", "--name"):
        code, stdout, stderr = flywheel(
            "adapters", "verify", "--tenant", tenant, spelling, "support", "--version", "2"
        )
        assert code == 0, stderr
        assert stdout.startswith("support@2: signature OK"), stdout

    code, _, stderr = flywheel(
        "adapters", "verify", "--tenant", tenant, "--adapter", "support", "--version", "9"
    )
    assert code == 1 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr


def test_verify_from_the_cli_is_audited_like_the_admin_api(
    cli_database: str, demo_adapters: list[Path]
) -> None:
    """One use case (gateway.services.adapters.verify_recorded) behind both surfaces: the CLI's
    verify writes the same audit rows as POST /admin/.../verify, a failure included."""
    import asyncio

    from sqlalchemy import select

    from gateway.core.db.models import AuditEvent
    from gateway.core.db.session import Database

    tenant = f"audit-{uuid.uuid4().hex[:8]}"
    assert flywheel("tenants", "create", tenant)[0] == 0
    add = ("adapters", "add", "--tenant", tenant, "--adapter", "bot")
    assert flywheel(*add, str(demo_adapters[0]))[0] == 0  # unsigned: verify must fail
    assert flywheel(*add, "--sign", str(demo_adapters[1]))[0] == 0
    verify = ("adapters", "verify", "--tenant", tenant, "--adapter", "bot", "--version")
    assert flywheel(*verify, "1")[0] == 1
    assert flywheel(*verify, "2")[0] == 0

    async def rows() -> list[tuple[str, str, dict[str, object]]]:
        db = Database(cli_database)
        try:
            async with db.session() as session:
                events = await session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.action == "adapter.verify")
                    .where(AuditEvent.target.like(f"{tenant}/%"))
                    .order_by(AuditEvent.id)
                )
                return [(e.target, e.actor, e.detail or {}) for e in events]
        finally:
            await db.close()

    (failed, passed) = asyncio.run(rows())
    assert failed[0] == f"{tenant}/bot@1" and failed[2]["verified"] is False
    assert passed[0] == f"{tenant}/bot@2" and passed[2] == {"verified": True}
    assert failed[1].startswith("cli:") and passed[1].startswith("cli:")
