"""The completion journal: each completion row reaches the kernel before its answer is sent.

The completion log batches rows in memory for up to ``log_flush_interval_s`` before they reach
the database.  A process killed in that window (SIGKILL, the OOM killer, a segfault) would lose
rows whose clients already have a 200, and with them the join that exports feedback.  So
``CompletionLog.submit`` first appends the row, as one ``write(2)`` of one JSON line, to a
journal file in the process's own spool directory.  Data handed to the kernel survives the
death of the process; it does not survive the machine losing power (that would need an fsync
per request, on the request path: PostgreSQL's own ``synchronous_commit`` trade).

A row is *resolved* once it is committed to the database, fsynced into the spool, or kept in
``rejected.jsonl``; a journal file whose rows are all resolved is unlinked.  A file still on
disk when the spool is next claimed is what a crashed process left: ``CompletionLog.start``
hands it to the spool as a segment, and the spool's replay (idempotent by primary key) lands
each of its rows exactly once.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from feedback.spool import encode

log = logging.getLogger("flywheel.journal")

Key = tuple[str, str]  # (tenant_id, completion id)
JOURNAL_GLOB = "journal-*.jsonl"
# A file is closed after this many rows even if some are unresolved, so a steady load (the
# queue never empty) still lets old files go once their rows land.
MAX_FILE_ROWS = 2_000


class Journal:
    """Append-only journal files; used from the event loop only (no locking)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        self._current: Path | None = None
        self._current_rows = 0
        self._seq = 0
        self._file_of: dict[Key, Path] = {}
        self._open_rows: dict[Path, int] = {}

    def leftovers(self) -> list[Path]:
        """Journal files on disk that this journal did not write: a crashed run's."""
        mine = set(self._open_rows) | ({self._current} if self._current else set())
        return sorted(p for p in self.directory.glob(JOURNAL_GLOB) if p not in mine)

    def append(self, key: Key, row: dict[str, Any]) -> None:
        """One write of one line; returns once the kernel has it (survives a process kill)."""
        data = (encode("completion", row) + "\n").encode()
        if self._fd is None or self._current_rows >= MAX_FILE_ROWS:
            self._open_new()
        assert self._fd is not None and self._current is not None
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: what is there is a torn line, never reused
            self._close_current()
            raise OSError(f"journal write short by {len(data) - written} bytes")
        self._current_rows += 1
        self._file_of[key] = self._current
        self._open_rows[self._current] = self._open_rows.get(self._current, 0) + 1

    def resolve(self, key: Key) -> None:
        """The row is in the database, the spool or ``rejected.jsonl``."""
        path = self._file_of.pop(key, None)
        if path is None:
            return
        left = self._open_rows[path] - 1
        if left:
            self._open_rows[path] = left
            return
        del self._open_rows[path]
        if path == self._current:
            self._close_current()
        path.unlink(missing_ok=True)

    @property
    def pending(self) -> int:
        return len(self._file_of)

    def close(self) -> None:
        """Stop writing; files with unresolved rows stay for the next run to replay."""
        self._close_current()

    def _open_new(self) -> None:
        # A full file still holds unresolved rows (one whose rows all landed was closed and
        # unlinked by ``resolve``): close it; ``resolve`` unlinks it once they land.
        self._close_current()
        self._seq += 1
        name = f"journal-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
        self._current = self.directory / name
        self._fd = os.open(self._current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._current_rows = 0

    def _close_current(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._current = None
        self._current_rows = 0
