"""Residency book-keeping (both engines) and vLLM's placement policy, without I/O."""

from __future__ import annotations

import pytest

from gateway.engine.replicas import Replica, place
from gateway.engine.residency import Residency
from gateway.engine.vllm_client import VLLMClient

pytestmark = pytest.mark.asyncio(loop_scope="session")


def loaded(budget: int, *names: str) -> Residency:
    res = Residency(budget)
    for name in names:
        res.reserve(name, f"/p/{name}")
        res.confirm(name, verified=True)
    return res


async def test_reserve_evicts_least_recently_used_idle() -> None:
    res = loaded(3, "a", "b", "c")
    res.touch("a")  # order now b, c, a
    entry = res.reserve("d", "/p/d")
    assert entry.evict_first == ("b",) and res.names() == ["c", "a", "d"]
    assert not entry.loaded and len(res) == 3


async def test_busy_and_locked_adapters_are_not_evicted() -> None:
    res = loaded(2, "a", "b")
    res.begin("a")
    async with res.lock("b"):
        assert not res.has_room()  # a in flight, b being loaded or unloaded
    assert res.has_room()
    assert res.reserve("c", "/p/c").evict_first == ("b",)
    assert res.end("a") is True and res.evictable("a")


async def test_shed_brings_an_overshoot_back_within_budget_once_idle() -> None:
    res = loaded(2, "a", "b")
    res.begin("a"), res.begin("b"), res.begin("c")  # c's request counts before its load
    assert res.reserve("c", "/p/c").evict_first == ()  # all busy: over budget for now
    res.confirm("c", verified=True)
    assert res.shed() == [] and len(res) == 3
    assert res.end("a") is True
    assert res.shed() == ["a"] and res.names() == ["b", "c"]
    assert res.end("c") is True and res.shed() == []


async def test_reserved_but_unconfirmed_is_not_evictable() -> None:
    res = Residency(1)
    res.reserve("a", "/p/a")
    assert not res.has_room()
    res.confirm("a", verified=True)
    assert res.has_room()


async def test_sync_adopts_drops_and_respects_later_changes() -> None:
    res = loaded(4, "a", "b")
    since = res.clock
    res.reserve("c", "/p/c")  # changed after the snapshot was requested
    res.sync({"a": "/p/a", "x": "/p/x"}, since=since)
    # b is gone upstream; x is adopted as least recently used and unverified; c is untouched.
    assert res.names() == ["x", "a", "c"]
    x = res.get("x")
    assert x is not None and x.loaded and not x.verified
    res.sync({"a": "/moved/a"}, since=res.clock)
    a = res.get("a")
    assert a is not None and a.path == "/moved/a" and not a.verified


def replica(url: str, in_flight: int, *names: str, budget: int = 2) -> Replica:
    r = Replica(url, VLLMClient(url), loaded(budget, *names), healthy=True, lora_api=True)
    r.in_flight = in_flight
    return r


async def test_sync_does_not_adopt_a_draining_adapter_back() -> None:
    res = loaded(4, "a")
    res.drain("a")  # out of placement; the replica lists it until its unload
    res.sync({"a": "/p/a"}, since=res.clock)
    assert "a" not in res
    res.drained("a")  # the unload was skipped (replica down): adopted like any stranger
    res.sync({"a": "/p/a"}, since=res.clock)
    assert "a" in res


async def test_place_prefers_the_least_loaded_holder() -> None:
    rs = [replica("a", 5, "x"), replica("b", 2, "x"), replica("c", 0)]
    p = place(rs, "x", hot_threshold=8, exclude=set())
    assert p is not None and p.replica.url == "b" and not p.load


async def test_place_new_adapter_fewest_in_flight_then_fewest_adapters() -> None:
    rs = [replica("a", 1), replica("b", 0, "y"), replica("c", 0)]
    p = place(rs, "x", hot_threshold=8, exclude=set())
    assert p is not None and p.replica.url == "c" and p.load


async def test_hot_adapter_spreads_to_a_less_busy_replica() -> None:
    rs = [replica("a", 9, "x"), replica("b", 3, "y", "z")]
    rs[1].residency.begin("y")
    rs[1].residency.begin("z")  # b has no room: the hot adapter stays on a
    p = place(rs, "x", hot_threshold=8, exclude=set())
    assert p is not None and p.replica.url == "a" and not p.load
    rs[1].residency.end("z")
    p = place(rs, "x", hot_threshold=8, exclude=set())
    assert p is not None and p.replica.url == "b" and p.load


async def test_place_skips_unusable_and_excluded_and_waits_when_full() -> None:
    rs = [replica("a", 0, "x"), replica("b", 0)]
    rs[0].healthy = False
    p = place(rs, "x", hot_threshold=8, exclude=set())
    assert p is not None and p.replica.url == "b" and p.load
    assert place(rs, "x", hot_threshold=8, exclude={"b"}) is None
    full = [replica("a", 2, "y", "z", budget=2)]
    full[0].residency.begin("y")
    full[0].residency.begin("z")
    assert place(full, "x", hot_threshold=8, exclude=set()) is None
    base = place(full, None, hot_threshold=8, exclude=set())
    assert base is not None and not base.load
