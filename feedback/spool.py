"""A durable on-disk spool for log rows the database could not take.

Rows are appended as JSON lines to segment files under ``spool_dir`` and fsynced before
``append`` returns, so a row the spool accepted survives a crash of the process or the machine.
Replay works a whole segment at a time: the caller inserts its rows (idempotently, by primary
key) and only then calls ``remove``.  A crash between the insert and the unlink replays the
segment again, and the idempotent insert makes that harmless; that is what makes replay
exactly-once.

Each line is ``{"kind": "completion"|"feedback", "row": {...}, "dt": [...]}``; ``dt`` lists the
top-level keys holding timezone-aware datetimes (ISO 8601 in ``row``).  Listing them, rather
than tagging values, keeps arbitrary client JSON (``request``, ``meta``) from being mistaken for
an encoded datetime.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

log = logging.getLogger("flywheel.spool")

Kind = Literal["completion", "feedback"]
SEGMENT_GLOB = "seg-*.jsonl"
REJECTED = "rejected.jsonl"
# Segments are sealed at this size so replay (and its unlink) works in bounded units.
MAX_SEGMENT_ROWS = 5_000


@dataclass(frozen=True)
class Record:
    kind: Kind
    row: dict[str, Any]


@dataclass(frozen=True)
class Segment:
    path: Path
    records: list[Record]
    lines: int  # non-empty lines, malformed ones included, for the row count


def encode(kind: Kind, row: dict[str, Any]) -> str:
    dt = [k for k, v in row.items() if isinstance(v, datetime)]
    plain = {k: (v.isoformat() if k in dt else v) for k, v in row.items()}
    # default=str: an odd value must not make the spool, the last resort, refuse a row.
    return json.dumps({"kind": kind, "row": plain, "dt": dt}, separators=(",", ":"), default=str)


def decode(line: str) -> Record:
    data = json.loads(line)
    row: dict[str, Any] = data["row"]
    for key in data.get("dt", ()):
        if row.get(key) is not None:
            row[key] = datetime.fromisoformat(row[key])
    kind: Kind = data["kind"]
    return Record(kind=kind, row=row)


def _private(path: Path, mode: Literal["a", "w"]) -> TextIO:
    """Open a text file created (if new) readable by this user only."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, 0o600), mode, encoding="utf-8")


