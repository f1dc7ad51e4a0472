"""The relay's HTTP client and JSON parser: client CPU per streamed token and per request.

Issue 17 part 4 asks whether the hand-written HTTP/1.1 client (``gateway/engine/vllm_http.py``)
and orjson still earn their place against libraries.  One run starts bench_relay's vLLM-shaped
upstream (instant mode: every answer written at once, one SSE event per token with usage on
each) as a process of its own and drives it from this process with three clients, interleaved
(the order rotates each repeat), each kept for the whole run as the gateway keeps its pool:

* ``vllm_http``: the gateway's own path, ``VLLMClient.stream`` (the StreamPool, then
  ``sse_events`` and orjson);
* ``aiohttp``: one ``ClientSession`` (its C parser), ``resp.content.iter_any()``, with a read
  timeout per socket read as the gateway needs one;
* ``httpx``: one ``AsyncClient``, ``aiter_bytes()``, the timeouts VLLMClient gives it.

Two layers are measured: *HTTP only* (the body drained, de-chunked) and *+ SSE + JSON* (the
same bytes through the gateway's ``sse_events`` and orjson, as the relay uses them), at 1, 16
and 64 concurrent streams; and non-streamed requests (a whole chat completion with
Content-Length, parsed), per request.  The cost is this process's CPU time
(``time.process_time``: the upstream is another process), which a busy machine disturbs far
less than wall time; medians over repeats, ratios against vllm_http.

Then a micro-benchmark of the JSON libraries on the upstream's own event bytes (each ``data:``
payload of a streamed answer, captured over HTTP): ``json.loads``, ``orjson.loads`` and
``msgspec.json.decode`` (untyped, the drop-in), CPU ns per event, median of interleaved repeats.

    .venv/bin/python -m bench.bench_http_client [--tokens 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
import orjson

from bench.bench_gateway_overhead import BASE, _process
from bench.bench_relay import TOKEN_TEXT
from gateway.engine.vllm_client import VLLMClient, sse_events
from gateway.engine.vllm_http import StreamPool
from tools.harness import REPO, free_port, wait_until_up

CLIENTS = ("vllm_http", "aiohttp", "httpx")
# (concurrent streams, answers per stream in one timed run)
STREAMS = ((1, 48), (16, 6), (64, 3))
READ_TIMEOUT_S = 600.0  # what VLLMClient gives the stream (settings' default)
# Longer than VLLMClient's 2 s: on this shared machine the upstream can wait seconds for a core,
# and a connect is not what is measured.
CONNECT_TIMEOUT_S = 10.0
# The upstream never closes an idle connection and a busy gateway never lets one idle, so the
# libraries keep theirs between timed runs (their defaults, 5 s and 15 s, would reconnect).
KEEPALIVE_S = 600.0
CHAT = "/v1/chat/completions"

Job = Callable[[], Awaitable[int]]  # one connection's work: the units (tokens, requests) done
HTTPX_SHARE = 8


def payload(tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": BASE,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": tokens,
        "stream": stream,
    }
    if stream:  # what upstream_body sends
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return body


class Client:
    """One HTTP client library, opened once for the run: its stream, its whole request."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        # The gateway's own client (it connects within 2 s; only the untimed warm-up connects).
        self.vllm = VLLMClient(url, timeout_s=READ_TIMEOUT_S, control_timeout_s=5.0)
        self.pool = StreamPool(
            url, headers={}, connect_timeout_s=CONNECT_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S
        )
        self.aio: aiohttp.ClientSession | None = None
        self.httpx = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=1024, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_S
            ),
        )

    async def open(self) -> None:
        # limit=0: no cap on connections, as the StreamPool has none.
        self.aio = aiohttp.ClientSession(
            self.url,
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
            ),
        )

    async def aclose(self) -> None:
        await self.vllm.aclose()
        await self.pool.aclose()
        await self.httpx.aclose()
        if self.aio is not None:
            await self.aio.close()

    async def body(self, body: bytes) -> AsyncIterator[bytes]:
        """The streamed answer's body, de-chunked, as the library hands it over."""
        if self.name == "vllm_http":
            async with self.pool.post(CHAT, body) as response:
                _ok(response.status)
                async for data in response.chunks():
                    yield data
        elif self.name == "aiohttp":
            assert self.aio is not None
            headers = {"content-type": "application/json"}
            async with self.aio.post(CHAT, data=body, headers=headers) as resp:
                _ok(resp.status)
                async for data in resp.content.iter_any():
                    yield data
        else:
            headers = {"content-type": "application/json"}
            async with self.httpx.stream("POST", CHAT, content=body, headers=headers) as r:
                _ok(r.status_code)
                async for data in r.aiter_bytes():
                    yield data

    async def events(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The streamed answer's events, parsed as the relay parses them."""
        if self.name == "vllm_http":  # exactly the gateway's call
            async for event in self.vllm.stream("chat", request):
                yield event
            return
        async for event in sse_events(self.body(json.dumps(request).encode()), self.url):
            yield event

    async def whole(self, request: dict[str, Any]) -> Any:
        """A non-streamed request: the whole answer, parsed."""
        body = json.dumps(request).encode()
        headers = {"content-type": "application/json"}
        if self.name == "vllm_http":
            async with self.pool.post(CHAT, body) as response:
                _ok(response.status)
                data = await response.read()
        elif self.name == "aiohttp":
            assert self.aio is not None
            async with self.aio.post(CHAT, data=body, headers=headers) as resp:
                _ok(resp.status)
                data = await resp.read()
        else:
            r = await self.httpx.post(CHAT, content=body, headers=headers)
            _ok(r.status_code)
            data = r.content
        return orjson.loads(data)


def _ok(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}")


# --- one timed run --------------------------------------------------------------------------


@dataclass
class Sample:
    cpu_s: float
    wall_s: float
    units: int  # tokens or requests
    errors: list[str] = field(default_factory=list)


async def _timed(work: list[Job]) -> Sample:
    errors: list[str] = []

    async def guarded(job: Job) -> int:
        try:
            return await job()
        except Exception as exc:  # counted and reported, never hidden
            errors.append(f"{type(exc).__name__}: {exc}")
            return 0

    cpu, wall = time.process_time(), time.perf_counter()
    units = sum(await asyncio.gather(*(guarded(job) for job in work)))
    return Sample(time.process_time() - cpu, time.perf_counter() - wall, units, errors)


def stream_jobs(client: Client, layer: str, streams: int, answers: int, tokens: int) -> list[Job]:
    request = payload(tokens, stream=True)
    body = json.dumps(request).encode()
    marker = b'"content":"' + TOKEN_TEXT.encode() + b'"'

    async def http_only() -> int:
        got = 0
        for _ in range(answers):
            tail = b""
            async for data in client.body(body):
                got += data.count(marker)  # the count only checks the answer arrived whole
                tail = (tail + data)[-32:]
            if not tail.endswith(b"data: [DONE]\n\n"):
                raise RuntimeError(f"no [DONE]: {tail!r}")
        return got

    async def with_events() -> int:
        got = 0
        for _ in range(answers):
            async for event in client.events(request):
                for choice in event.get("choices") or ():
                    got += choice.get("delta", {}).get("content") == TOKEN_TEXT
        return got

    job = http_only if layer == "http" else with_events
    return [job] * streams


def whole_jobs(client: Client, concurrency: int, each: int, tokens: int) -> list[Job]:
    request = payload(tokens, stream=False)

    async def job() -> int:
        for _ in range(each):
            answer = await client.whole(request)
            if answer["usage"]["completion_tokens"] != tokens:
                raise RuntimeError(f"a wrong answer: {answer!r}"[:200])
        return each

    return [job] * concurrency


# --- the measurement ------------------------------------------------------------------------


@dataclass
class Cell:
    """One (scenario, client): CPU µs per unit over the repeats."""

    per_unit_us: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, sample: Sample, expected: int) -> None:
        self.errors += sample.errors
        if sample.units != expected:
            self.errors.append(f"{sample.units} of {expected} units")
        if sample.units:
            self.per_unit_us.append(sample.cpu_s / sample.units * 1e6)
            self.rate.append(sample.units / sample.wall_s)

    @property
    def us(self) -> float:
        return statistics.median(self.per_unit_us) if self.per_unit_us else float("nan")


