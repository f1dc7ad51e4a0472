"""vLLM replicas as the router sees them, and the placement policy.

Placement (one synchronous decision per attempt, see :func:`place`):

1. Replicas that hold the adapter (loaded, or its load already under way): the one with the
   fewest requests in flight, unless every holder has more than ``hot_threshold`` in flight.
2. Otherwise (no holder, or the adapter is hot) a replica that can take it, where it fits in
   the budget or an idle adapter can be evicted: fewest requests in flight, then fewest
   adapters, then the order of FLYWHEEL_VLLM_URLS.  For a hot adapter only replicas less busy
   than its best holder qualify; loading there adds a copy, so a hot adapter spreads over more
   replicas while the others keep serving it.
3. A hot adapter with no replica to spread to stays on its least loaded holder.
4. No holder and no room anywhere (every adapter on every replica busy): the caller waits for
   a request to finish, then decides again.

The bare base model needs no slot: it goes to the usable replica with the fewest in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gateway.engine.residency import Residency
from gateway.engine.vllm_client import ReplicaDown, UpstreamError, VLLMClient

log = logging.getLogger("flywheel.engine.vllm")


def missing_routes_message(url: str) -> str:
    return (
        f"vLLM at {url} has no runtime LoRA routes (/v1/load_lora_adapter answers 404): start it "
        "with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (`flywheel engine vllm` prints the command)"
    )


@dataclass
class Replica:
    url: str
    client: VLLMClient
    residency: Residency
    healthy: bool = False  # answered its last health check (or request)
    # Runtime adapter routes present (VLLM_ALLOW_RUNTIME_LORA_UPDATING); None: not probed yet.
    lora_api: bool | None = None
    base_name: str | None = None  # the base model's name on this replica
    in_flight: int = 0  # requests running here, base model included
    last_error: str | None = None  # why it is out of rotation
    loads: int = 0  # adapter loads and evictions done here, for metrics
    evictions: int = 0
    # Set when the replica leaves rotation, so requests waiting on it stop at once instead of
    # at the read timeout (a frozen server keeps its connections open and answers nothing).
    went_down: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def usable(self) -> bool:
        return self.healthy and self.lora_api is True

    async def check(self) -> bool:
        """One health check: /v1/models answers, the adapter routes exist, residency synced.

        Returns True when this check put the replica (back) in rotation.
        """
        since = self.residency.clock
        was_usable = self.usable
        try:
            models = await self.client.models()
            if not self.lora_api:
                enabled = await self.client.runtime_lora_enabled()
                if not enabled and self.lora_api is not False:
                    log.error(missing_routes_message(self.url))  # once per state change
                self.lora_api = enabled
        except (ReplicaDown, UpstreamError) as exc:
            self.mark_down(str(exc))
            return False
        except Exception:  # whatever a replica answers, the health loop keeps running
            log.exception("health check of %s failed", self.url)
            self.mark_down("health check error")
            return False
        self.base_name = models.base
        self.residency.sync(models.adapters, since=since)
        self.healthy, self.last_error = True, None
        if self.went_down.is_set():
            self.went_down = asyncio.Event()
        if was_usable or not self.usable:
            return False
        log.info("vLLM replica %s is in rotation (%d adapters)", self.url, len(self.residency))
        return True

    def mark_down(self, reason: str) -> None:
        """Out of rotation until a health check passes."""
        if self.healthy:
            log.warning("vLLM replica %s is out of rotation: %s", self.url, reason)
        self.healthy, self.last_error = False, reason
        self.went_down.set()
        # Probe the adapter routes again when it is back: it may have been restarted otherwise.
        if self.lora_api:
            self.lora_api = None

    def begin(self, name: str | None) -> None:
        self.in_flight += 1
        if name is not None:
            self.residency.begin(name)
            self.residency.touch(name)

    def end(self, name: str | None) -> bool:
        """One request finished; True when it left ``name`` idle (an eviction candidate)."""
        self.in_flight -= 1
        return name is not None and self.residency.end(name)


@dataclass(frozen=True)
class Placement:
    replica: Replica
    load: bool  # the adapter must be reserved and loaded there first


def place(
    replicas: list[Replica], name: str | None, *, hot_threshold: int, exclude: set[str]
) -> Placement | None:
    """Where a request for adapter ``name`` (None: the base) goes; None means wait."""
    usable = [r for r in replicas if r.usable and r.url not in exclude]
    if not usable:
        return None
    if name is None:
        return Placement(min(usable, key=lambda r: r.in_flight), load=False)
    holders = [r for r in usable if name in r.residency]
    best_holder = min(holders, key=lambda r: r.in_flight) if holders else None
    if best_holder is not None and best_holder.in_flight <= hot_threshold:
        return Placement(best_holder, load=False)
    spare = [r for r in usable if name not in r.residency and r.residency.has_room()]
    if best_holder is not None:
        # A copy only helps on a replica less busy than the best holder.
        spare = [r for r in spare if r.in_flight < best_holder.in_flight]
    if spare:
        # min() keeps the first of equals, so ties go to the configured order.
        target = min(spare, key=lambda r: (r.in_flight, len(r.residency)))
        return Placement(target, load=True)
    if best_holder is not None:
        return Placement(best_holder, load=False)
    return None
