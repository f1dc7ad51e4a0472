"""The lean HTTP/1.1 stream client against a raw asyncio server scripting each framing case."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from gateway.engine.vllm_http import ConnectionFailed, StreamPool
from tools.harness import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

Script = Callable[[int], list[bytes]]  # request number -> the pieces to write, in order


@dataclass
class RawServer:
    script: Script
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    close_after: bool = False  # close the connection after each answer
    stall: bool = False  # never answer
    gap_s: float = 0.0  # between two pieces
    stall_after: int | None = None  # pieces written, then silence with the connection open

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                    ).split(b":")[1]
                )
                self.requests.append(head + await reader.readexactly(length))
                if self.stall:
                    await asyncio.sleep(3600)
                for i, piece in enumerate(self.script(len(self.requests))):
                    if i == self.stall_after:
                        await asyncio.sleep(3600)
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(self.gap_s)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture(loop_scope="session")
async def served() -> AsyncIterator[Callable[[RawServer], asyncio.Future[StreamPool]]]:
    servers: list[asyncio.Server] = []
    pools: list[StreamPool] = []

    async def start(raw: RawServer, read_timeout: float = 5.0) -> StreamPool:
        port = free_port()
        servers.append(await asyncio.start_server(raw.handle, "127.0.0.1", port))
        pool = StreamPool(
            f"http://127.0.0.1:{port}",
            headers={"authorization": "Bearer k"},
            connect_timeout_s=2,
            read_timeout_s=read_timeout,
        )
        pools.append(pool)
        return pool

    yield start  # type: ignore[misc]
    for pool in pools:
        await pool.aclose()
    for server in servers:
        server.close()


CHUNKED = [
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    b"6\r\ndata: \r\n",
    b"0",  # a chunk-size line split across writes: "0a", 10 bytes
    b'a\r\n{"a": 1}\n\n\r\n',
    b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
]


async def body(pool: StreamPool) -> bytes:
    async with pool.post("/v1/x", b'{"q": 1}') as response:
        assert response.status == 200
        return await response.read()


async def test_chunked_body_and_keep_alive(
    served: Callable[..., asyncio.Future[StreamPool]],
) -> None:
    raw = RawServer(lambda _: CHUNKED)
    pool = await served(raw)
    for _ in range(3):
        assert await body(pool) == b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    assert raw.connections == 1  # reused
    first = raw.requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\n") and b"authorization: Bearer k\r\n" in first
    assert first.endswith(b'Content-Length: 8\r\n\r\n{"q": 1}')


@pytest.mark.parametrize("split", ["whole", "bytewise"])
async def test_chunked_framing_however_it_is_split(
    served: Callable[..., asyncio.Future[StreamPool]], split: str
) -> None:
    # One write (parsed from a single read) or one byte per write (every boundary split);
    # chunk extensions and a trailer field are skipped, and the connection is reused.
    whole = b"".join(
        [
            CHUNKED[0],
            b"5;ext=1\r\nhello\r\n",
            b"1\r\n \r\n",
            b"5\r\nworld\r\n",
            b"0\r\nx-trailer: yes\r\n\r\n",
        ]
    )
    pieces = [whole] if split == "whole" else [whole[i : i + 1] for i in range(len(whole))]
    raw = RawServer(lambda _: pieces)
    pool = await served(raw)
    assert await body(pool) == b"hello world"
    assert await body(pool) == b"hello world"
    assert raw.connections == 1


async def test_malformed_chunk_fails(served: Callable[..., asyncio.Future[StreamPool]]) -> None:
    for broken in (b"3\r\nabcdef\r\n0\r\n\r\n", b"-3\r\nabc\r\n0\r\n\r\n", b"zz\r\n"):
        pool = await served(RawServer(lambda _, b=broken: [CHUNKED[0], b]))
        with pytest.raises(ConnectionFailed):
            await body(pool)


async def test_content_length_and_error_status(
    served: Callable[..., asyncio.Future[StreamPool]],
) -> None:
    payload = b'{"error": {"message": "bad", "code": 400}}'
    raw = RawServer(
        lambda _: [
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n" % len(payload),
            payload[:10],
            payload[10:],
        ]
    )
    pool = await served(raw)
    async with pool.post("/v1/x", b"{}") as response:
        assert response.status == 400 and await response.read() == payload
    async with pool.post("/v1/x", b"{}") as response:
        await response.read()
    assert raw.connections == 1


async def test_connection_close_framing_is_not_reused(
    served: Callable[..., asyncio.Future[StreamPool]],
) -> None:
    raw = RawServer(
        lambda _: [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", b"all of it"], close_after=True
    )
    pool = await served(raw)
    assert await body(pool) == b"all of it"
    assert await body(pool) == b"all of it"
    assert raw.connections == 2


async def test_idle_connection_closed_by_the_server_is_replaced(
    served: Callable[..., asyncio.Future[StreamPool]],
) -> None:
    # Content-Length framing, but the server hangs up after each answer (an idle timeout).
    raw = RawServer(lambda _: [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], close_after=True)
    pool = await served(raw)
    assert await body(pool) == b"ok"
    await asyncio.sleep(0.05)
    assert await body(pool) == b"ok"
    assert raw.connections == 2


async def test_unread_body_closes_the_connection(
    served: Callable[..., asyncio.Future[StreamPool]],
) -> None:
    raw = RawServer(lambda _: CHUNKED)
    pool = await served(raw)
    async with pool.post("/v1/x", b"{}") as response:
        async for _ in response.chunks():
            break  # the client went away
    assert await body(pool)
    assert raw.connections == 2


async def test_stalled_server_times_out(served: Callable[..., asyncio.Future[StreamPool]]) -> None:
    pool = await served(RawServer(lambda _: [], stall=True), read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="TimeoutError"):
        await body(pool)
    assert time.monotonic() - started < 2


async def test_a_body_that_stalls_times_out(
    served: Callable[..., asyncio.Future[StreamPool]],
) -> None:
    pool = await served(RawServer(lambda _: CHUNKED, stall_after=3), read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="TimeoutError"):
        await body(pool)
    assert time.monotonic() - started < 2
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the timer's cancel was taken back


async def test_the_read_timeout_bounds_each_gap_not_the_whole_body(
    served: Callable[..., asyncio.Future[StreamPool]],
) -> None:
    # A gap of 0.1 s after each of the five writes, 0.5 s in all, under a 0.3 s read timeout.
    pool = await served(RawServer(lambda _: CHUNKED, gap_s=0.1), read_timeout=0.3)
    assert await body(pool) == b'data: {"a": 1}\n\ndata: [DONE]\n\n'


async def test_cut_inside_the_body_fails(served: Callable[..., asyncio.Future[StreamPool]]) -> None:
    raw = RawServer(lambda _: CHUNKED[:3], close_after=True)
    pool = await served(raw)
    with pytest.raises(ConnectionFailed):
        await body(pool)


async def test_refused_connection_fails_fast() -> None:
    pool = StreamPool(
        f"http://127.0.0.1:{free_port()}", headers={}, connect_timeout_s=2, read_timeout_s=2
    )
    with pytest.raises(ConnectionFailed):
        await body(pool)


async def test_control_get_survives_the_server_closing_a_reused_connection() -> None:
    # uvicorn closes idle keep-alive connections; a GET that loses that race is sent once more
    # on a fresh connection instead of calling the replica down.
    from gateway.engine.vllm_client import VLLMClient

    models = b'{"object": "list", "data": [{"id": "base", "parent": null}]}'
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        served = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if connections == 1 and served == 1:
                    break  # the second request on the first connection: close, no answer
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(models), models)
                )
                await writer.drain()
                served += 1
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    client = VLLMClient(f"http://127.0.0.1:{port}")
    try:
        assert (await client.models()).base == "base"
        assert (await client.models()).base == "base"  # reused connection closed: retried
        assert connections == 2
    finally:
        await client.aclose()
        server.close()
