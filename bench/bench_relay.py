"""The relay's cost per streamed token: output tokens/s through one gateway vs straight to vLLM.

One run starts, as separate processes on loopback: a vLLM-shaped upstream (below) that streams
256-token chat answers, one SSE event per token with usage on each as vLLM's
``continuous_usage_stats`` sends it, and ``flywheel serve`` with FLYWHEEL_ENGINE=vllm pointed at
it (``--before TREE`` adds another source tree's gateway beside it, ``--workers N`` passes
``--workers``), and LiteLLM's proxy in front of the same upstream when its executable is found
(LITELLM_BIN, PATH, or the bench venv ``make bench`` makes; ``--no-litellm`` leaves it out).
The same load goes straight to the upstream and through each gateway, interleaved (the order
rotates each repeat), so drift on this shared machine hits all alike:

* instant: the upstream writes the whole answer at once; 1, 16 and 64 clients, back to back;
* paced like vLLM: one token per stream every 10 ms (one decode step for every running
  stream), 128 and 256 streams, which offer 100 tok/s each.

It reports output tokens/s, the delivered/offered ratio (paced), time to the first token's
chunk (p50), and the gateway's own CPU per token (user + system, its process and children,
from /proc), which a busy machine disturbs far less than throughput.  Medians over repeats.

The load client is this process: raw asyncio connections with httptools' C parser (llhttp,
the parser aiohttp uses), keep-alive, one stream per connection; it prints its own CPU per
token so it can be seen not to be the bottleneck.  The upstream is the same: an asyncio
server on httptools, with every event pre-encoded, far cheaper per token than a gateway.

    .venv/bin/python -m bench.bench_relay [--before TREE] [--workers N] [--repeats 3]
        [--no-litellm] [--only instant:16 ...]
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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx

from bench.bench_gateway_overhead import (
    BASE,
    _flywheel_env,
    _process,
    _start_flywheel,
    cpu_seconds,
    litellm_bin,
)
from tools.harness import REPO, free_port, wait_until_up

TOKENS = 256
TOKEN_TEXT = " tok"  # counted by the client; in no other field of any event
PACE_S = 0.010
# (mode, streams, answers per stream)
SCENARIOS = (
    ("instant", 1, 64),
    ("instant", 16, 8),
    ("instant", 64, 4),
    ("paced", 128, 2),
    ("paced", 256, 2),
)
CLIENT = "asyncio + httptools (llhttp, aiohttp's parser), keep-alive, one stream per connection"

# --- the vLLM-shaped upstream ---------------------------------------------------------------


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _usage(k: int) -> dict[str, int]:
    return {"prompt_tokens": 5, "total_tokens": 5 + k, "completion_tokens": k}


def _answer(n: int, include_usage: bool) -> tuple[bytes, list[bytes], bytes]:
    """(the head and role event, one framed chunk per token, the finish to the end)."""
    head = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0, "model": BASE}

    def event(delta: dict[str, str], finish: str | None, k: int) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _chunk(_data({**head, "choices": [choice], "usage": _usage(k)}))

    start = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    ) + event({"role": "assistant", "content": ""}, None, 0)
    tokens = [event({"content": TOKEN_TEXT}, None, k) for k in range(1, n + 1)]
    end = event({"content": ""}, "length", n)
    if include_usage:
        end += _chunk(_data({**head, "choices": [], "usage": _usage(n)}))
    return start, tokens, end + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class _Upstream:
    """Serves /health, /v1/models, the adapter routes and chat completions (streamed or not)."""

    def __init__(self) -> None:
        self.paced = False
        self.streams: list[tuple[asyncio.Transport, list[bytes], bytes]] = []
        self._answers: dict[tuple[int, bool], tuple[bytes, list[bytes], bytes]] = {}

    def answer(self, n: int, include_usage: bool) -> tuple[bytes, list[bytes], bytes]:
        key = (n, include_usage)
        if key not in self._answers:
            self._answers[key] = _answer(n, include_usage)
        return self._answers[key]

    def whole(self, n: int) -> bytes:
        """A non-streamed answer of ``n`` tokens (bench_http_client's per-request cost)."""
        message = {"role": "assistant", "content": TOKEN_TEXT * n}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}
        head = {"id": "chatcmpl-up", "object": "chat.completion", "created": 0, "model": BASE}
        return json.dumps({**head, "choices": [choice], "usage": _usage(n)}).encode()

    def handle(self, transport: asyncio.Transport, method: bytes, path: bytes, body: bytes) -> None:
        if path == b"/v1/chat/completions":
            request = json.loads(body)
            if not request.get("stream"):
                return _reply(transport, 200, self.whole(int(request.get("max_tokens") or 1)))
            start, tokens, end = self.answer(
                int(request.get("max_tokens") or TOKENS),
                bool((request.get("stream_options") or {}).get("include_usage")),
            )
            if not self.paced:
                transport.write(start + b"".join(tokens) + end)
            else:
                transport.write(start)
                self.streams.append((transport, list(reversed(tokens)), end))
            return
        if path == b"/bench/mode":
            self.paced = body == b"paced"
            return _reply(transport, 200, b"ok")
        if path == b"/v1/models":
            card = {"id": BASE, "object": "model", "root": BASE, "parent": None}
            return _reply(transport, 200, json.dumps({"object": "list", "data": [card]}).encode())
        if path == b"/v1/unload_lora_adapter":  # the routes exist; no adapter is loaded
            err = {"message": "not found", "type": "NotFoundError", "param": None, "code": 404}
            return _reply(transport, 404, json.dumps({"error": err}).encode())
        _reply(transport, 200 if path in (b"/health", b"/v1/load_lora_adapter") else 404, b"")

    async def tick(self) -> None:
        """Every 10 ms, one token for every running stream (vLLM's decode step)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due = max(due + PACE_S, loop.time())
            await asyncio.sleep(due - loop.time())
            running = []
            for transport, left, end in self.streams:
                if transport.is_closing():
                    continue
                transport.write(left.pop())
                if left:
                    running.append((transport, left, end))
                else:
                    transport.write(end)
            self.streams = running


def _reply(transport: asyncio.Transport, status: int, body: bytes) -> None:
    head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n"
    transport.write(head.encode() + b"content-type: application/json\r\n\r\n" + body)


class _ServerConn(asyncio.Protocol):
    def __init__(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.split(b"?", 1)[0]
        body = b"".join(self.body)
        self.url, self.body = b"", []
        self.upstream.handle(self.transport, self.parser.get_method(), path, body)


async def serve_upstream(port: int) -> None:
    upstream = _Upstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _ServerConn(upstream), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await upstream.tick()


# --- the load client ------------------------------------------------------------------------


class _ClientConn(asyncio.Protocol):
    """One keep-alive connection that streams answers, one at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.first: float | None = None
        self.tokens = 0
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        found = body.count(b'":"' + TOKEN_TEXT.encode() + b'"')
        if found and self.first is None:
            self.first = time.perf_counter()
        self.tokens += found
        self.tail = body[-16:]

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def ask(self, request: bytes) -> tuple[float, int, str | None]:
        """(time to the first token's chunk, tokens, what was wrong or None)."""
        assert self.transport is not None
        self.first, self.tokens, self.tail = None, 0, b""
        self.done = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self.transport.write(request)
        await asyncio.wait_for(self.done, 120)
        status = self.parser.get_status_code()
        if status != 200:
            return 0.0, 0, f"HTTP {status}"
        if not self.tail.endswith(b"data: [DONE]\n\n"):
            return 0.0, self.tokens, "no [DONE]"
        return (self.first or started) - started, self.tokens, None


