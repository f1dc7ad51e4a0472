"""Which adapters one replica holds: the budget, LRU order, requests in flight, locks.

One book-keeper for both engines: each vLLM replica has one (``gateway/engine/vllm.py``), and
so does the embedded engine, whose one "replica" is its own process.

Pure book-keeping, no I/O: every decision (reserve a slot, pick eviction victims) is made
synchronously, between two awaits, so concurrent requests on the event loop never see a
half-made decision.  The HTTP calls that follow a decision run under the per-name lock.

Life of an entry: ``reserve`` (loaded=False, the load is about to run) -> ``confirm`` (the
replica said 200) -> evicted by a later ``reserve`` (removed here first; the caller unloads it
under its lock) or ``drop``-ped when the replica turns out not to have it, or ``drain``-ed (out of placement at once, unloaded from
the replica once idle).  Entries adopted from the replica's ``/v1/models`` (gateway restart)
are loaded but not ``verified`` by this process.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from dataclasses import dataclass


@dataclass
class Resident:
    path: str
    loaded: bool = False  # the replica confirmed it (False while its load is in flight)
    verified: bool = False  # this process ran the Verifier for this path
    evict_first: tuple[str, ...] = ()  # victims its reservation displaced; unloaded before loading


class Residency:
    """One replica's adapters, least recently used first, within ``budget``."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError("the adapter budget per replica must be at least 1")
        self.budget = budget
        self._entries: OrderedDict[str, Resident] = OrderedDict()
        self._in_flight: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}
        # A logical clock stamped on every local change of a name, so a /v1/models snapshot
        # taken before that change cannot undo it (see ``sync``).
        self._clock = 0
        self._changed: dict[str, int] = {}
        # Dropped here but still on the replica until their unload: never adopted back.
        self._draining: set[str] = set()

    # --- queries ---------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Resident | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return list(self._entries)

    def loaded(self) -> list[str]:
        return [n for n, e in self._entries.items() if e.loaded]

    def in_flight(self, name: str) -> int:
        return self._in_flight[name]

    def lock(self, name: str) -> asyncio.Lock:
        """The lock that serializes load and unload of ``name`` on this replica."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def evictable(self, name: str) -> bool:
        """Idle: loaded, nothing in flight, no load or unload running."""
        entry = self._entries.get(name)
        return (
            entry is not None
            and entry.loaded
            and not self._in_flight[name]
            and not self.lock(name).locked()
        )

    def has_room(self) -> bool:
        """A reservation would fit, possibly by evicting idle adapters."""
        excess = len(self._entries) + 1 - self.budget
        return excess <= 0 or sum(1 for n in self._entries if self.evictable(n)) >= excess

    @property
    def clock(self) -> int:
        return self._clock

    # --- changes ---------------------------------------------------------------------------

    def _stamp(self, name: str) -> None:
        self._clock += 1
        self._changed[name] = self._clock

    def touch(self, name: str) -> None:
        if name in self._entries:
            self._entries.move_to_end(name)

    def begin(self, name: str) -> None:
        self._in_flight[name] += 1

    def end(self, name: str) -> bool:
        """One request finished; True when ``name`` became idle."""
        self._in_flight[name] -= 1
        if self._in_flight[name] > 0:
            return False
        del self._in_flight[name]
        return True

    def reserve(self, name: str, path: str) -> Resident:
        """Claim a slot for ``name``, evicting least recently used idle adapters to fit.

        The caller checked ``has_room``; the victims are listed on the entry so the request
        that loads it unloads them first (each under its own lock).
        """
        victims: list[str] = []
        for candidate in list(self._entries):
            if len(self._entries) + 1 - len(victims) <= self.budget:
                break
            if self.evictable(candidate):
                victims.append(candidate)
        for victim in victims:
            del self._entries[victim]
            self._stamp(victim)
        entry = self._entries[name] = Resident(path, evict_first=tuple(victims))
        self._stamp(name)
        return entry

    def confirm(self, name: str, *, verified: bool) -> None:
        entry = self._entries.get(name)
        if entry is not None:
            entry.loaded, entry.verified, entry.evict_first = True, verified, ()
            self._entries.move_to_end(name)
            self._stamp(name)

    def shed(self) -> list[str]:
        """Remove least recently used idle adapters while over budget; return them.

        A reservation made while every other adapter was busy leaves the replica over budget;
        whoever ends the last request of an adapter calls this, and unloads what it returns.
        """
        victims: list[str] = []
        for candidate in list(self._entries):
            if len(self._entries) <= self.budget:
                break
            if self.evictable(candidate):
                del self._entries[candidate]
                self._stamp(candidate)
                victims.append(candidate)
        return victims

    def drop(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self._stamp(name)

    def drain(self, name: str) -> None:
        """Take ``name`` out of placement; it stays on the replica until ``drained``.

        Its unload waits for its requests in flight, and a ``/v1/models`` snapshot taken
        meanwhile still lists it: ``sync`` must not adopt it back (the unload would then take
        it for wanted again and keep it).
        """
        self.drop(name)
        self._draining.add(name)

    def drained(self, name: str) -> None:
        """The unload of ``name`` is over (done, skipped, or the name was wanted again)."""
        self._draining.discard(name)

    def clear(self) -> None:
        for name in list(self._entries):
            self.drop(name)

    def sync(self, upstream: dict[str, str], *, since: int) -> None:
        """Reconcile with a ``/v1/models`` snapshot requested when the clock read ``since``.

        Names changed locally after the snapshot was requested, or with a load or unload
        running, are left alone: the snapshot cannot know about them yet.  Adapters the
        replica holds that this process did not load (a gateway restart) are adopted as least
        recently used, and must pass the Verifier on first use.
        """
        for name, entry in list(self._entries.items()):
            if self._changed.get(name, 0) > since or self.lock(name).locked():
                continue
            root = upstream.get(name)
            if root is None:
                if entry.loaded:
                    del self._entries[name]
            elif root != entry.path:
                entry.path, entry.verified = root, False
        for name, root in upstream.items():
            if name in self._entries or name in self._draining:
                continue
            if self._changed.get(name, 0) > since:
                continue
            if self.lock(name).locked():
                continue
            self._entries[name] = Resident(root, loaded=True, verified=False)
            self._entries.move_to_end(name, last=False)
