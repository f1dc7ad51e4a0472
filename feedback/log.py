"""The completion log: every completion row goes through a bounded queue and lands in batches.

Life of a row::

    serving: begin(id) ... submit(row)        (request path: one journal write, a deque
                                               append; see feedback/journal.py)
      -> writer task: a batch of up to batch_size rows every flush_interval_s (or sooner when
         a full batch is waiting) -> INSERT ... ON CONFLICT (id) DO NOTHING, executemany
      -> database unreachable: the batch is appended to the on-disk spool (fsync) instead and
         the writer probes the database every retry_interval_s; once it answers, the spool is
         replayed segment by segment, and a segment is unlinked only after its rows committed.

Nothing accepted is dropped: a full queue spills the row to the spool synchronously (counted in
``spilled_on_full``), ``stop`` drains the queue (to the spool when the database is down or
too slow), and a cancelled write spools its batch before giving up.  Because inserts are
idempotent by primary key, a crash between "inserted" and "spool segment removed" replays
rows that are already there, and they are skipped: each row lands exactly once.

Rows the database refuses for their content (a constraint or type error, not an outage) are
isolated one by one and kept in ``<spool_dir>/rejected.jsonl`` with the error, never retried
forever and never silently dropped; only an erasure removes them (``scrub_rejected``, at start
and every ``scrub_interval_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feedback.erasure import scrub_rejected
from feedback.journal import Journal
from feedback.rows import normalize, write_records
from feedback.spool import Record, Spool
from gateway.core.db.errors import is_row_error
from gateway.core.db.session import Database

log = logging.getLogger("flywheel.completion_log")

Key = tuple[str, str]  # (tenant_id, completion_id)

DEGRADED_FILL = 0.8


class CompletionLog:
    """Batched, durable completion logging; owned by the app lifespan."""

    def __init__(
        self,
        db: Database,
        *,
        spool_dir: Path,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        retry_interval_s: float = 1.0,
        write_timeout_s: float = 15.0,
        stop_timeout_s: float = 20.0,
        scrub_interval_s: float = 600.0,
        claim_spool: bool = False,
    ) -> None:
        """``claim_spool``: use the first free spool under ``spool_dir`` (several processes)."""
        self.db = db
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_interval_s = retry_interval_s
        self.write_timeout_s = write_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.scrub_interval_s = scrub_interval_s
        self._scrub_task: asyncio.Task[None] | None = None
        self._spool = Spool.claim(spool_dir) if claim_spool else Spool(spool_dir)
        self._journal = Journal(self._spool.directory)
        self._queue: deque[dict[str, Any]] = deque()
        self._queued_since = 0.0
        self._inflight: set[Key] = set()
        self._texts: dict[Key, str | None] = {}  # queued in memory, with the response text
        self._spooled: set[Key] = set()  # on disk, not in the database yet
        self._wake = asyncio.Event()
        self._cycle = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._writing: list[Record] | None = None  # the batch being written to the database
        self._stopping = False
        self._flush_requested = False
        self._db_down = False
        self._next_probe = 0.0
        # Counters, for metrics and tests.
        self.rows_written = 0
        self.batches_written = 0
        self.spilled_on_full = 0
        self.rows_spooled = 0
        self.rejected_rows = 0

    # --- the interface the serving layer uses ---------------------------------------------

    async def start(self) -> None:
        """Start the writer; it first replays whatever an earlier run left in the spool."""
        if self._task is not None:
            return

        def spooled_keys() -> set[Key]:
            return {
                (r.row["tenant_id"], r.row["id"])
                for r in self._spool.iter_records()
                if r.kind == "completion"
            }

        # What a killed run had journaled but not landed: replayed like spooled rows.
        for path in self._journal.leftovers():
            await asyncio.to_thread(self._spool.adopt, path)
            log.warning("completion log: replaying %s left by an earlier run", path.name)
        self._spooled.update(await asyncio.to_thread(spooled_keys))
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="flywheel-completion-log")
        await self._scrub_once()
        self._scrub_task = asyncio.create_task(self._scrub_loop(), name="flywheel-scrub-rejected")

    async def stop(self) -> None:
        """Drain the queue to the database, or to the spool if it is down or too slow."""
        self._stopping = True
        if self._scrub_task is not None:
            self._scrub_task.cancel()
            await asyncio.wait({self._scrub_task})
            self._scrub_task = None
        self._next_probe = 0.0  # one more try even if the database was down
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.stop_timeout_s)
            except TimeoutError:
                log.warning("completion log: database too slow at shutdown; spooling the rest")
                # Spool the batch the writer holds first, without waiting for it: a wedged
                # driver may not even honour the cancellation below.  Should that write still
                # commit later, the row is in both places and replay skips it.
                if self._writing:
                    self._spool_now(self._writing)
                self._spill_queue()
                task.cancel()
                # Let the cancelled write roll back and return its connection before the caller
                # disposes the engine (disposing under it can hang the loop's shutdown); a
                # driver that stays wedged past this grace period is abandoned.
                await asyncio.wait({task}, timeout=self.stop_timeout_s)
            self._task = None
        self._spill_queue()
        self._journal.close()
        self._spool.close()

    def begin(self, completion_id: str, tenant_id: str) -> None:
        self._inflight.add((tenant_id, completion_id))

    def submit(self, row: dict[str, Any]) -> None:
        """Queue a row without blocking; a full queue spills it to the spool right here."""
        try:
            clean = normalize(row)
        except ValueError as exc:
            # A caller bug must not fail the response it is logging; keep the row for a human.
            self._spool.reject(Record("completion", row), repr(exc))
            self.rejected_rows += 1
            log.error("completion log: unstorable row rejected: %s", exc)
            return
        key = (clean["tenant_id"], clean["id"])
        self._inflight.discard(key)
        if len(self._queue) < self.queue_size:
            try:
                # Before the answer goes out: a kill from here on cannot lose the row.
                self._journal.append(key, clean)
            except OSError:
                log.exception("completion log: journal write failed; spooling the row")
                self._spool.append([("completion", clean)])
                self._spooled.add(key)
                self.rows_spooled += 1
                self._wake.set()
                return
        if len(self._queue) >= self.queue_size:
            self._spool.append([("completion", clean)])
            self._spooled.add(key)
            self.spilled_on_full += 1
            self.rows_spooled += 1
            self._wake.set()
            return
        if not self._queue:
            self._queued_since = time.monotonic()
            self._wake.set()
        self._queue.append(clean)
        self._texts[key] = clean["response_text"]
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def is_pending(self, completion_id: str, tenant_id: str) -> bool:
        key = (tenant_id, completion_id)
        return key in self._inflight or key in self._texts or key in self._spooled

    def pending_text(self, completion_id: str, tenant_id: str) -> str | None:
        return self._texts.get((tenant_id, completion_id))

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def spool_rows(self) -> int:
        return self._spool.rows

    @property
    def degraded(self) -> bool:
        return (
            len(self._queue) > DEGRADED_FILL * self.queue_size
            or self._spool.rows > 0
            or self._db_down
        )

    # --- used by the feedback service and by tests --------------------------------------

    async def spool_feedback(self, rows: list[dict[str, Any]]) -> None:
        """Keep feedback the database could not take; replayed with the completions."""
        await asyncio.to_thread(self._spool.append, [("feedback", r) for r in rows])
        self.rows_spooled += len(rows)
        self.note_db_failure()

    def note_db_failure(self) -> None:
        """Someone else saw the database fail: switch to spooling and start probing."""
        if not self._db_down:
            log.warning(
                "completion log: database unreachable, spooling to %s", self._spool.directory
            )
        self._db_down = True
        self._next_probe = time.monotonic() + self.retry_interval_s
        self._wake.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued and replay the spool now; False if the database is down."""
        if self._task is None:
            raise RuntimeError("CompletionLog.flush() before start()")

        async def _until_done() -> bool:
            async with self._cycle:
                while True:
                    self._flush_requested = True
                    self._wake.set()
                    await self._cycle.wait()
                    if not self._queue and self._spool.rows == 0:
                        return True
                    if self._db_down:
                        return False

        return await asyncio.wait_for(_until_done(), timeout)

    def stats(self) -> dict[str, int | bool]:
        return {
            "depth": self.depth,
            "spool_rows": self.spool_rows,
            "degraded": self.degraded,
            "db_down": self._db_down,
            "rows_written": self.rows_written,
            "batches_written": self.batches_written,
            "rows_spooled": self.rows_spooled,
            "spilled_on_full": self.spilled_on_full,
            "rejected_rows": self.rejected_rows,
        }

    # --- the writer task ------------------------------------------------------------------

    async def scrub_rejected(self) -> int:
        """Drop erased end users' rows from this process's ``rejected.jsonl`` now."""
        return await scrub_rejected(self.db, self._spool)

    async def _scrub_once(self) -> None:
        try:
            removed = await self.scrub_rejected()
        except Exception:  # the database is down, say: the next round catches up
            log.warning("completion log: scrubbing rejected rows failed", exc_info=True)
            return
        if removed:
            log.info("completion log: %d rejected row(s) of erased end users removed", removed)

    async def _scrub_loop(self) -> None:
        # Each process scrubs its own spool (start() ran the first round): an erasure made
        # through another replica or the CLI reaches this one's rejected rows within an
        # interval.
        while True:
            await asyncio.sleep(self.scrub_interval_s)
            await self._scrub_once()

    async def _run(self) -> None:
        while True:
            try:
                done = await self._cycle_once()
            except Exception:
                # A bug here must not stop logging for the life of the process.
                log.exception("completion log: writer cycle failed; retrying")
                await asyncio.sleep(self.retry_interval_s)
                continue
            if done:
                return

    async def _cycle_once(self) -> bool:
        """One wait-write-replay round; True when stopping and the queue is empty."""
        await self._wait()
        forced = self._flush_requested
        self._flush_requested = False
        if self._due(forced):
            await self._drain()
        if self._spool.rows and not self._stopping:
            await self._replay(forced)
        async with self._cycle:
            self._cycle.notify_all()
        return self._stopping and not self._queue

    def _due(self, forced: bool) -> bool:
        if not self._queue:
            return False
        if forced or self._stopping or len(self._queue) >= self.batch_size:
            return True
        return time.monotonic() >= self._queued_since + self.flush_interval_s

    async def _wait(self) -> None:
        if self._stopping or self._flush_requested or self._due(False):
            return
        if self._spool.rows and not self._db_down:
            return  # rows spilled while the database is up (full queue, earlier run): replay now
        timeout: float | None = None
        if self._queue:
            timeout = self._queued_since + self.flush_interval_s - time.monotonic()
        if self._spool.rows:
            timeout = min(timeout or self.retry_interval_s, self.retry_interval_s)
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            if self._queue:
                self._queued_since = time.monotonic()
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        records = [Record("completion", row) for row in batch]
        try:
            await self._write_or_spool(records)
        except asyncio.CancelledError:
            # Shutdown gave up waiting on the database: the batch must still reach the disk.
            # Some rows may have landed already; the spool may then hold them twice, and the
            # idempotent replay makes that harmless.
            self._spool_now(records)
            raise

    async def _write_or_spool(self, records: list[Record]) -> None:
        if self._db_down and time.monotonic() < self._next_probe:
            await self._to_spool(records)
            return
        self._writing = records
        try:
            await asyncio.wait_for(write_records(self.db, records), self.write_timeout_s)
        except Exception as exc:
            if is_row_error(exc):
                await self._isolate(records)
            else:
                self._mark_down(exc)
                await self._to_spool(records)
            return
        finally:
            self._writing = None
        self._landed(records)

    async def _replay(self, forced: bool) -> None:
        if self._db_down and not forced and time.monotonic() < self._next_probe:
            return
        for path in await asyncio.to_thread(self._spool.seal):
            if self._stopping:
                return
            segment = await asyncio.to_thread(self._spool.read, path)
            for start in range(0, len(segment.records), self.batch_size):
                chunk = segment.records[start : start + self.batch_size]
                try:
                    await asyncio.wait_for(write_records(self.db, chunk), self.write_timeout_s)
                except Exception as exc:
                    if not is_row_error(exc):
                        self._mark_down(exc)
                        return
                    if not await self._isolate(chunk, spool_failures=False):
                        return
                self._landed(chunk)
            # Only now: a crash before this line replays the segment, and ON CONFLICT skips it.
            await asyncio.to_thread(self._spool.remove, segment)
            if self._due(False):
                await self._drain()  # fresh rows must not wait behind a long replay

    async def _isolate(self, records: Sequence[Record], *, spool_failures: bool = True) -> bool:
        """Retry one row at a time to set aside the rows the database refuses for their content.

        Returns False when the database went away meanwhile (the rest is spooled, or left in
        the spool segment when replaying).
        """
        for i, record in enumerate(records):
            try:
                await asyncio.wait_for(write_records(self.db, [record]), self.write_timeout_s)
            except Exception as exc:
                if is_row_error(exc):
                    await asyncio.to_thread(self._spool.reject, record, repr(exc))
                    self._journal.resolve((record.row["tenant_id"], record.row["id"]))
                    self.rejected_rows += 1
                    log.error("completion log: row rejected by the database: %r", exc)
                    continue
                self._mark_down(exc)
                if spool_failures:
                    await self._to_spool(records[i:])
                return False
            self._landed([record])
        return True

    async def _to_spool(self, records: Sequence[Record]) -> None:
        try:
            await asyncio.to_thread(self._spool.append, [(r.kind, r.row) for r in records])
        except OSError:
            # Neither the database nor the disk takes rows: keep them in memory and retry.
            log.exception("completion log: spool write failed; keeping rows in memory")
            self._queue.extendleft(reversed([r.row for r in records if r.kind == "completion"]))
            await asyncio.sleep(self.retry_interval_s)
            return
        self.rows_spooled += len(records)
        self._moved_to_spool(records)

    def _spool_now(self, records: Sequence[Record]) -> None:
        self._spool.append([(r.kind, r.row) for r in records])
        self.rows_spooled += len(records)
        self._moved_to_spool(records)

    def _spill_queue(self) -> None:
        if self._queue:
            self._spool_now([Record("completion", row) for row in self._queue])
            self._queue.clear()

    def _moved_to_spool(self, records: Sequence[Record]) -> None:
        for r in records:
            if r.kind == "completion":
                key = (r.row["tenant_id"], r.row["id"])
                # The text is dropped from memory: an outage must not grow the heap without
                # bound.  Feedback on these rows gets its diff at export time instead.
                self._texts.pop(key, None)
                self._spooled.add(key)
                self._journal.resolve(key)

    def _landed(self, records: Sequence[Record]) -> None:
        if self._db_down:
            log.warning("completion log: database reachable again")
        self._db_down = False
        n = 0
        for r in records:
            if r.kind == "completion":
                key = (r.row["tenant_id"], r.row["id"])
                self._texts.pop(key, None)
                self._spooled.discard(key)
                self._journal.resolve(key)
                n += 1
        self.rows_written += n
        self.batches_written += 1

    def _mark_down(self, exc: BaseException) -> None:
        if not self._db_down:
            log.warning("completion log: database write failed (%r); spooling", exc)
        self._db_down = True
        self._next_probe = time.monotonic() + self.retry_interval_s