@dataclass(frozen=True)
class Plan:
    tokens: int  # per streamed answer
    requests: int  # non-streamed requests per timed run
    whole_tokens: int  # per non-streamed answer


def jobs(
    client: Client, layer: str, conc: int, plan: Plan, warm: bool = False
) -> tuple[list[Job], int]:
    """One timed run's work for ``client`` and the units it must deliver; ``warm``: one
    unit per connection (the untimed warm-up)."""
    # httpx costs 5-45x the others: a share of their work keeps the run to minutes on a
    # shared machine; the cost per unit does not depend on it.
    share = HTTPX_SHARE if client.name == "httpx" else 1
    if layer == "whole":
        each = 1 if warm else max(1, plan.requests // conc // share)
        return whole_jobs(client, conc, each, plan.whole_tokens), conc * each
    each = 1 if warm else max(1, dict(STREAMS)[conc] // share)
    return stream_jobs(client, layer, conc, each, plan.tokens), conc * each * plan.tokens


Scenario = tuple[str, int]  # (layer: "http" | "events" | "whole", concurrency)


async def measure(url: str, plan: Plan, repeats: int) -> dict[Scenario, dict[str, Cell]]:
    clients = [Client(name, url) for name in CLIENTS]
    for client in clients:
        await client.open()
    scenarios = [
        (layer, streams) for layer in ("http", "events", "whole") for streams, _ in STREAMS
    ]
    cells: dict[Scenario, dict[str, Cell]] = {}
    try:
        for layer, conc in scenarios:
            cells[(layer, conc)] = {c.name: Cell() for c in clients}
            for client in clients:  # connections opened and code paths warmed, untimed
                await _timed(jobs(client, layer, conc, plan, warm=True)[0])
            for rep in range(repeats):
                for client in clients[rep % len(clients) :] + clients[: rep % len(clients)]:
                    work, expected = jobs(client, layer, conc, plan)
                    cells[(layer, conc)][client.name].add(await _timed(work), expected)
    finally:
        for client in clients:
            await client.aclose()
    return cells


async def capture_events(url: str, tokens: int) -> list[bytes]:
    """Each ``data:`` payload of one streamed answer, as ``sse_events`` hands it to orjson."""
    client = Client("vllm_http", url)
    raw = b""
    try:
        async for data in client.body(json.dumps(payload(tokens, stream=True)).encode()):
            raw += data
    finally:
        await client.aclose()
    lines = (line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:"))
    return [line for line in lines if line != b"[DONE]"]


def json_bench(events: list[bytes], repeats: int) -> dict[str, float]:
    """CPU ns per event of each decoder, median of interleaved repeats."""
    decoder = msgspec.json.Decoder()
    decoders: dict[str, Callable[[bytes], Any]] = {
        "json.loads": json.loads,
        "orjson.loads": orjson.loads,
        "msgspec.json.decode": decoder.decode,
    }
    for name, decode in decoders.items():  # the same objects, or the comparison is void
        if decode(events[1]) != json.loads(events[1]):
            raise RuntimeError(f"{name} decoded differently")
    loops = max(1, 20_000 // len(events))
    seen: dict[str, list[float]] = {name: [] for name in decoders}
    names = list(decoders)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            decode = decoders[name]
            started = time.process_time_ns()
            for _ in range(loops):
                for event in events:
                    decode(event)
            seen[name].append((time.process_time_ns() - started) / (loops * len(events)))
    return {name: statistics.median(ns) for name, ns in seen.items()}


# --- the report -----------------------------------------------------------------------------

LAYERS = {
    "http": "streamed, HTTP only (body drained)",
    "events": "streamed, + SSE + JSON (the relay's parsing)",
    "whole": "non-streamed request",
}


def table(cells: dict[Scenario, dict[str, Cell]], tokens: int, whole_tokens: int) -> str:
    lines = [
        "| path | concurrency | unit | vllm_http µs | aiohttp µs | httpx µs "
        "| aiohttp / vllm_http | httpx / vllm_http | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (layer, conc), row in cells.items():
        base = row["vllm_http"].us
        unit = f"request ({whole_tokens} tokens)" if layer == "whole" else "token"
        errors = sum(len(c.errors) for c in row.values())
        lines.append(
            f"| {LAYERS[layer]} | {conc} | {unit} | {base:.2f} | {row['aiohttp'].us:.2f} "
            f"| {row['httpx'].us:.2f} | **x{row['aiohttp'].us / base:.2f}** "
            f"| x{row['httpx'].us / base:.2f} | {errors} |"
        )
    return "\n".join(lines)


def json_table(ns: dict[str, float], events: list[bytes]) -> str:
    size = statistics.median(len(e) for e in events)
    lines = [
        f"| decoder ({len(events)} upstream events, median {size:.0f} bytes) | CPU ns per event "
        "| x orjson.loads |",
        "| --- | ---: | ---: |",
    ]
    for name, value in ns.items():
        lines.append(f"| {name} | {value:,.0f} | x{value / ns['orjson.loads']:.2f} |")
    return "\n".join(lines)


def run(tokens: int, repeats: int, requests: int, whole_tokens: int, json_repeats: int) -> str:
    root = Path(tempfile.mkdtemp(prefix="fw-bench-http-client-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        cmd = [sys.executable, "-m", "bench.bench_relay", "--upstream", str(port)]
        up = stack.enter_context(_process(cmd, {**os.environ}, root / "upstream.log", cwd=REPO))
        wait_until_up(f"{url}/health", up, root / "upstream.log")
        cells = asyncio.run(measure(url, Plan(tokens, requests, whole_tokens), repeats))
        events = asyncio.run(capture_events(url, tokens))
    ns = json_bench(events, json_repeats)
    errors = [e for row in cells.values() for c in row.values() for e in c.errors]
    notes = [
        f"Client CPU (this process, `time.process_time`) per unit, median of {repeats} "
        f"interleaved repeats; upstream: bench_relay's, instant, {tokens} tokens per streamed "
        "answer, one SSE event per token with usage on each, another process on loopback.",
        f"aiohttp {aiohttp.__version__} (C parser: "
        f"{'yes' if 'aiohttp._http_parser' in sys.modules else 'no'}), "
        f"httpx {httpx.__version__}, orjson {orjson.__version__}, msgspec {msgspec.__version__}, "
        f"Python {sys.version.split()[0]}.",
        "vllm_http's *+ SSE + JSON* row is `VLLMClient.stream`, the gateway's own call; the "
        "others feed the same `sse_events` (orjson) from their body iterators; httpx runs "
        f"1/{HTTPX_SHARE} of the others' answers and requests per timed run (its cost per unit "
        "does not depend on it).",
    ]
    if errors:
        notes.append(f"Errors ({len(errors)}): {sorted(set(errors))[:5]}")
    return (
        table(cells, tokens, whole_tokens)
        + "\n\n"
        + json_table(ns, events)
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per streamed answer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=768, help="non-streamed, per run")
    parser.add_argument("--whole-tokens", type=int, default=16, help="tokens per non-streamed")
    parser.add_argument("--json-repeats", type=int, default=15)
    args = parser.parse_args(argv)
    out = run(args.tokens, args.repeats, args.requests, args.whole_tokens, args.json_repeats)
    print(out)
    if "- Errors (" in out:
        sys.exit(1)


if __name__ == "__main__":
    main()
