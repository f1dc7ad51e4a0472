"""Prometheus metrics (prometheus-client), named by Prometheus conventions.

With several worker processes set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode): counters and histograms are then summed across processes at scrape time.
Engine and completion-log state is read live from this process at scrape time.

``FLYWHEEL_METRICS_TENANT_LABEL=false`` replaces every tenant label value with ``all``, for
deployments with too many tenants for per-tenant series.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the engine layer is above this one
    from gateway.engine.base import ReplicaStats

__all__ = ["CONTENT_TYPE_LATEST", "LiveCollector", "LiveState", "render"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

REQUESTS = Counter(
    "flywheel_requests", "Completion requests by outcome.", ["tenant", "adapter", "status"]
)
REQUEST_SECONDS = Histogram(
    "flywheel_request_duration_seconds", "Total request latency.", ["tenant", "adapter"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
TTFT_SECONDS = Histogram(
    "flywheel_time_to_first_token_seconds", "Time to the first generated token.",
    ["tenant", "adapter"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
ENGINE_SECONDS = Histogram(
    "flywheel_engine_duration_seconds", "Time spent in the engine.", ["adapter"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
OVERHEAD_SECONDS = Histogram(
    "flywheel_gateway_overhead_seconds", "Request latency not spent in the engine.",
    buckets=OVERHEAD_BUCKETS,
)  # fmt: skip
TOKENS = Counter(
    "flywheel_tokens",
    "Tokens in (prompt) and out (completion).",
    ["tenant", "adapter", "direction"],
)
RATE_LIMITED = Counter("flywheel_rate_limited", "Requests refused by rate limits.", ["tenant"])
FEEDBACK = Counter("flywheel_feedback", "Feedback items by kind.", ["tenant", "kind"])
PROMOTIONS = Counter("flywheel_promotions", "Route changes by action.", ["action"])
REFUSED_LOADS = Counter(
    "flywheel_refused_loads",
    "Adapter loads refused: reason=signature (the verifier) or engine (a vLLM replica refused "
    "the adapter or could not find its files; DoRA on vLLM).",
    ["reason"],
)
for _reason in ("signature", "engine"):
    REFUSED_LOADS.labels(_reason)  # exported as 0 before the first refusal
GATE_OUTCOMES = Counter("flywheel_gate_outcomes", "Gate verdicts.", ["outcome"])
REDIS_ERRORS = Counter(
    "flywheel_redis_errors",
    "Redis calls that failed (down, too slow, or no free pooled connection in time), by "
    "operation: acquire/settle (rate limits), mark/check (pending completions).",
    ["operation"],
)
for _op in ("acquire", "settle", "mark", "check"):
    REDIS_ERRORS.labels(_op)  # exported as 0 before the first failure
ROUND_SECONDS = Histogram(
    "flywheel_retrain_round_seconds", "Retrain round wall time.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)  # fmt: skip
ROUNDS = Counter("flywheel_retrain_rounds", "Retrain rounds by final state.", ["state"])
ADAPTER_LOAD_SECONDS = Histogram(
    "flywheel_adapter_load_seconds", "Adapter load time.", ["replica"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip

_tenant_label = True


def configure(tenant_label: bool) -> None:
    global _tenant_label
    _tenant_label = tenant_label


def tenant(name: str) -> str:
    return name if _tenant_label else "all"


class LiveCollector(Collector):
    """Completion-log and engine state, read from the live objects at scrape time."""

    def __init__(self, state: Callable[[], LiveState]) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        live = self.state()
        depth = GaugeMetricFamily(
            "flywheel_completion_log_queue_depth", "Completion rows queued in memory."
        )
        depth.add_metric([], live.queue_depth)
        spool = GaugeMetricFamily(
            "flywheel_completion_log_spool_rows", "Rows waiting in the disk spool."
        )
        spool.add_metric([], live.spool_rows)
        resident = GaugeMetricFamily(
            "flywheel_adapters_resident", "Adapters loaded per engine replica.", labels=["replica"]
        )
        loads = CounterMetricFamily(
            "flywheel_adapter_loads", "Adapter loads per engine replica.", labels=["replica"]
        )
        evictions = CounterMetricFamily(
            "flywheel_adapter_evictions", "Adapter evictions per replica.", labels=["replica"]
        )
        for replica, stats in live.replicas.items():
            resident.add_metric([replica], stats.resident)
            loads.add_metric([replica], stats.loads)
            evictions.add_metric([replica], stats.evictions)
        yield from (depth, spool, resident, loads, evictions)


@dataclass(frozen=True)
class LiveState:
    queue_depth: int
    spool_rows: int
    replicas: dict[str, ReplicaStats]


def process_exited() -> None:
    """Multiprocess mode: drop this process's live gauges from the shared directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def render(live: LiveCollector) -> bytes:
    """The exposition text: this process's (or all processes') metrics plus the live ones."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
    else:
        shared = REGISTRY
    own = CollectorRegistry()
    own.register(live)
    return generate_latest(shared) + generate_latest(own)
