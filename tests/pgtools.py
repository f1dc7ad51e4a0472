"""A throwaway PostgreSQL server for tests that stop and restart the database.

It runs from the server binaries on this machine (``/usr/lib/postgresql/*/bin``), with its data
directory and unix socket under a fresh temporary directory and a free TCP port on 127.0.0.1,
so it never touches the shared server on 5432.  PostgreSQL refuses to run as root; when the
tests run as root, the server runs as the ``postgres`` system user instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools.harness import free_port

SERVER_USER = "postgres"


def find_bin(name: str) -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    return Path(found) if found else None


def available() -> bool:
    if find_bin("initdb") is None or find_bin("pg_ctl") is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return False
    return True


class ThrowawayPostgres:
    """initdb + pg_ctl start/stop; ``url(db)`` for SQLAlchemy; ``destroy()`` removes it all."""

    def __init__(self) -> None:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        # Under /tmp rather than pytest's tmp_path: that one is private to root (0700) and the
        # server user could not enter it.
        self.root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            for path in (self.root,):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self._run(self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run_as_owner(["mkdir", "-p", str(self.socket_dir)])

    def _run(self, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            check=check,
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=120,
            **self._as_user,
        )

    def _run_as_owner(self, args: list[str]) -> None:
        subprocess.run(args, check=True, **self._as_user)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.socket_dir} "
            # fsync=off: an OS crash is not under test, a crash of the server is, and written
            # WAL survives that in the page cache.  synchronous_commit must stay on: an
            # acknowledged commit must survive the "immediate" (crash) stop.
            "-c fsync=off"
        )
        self._run(
            self.pg_ctl,
            "-D",
            self.data,
            "-l",
            self.logfile,
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast`` shuts down cleanly; ``immediate`` is a crash (connections dropped at once)."""
        self._run(self.pg_ctl, "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)

    def is_running(self) -> bool:
        return self._run(self.pg_ctl, "-D", self.data, "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _psql(self, sql: str) -> None:
        psql = find_bin("psql")
        if psql is None:
            raise RuntimeError("psql not found")
        self._run(
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            self.port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )

    def destroy(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