@dataclass
class Run:
    tokens: int = 0
    elapsed: float = 0.0
    ttfc: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def _request(url: str, headers: dict[str, str], max_tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": BASE,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    parts = urlsplit(url)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: {parts.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def load(url: str, headers: dict[str, str], streams: int, answers: int) -> Run:
    """``streams`` connections, each streaming ``answers`` answers back to back."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    conns = []
    for _ in range(streams):
        _, conn = await loop.create_connection(
            _ClientConn, parts.hostname or "127.0.0.1", parts.port or 80
        )
        conns.append(conn)
    warm = _request(url, headers, 8)
    await asyncio.gather(*(c.ask(warm) for c in conns))  # connections and caches, both sides
    request = _request(url, headers, TOKENS)
    run = Run()

    async def client(conn: _ClientConn) -> None:
        for _ in range(answers):
            try:
                ttfc, tokens, wrong = await conn.ask(request)
            except (ConnectionError, TimeoutError) as exc:
                ttfc, tokens, wrong = 0.0, 0, type(exc).__name__
            if wrong is None and tokens != TOKENS:
                wrong = f"{tokens} tokens"
            if wrong is not None:
                run.errors[wrong] = run.errors.get(wrong, 0) + 1
                return
            run.tokens += tokens
            run.ttfc.append(ttfc)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    run.elapsed = time.perf_counter() - started
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()
    return run


# --- the measurement ------------------------------------------------------------------------


@dataclass
class Row:
    mode: str
    streams: int
    target: str
    tok_s: float
    offered: float | None
    ttfc_p50_ms: float
    cpu_us_per_token: float | None
    client_cpu_us_per_token: float
    errors: int


async def measure(
    up_url: str,
    targets: dict[str, tuple[str, dict[str, str]]],
    pids: dict[str, int],
    repeats: int,
    scale: float,
    scenarios: tuple[tuple[str, int, int], ...] = SCENARIOS,
) -> list[Row]:
    rows = []
    async with httpx.AsyncClient() as control:
        for mode, streams, answers in scenarios:
            (await control.post(f"{up_url}/bench/mode", content=mode.encode())).raise_for_status()
            answers = max(1, round(answers * scale))
            seen: dict[str, list[tuple[Run, float | None, float]]] = {t: [] for t in targets}
            names = list(targets)
            for rep in range(repeats):
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    url, headers = targets[name]
                    pid = pids.get(name)
                    cpu = cpu_seconds(pid) if pid else 0.0
                    mine = time.process_time()
                    run = await load(url, headers, streams, answers)
                    mine = time.process_time() - mine
                    used = (cpu_seconds(pid) - cpu) if pid else None
                    seen[name].append((run, used, mine))
            offered = streams * (1 / PACE_S) if mode == "paced" else None
            for name, runs in seen.items():
                rows.append(_row(mode, streams, name, runs, offered))
    return rows


def _row(
    mode: str,
    streams: int,
    target: str,
    runs: list[tuple[Run, float | None, float]],
    offered: float | None,
) -> Row:
    def per_token(seconds: float | None, run: Run) -> float | None:
        return None if seconds is None or not run.tokens else seconds / run.tokens * 1e6

    cpu = [c for run, used, _ in runs if (c := per_token(used, run)) is not None]
    return Row(
        mode,
        streams,
        target,
        statistics.median(run.tokens / run.elapsed for run, _, _ in runs),
        offered,
        statistics.median(statistics.median(run.ttfc or [0.0]) * 1000 for run, _, _ in runs),
        statistics.median(cpu) if cpu else None,
        statistics.median(per_token(mine, run) or 0.0 for run, _, mine in runs),
        sum(sum(run.errors.values()) for run, _, _ in runs),
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| upstream | streams | target | tok/s | delivered/offered | first chunk p50 ms "
        "| gateway CPU µs/token | client CPU µs/token | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = f"{r.tok_s / r.offered:.3f}" if r.offered else "-"
        cpu = "-" if r.cpu_us_per_token is None else f"{r.cpu_us_per_token:.1f}"
        lines.append(
            f"| {r.mode} | {r.streams} | {r.target} | {r.tok_s:,.0f} | {ratio} "
            f"| {r.ttfc_p50_ms:.1f} | {cpu} | {r.client_cpu_us_per_token:.1f} | {r.errors} |"
        )
    return "\n".join(lines)


def ratios(rows: list[Row]) -> list[str]:
    """This gateway against the ``--before`` one, scenario by scenario."""
    get = {(r.mode, r.streams, r.target): r for r in rows}
    out = []
    for mode, streams, _ in SCENARIOS:
        now = get.get((mode, streams, "flywheel"))
        if now is None:
            continue
        old = get.get((mode, streams, "flywheel-before"))
        if old is not None:
            cpu = (
                f", CPU per token x{now.cpu_us_per_token / old.cpu_us_per_token:.2f}"
                if now.cpu_us_per_token and old.cpu_us_per_token
                else ""
            )
            out.append(f"{mode} {streams}: tok/s x{now.tok_s / old.tok_s:.2f}{cpu}")
        lite = get.get((mode, streams, "litellm"))
        if lite is not None and lite.tok_s:
            cpu = (
                f", gateway CPU per token x{now.cpu_us_per_token / lite.cpu_us_per_token:.2f}"
                if now.cpu_us_per_token and lite.cpu_us_per_token
                else ""
            )
            out.append(
                f"{mode} {streams}: Flywheel / LiteLLM tok/s x{now.tok_s / lite.tok_s:.2f}{cpu}"
            )
    return out


def _start_litellm(
    stack: ExitStack, lite: str, up_url: str, env: dict[str, str], root: Path
) -> tuple[str, dict[str, str], int]:
    """LiteLLM's proxy in front of the upstream, as bench_gateway_overhead starts it."""
    port = free_port()
    config = root / "litellm.yaml"
    model = {"model": f"openai/{BASE}", "api_base": f"{up_url}/v1", "api_key": "sk-none"}
    config.write_text(json.dumps({"model_list": [{"model_name": BASE, "litellm_params": model}]}))
    master = f"sk-{os.urandom(16).hex()}"  # LiteLLM refuses to start without one
    lite_env = {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    lite_env["LITELLM_MASTER_KEY"] = master
    cmd = [lite, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    log = root / "litellm.log"
    proc = stack.enter_context(_process(cmd, lite_env, log))
    wait_until_up(f"http://127.0.0.1:{port}/health/liveliness", proc, log, timeout=180)
    return f"http://127.0.0.1:{port}", {"authorization": f"Bearer {master}"}, proc.pid


def run(
    before: Path | None,
    workers: int,
    repeats: int,
    scale: float,
    litellm: bool = True,
    scenarios: tuple[tuple[str, int, int], ...] = SCENARIOS,
) -> str:
    root = Path(tempfile.mkdtemp(prefix="fw-bench-relay-"))
    up_port = free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    py = sys.executable
    env = {**os.environ}
    with ExitStack() as stack:
        up_cmd = [py, "-m", "bench.bench_relay", "--upstream", str(up_port)]
        up = stack.enter_context(_process(up_cmd, env, root / "upstream.log", cwd=REPO))
        wait_until_up(f"{up_url}/health", up, root / "upstream.log")
        targets: dict[str, tuple[str, dict[str, str]]] = {"direct": (up_url, {})}
        pids: dict[str, int] = {}
        trees = {"flywheel": REPO} | ({"flywheel-before": before} if before else {})
        for name, tree in trees.items():
            port = free_port()
            fw_env = _flywheel_env(env, root / name, up_url, port)
            url, auth, pids[name] = _start_flywheel(stack, name, tree, fw_env, root, port, workers)
            targets[name] = (url, auth)
        lite = litellm_bin() if litellm else None
        if lite is not None:
            url, auth, pids["litellm"] = _start_litellm(stack, lite, up_url, env, root)
            targets["litellm"] = (url, auth)
        rows = asyncio.run(measure(up_url, targets, pids, repeats, scale, scenarios))
    notes = [
        f"{TOKENS} tokens per answer; medians of {repeats} interleaved repeats; "
        f"{workers} gateway worker(s); load client: {CLIENT}.",
        f"LiteLLM: its proxy ({lite}), one process, a master key, no database"
        if lite
        else "LiteLLM: not run (" + ("--no-litellm" if not litellm else "no executable") + ")",
        *ratios(rows),
    ]
    return table(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, help="another Flywheel source tree, beside this")
    parser.add_argument("--workers", type=int, default=1, help="flywheel serve --workers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply answers per stream")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="MODE:STREAMS",
        help="run only these scenarios, e.g. instant:16 paced:256",
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # serve the upstream
    args = parser.parse_args(argv)
    if args.upstream:
        asyncio.run(serve_upstream(args.upstream))
        return
    scenarios: tuple[tuple[str, int, int], ...] = SCENARIOS
    if args.only:
        scenarios = tuple(s for s in SCENARIOS if f"{s[0]}:{s[1]}" in args.only)
        if len(scenarios) != len(args.only):
            known = [f"{mode}:{streams}" for mode, streams, _ in SCENARIOS]
            parser.error(f"--only takes some of {known}")
    print(run(args.before, args.workers, args.repeats, args.scale, not args.no_litellm, scenarios))


if __name__ == "__main__":
    main()