def _fsync_dir(path: Path) -> None:
    # A new or removed directory entry is durable only once the directory itself is synced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append-only JSONL segments; thread-safe (request path and writer may append at once)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Prompts and answers: readable by this user only (a 0644 default leaked them to every
        # local account).
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        # One process per spool directory: another process replaying (and unlinking) the
        # segment this one appends to would lose rows.  The lock dies with the process.
        self._lock_fd: int | None = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(
                f"spool directory {directory} is in use by another process; "
                "give each gateway process its own spool directory"
            ) from None
        self._lock = threading.Lock()
        self._current: Path | None = None
        self._current_rows = 0
        self._seq = 0
        self._rows = sum(self._count(p) for p in self._segments())

    @classmethod
    def claim(cls, root: Path, slots: int = 64) -> Spool:
        """The first of ``root``, ``root/w1``, ``root/w2``... that no live process holds.

        Several gateway worker processes on one data directory each get a spool of their own,
        and after a restart they take the same directories back, with what was spooled there.
        """
        for slot in range(slots):
            try:
                return cls(root if slot == 0 else root / f"w{slot}")
            except RuntimeError:
                continue
        raise RuntimeError(f"all {slots} spool directories under {root} are in use")

    def close(self) -> None:
        """Release the directory lock (the files stay for the next run to replay)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def rows(self) -> int:
        """Rows on disk not yet removed (including rows of a segment being replayed)."""
        return self._rows

    def append(self, records: list[tuple[Kind, dict[str, Any]]]) -> None:
        """Write and fsync; returns only once the rows are durable."""
        if not records:
            return
        data = "".join(encode(kind, row) + "\n" for kind, row in records).encode()
        with self._lock:
            if self._current is None or self._current_rows >= MAX_SEGMENT_ROWS:
                self._open_new()
            assert self._current is not None
            try:
                with open(self._current, "ab") as fp:
                    fp.write(data)
                    fp.flush()
                    os.fsync(fp.fileno())
            except OSError:
                # The file may now end in a torn line: never append after it, or the next
                # (acknowledged) record would be glued to it and unreadable.
                self._current = None
                raise
            self._current_rows += len(records)
            self._rows += len(records)

    def adopt(self, path: Path) -> None:
        """Take a file of encoded lines (a crashed run's completion journal) as a segment: its
        rows replay like any spooled row.  A torn last line is skipped by ``read``."""
        with open(path, "rb") as fp:
            os.fsync(fp.fileno())  # the kernel had it; make it durable before it counts
        with self._lock:
            self._seq += 1
            name = f"seg-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}-journal.jsonl"
            os.replace(path, self.directory / name)
            _fsync_dir(self.directory)
            self._rows += self._count(self.directory / name)

    def _open_new(self) -> None:
        # Time-ordered names keep replay in write order (feedback upserts rely on it less
        # than on updated_at, but ordered replay is the least surprising).
        self._seq += 1
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
        self._current = self.directory / name
        os.close(os.open(self._current, os.O_WRONLY | os.O_CREAT, 0o600))
        _fsync_dir(self.directory)
        self._current_rows = 0

    def seal(self) -> list[Path]:
        """Close the segment being written; return every segment on disk, oldest first."""
        with self._lock:
            self._current = None
            self._current_rows = 0
            segments = self._segments()
            if not segments:
                self._rows = 0  # self-heal the count if a segment was removed by hand
            return segments

    def reject(self, record: Record, error: str) -> None:
        """Keep a row the database refuses for its content, with the error, for a human."""
        line = f'{{"error":{json.dumps(error)},"record":{encode(record.kind, record.row)}}}\n'
        with self._lock, _private(self.directory / REJECTED, "a") as fp:
            fp.write(line)
            fp.flush()
            os.fsync(fp.fileno())

    def rejected(self) -> list[Record]:
        """The rows kept in ``rejected.jsonl`` (lines that do not parse are left out)."""
        with self._lock:
            return [record for _, record in self._rejected_lines() if record is not None]

    def scrub_rejected(self, drop: Callable[[Record], bool]) -> int:
        """Rewrite ``rejected.jsonl`` without the rows ``drop`` picks (erasure): the new file
        is fsynced and renamed over the old one, so a crash leaves one or the other whole."""
        path = self.directory / REJECTED
        with self._lock:
            lines = self._rejected_lines()
            kept = [line for line, record in lines if record is None or not drop(record)]
            removed = len(lines) - len(kept)
            if removed:
                tmp = path.with_name(REJECTED + ".tmp")
                with _private(tmp, "w") as fp:
                    fp.writelines(kept)
                    fp.flush()
                    os.fsync(fp.fileno())
                os.replace(tmp, path)
                _fsync_dir(self.directory)
            return removed

    def _rejected_lines(self) -> list[tuple[str, Record | None]]:
        path = self.directory / REJECTED
        if not path.exists():
            return []
        out: list[tuple[str, Record | None]] = []
        with open(path, encoding="utf-8", errors="replace") as fp:
            for line in fp:
                if not line.strip():
                    continue
                try:
                    out.append((line, decode(json.dumps(json.loads(line)["record"]))))
                except (ValueError, KeyError, TypeError):
                    out.append((line, None))  # kept as it is: a human reads this file
        return out

    def read(self, path: Path) -> Segment:
        records: list[Record] = []
        lines = 0
        with open(path, encoding="utf-8", errors="replace") as fp:
            for number, line in enumerate(fp, 1):
                if not line.strip():
                    continue
                lines += 1
                try:
                    records.append(decode(line))
                except (ValueError, KeyError) as exc:
                    # Only a torn last line (crash mid-append, before fsync returned) can be
                    # malformed, and its rows were never acknowledged.
                    log.warning("skipping malformed spool line %s:%d: %s", path.name, number, exc)
        return Segment(path=path, records=records, lines=lines)

    def iter_records(self) -> Iterator[Record]:
        for path in self.seal():
            yield from self.read(path).records

    def remove(self, segment: Segment) -> None:
        """Forget a segment whose rows are in the database."""
        with self._lock:
            segment.path.unlink(missing_ok=True)
            _fsync_dir(self.directory)
            self._rows = max(0, self._rows - segment.lines)

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(SEGMENT_GLOB))

    @staticmethod
    def _count(path: Path) -> int:
        with open(path, "rb") as fp:
            return sum(1 for line in fp if line.strip())
