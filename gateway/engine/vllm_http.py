"""A lean HTTP/1.1 client for the one hot call: a streamed completion POSTed to a vLLM replica.

Why not httpx here: httpx spends ~0.6 ms of CPU per request on this path (measured against an
upstream that answers at once: 0.85 ms per round trip with httpx, 0.17 ms over a bare asyncio
stream), which was most of what the gateway added to a request.  Why not aiohttp (its C
parser; what vLLM's benchmarks and LiteLLM use): it costs more client CPU on both halves of the
relay, measured side by side with this client on 2026-12-02 (``.venv/bin/python -m
bench.bench_http_client``, docs/benchmarks.md "HTTP client and JSON on the relay path (issue
17)"; aiohttp 3.14.5, bench_relay's instant upstream, 256 tokens per answer, medians of 5
interleaved repeats of client CPU): per streamed token through ``sse_events``, 3.6-4.8 µs here
against 4.2-6.4 µs (x1.03-1.33 at 1, 16 and 64 streams, in two runs); per non-streamed request,
70-85 µs against 155-215 µs (x2.0-3.2); httpx x4.6-7.9 per token, x36-83 per request.  So this
client stays; rerun that benchmark before replacing it with a library.

vLLM serves plain HTTP/1.1 (uvicorn), so this client speaks exactly that: one POST with a
JSON body; a response framed by Content-Length, chunked transfer-encoding, or the connection
closing; keep-alive connections reused most-recent-first; ``http`` and ``https``.  No proxies,
redirects or compression (it sends no Accept-Encoding).  Everything else (load, unload, models, health) stays on httpx.

Every read runs under ``read_timeout_s`` and every connect under ``connect_timeout_s``, so a
replica that stops answering ends the request instead of hanging it.  A response that is not
read to its end closes its connection rather than returning it to the pool.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
# What a broken, closed or stalled connection raises; LimitOverrunError: a runaway header.
_FAILURES = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,
)


class ConnectionFailed(Exception):
    """Connecting, writing or reading failed, timed out, or the answer was not HTTP/1.1."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()

    @property
    def usable(self) -> bool:
        # An idle connection the server closed reads as EOF (or has a closing transport).
        return not (self.reader.at_eof() or self.writer.is_closing())


class StreamedResponse:
    """Status and headers read; the body is read by :meth:`chunks` or :meth:`read`."""

    def __init__(self, conn: _Conn, status: int, headers: dict[str, str], timeout: float) -> None:
        self.status, self.headers = status, headers
        self.conn, self._timeout = conn, timeout
        # One timer per response for every body read, rather than an ``asyncio.timeout`` per
        # read (a TimerHandle made and cancelled per token: a tenth of the gateway's CPU per
        # streamed token, issue 17).  Each read only moves the deadline; the timer, when it
        # fires, re-arms itself at the deadline or cancels the task still reading.
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[Any] | None = None  # the task inside a read, else None
        self._expired = False
        self.complete = False  # the whole body was read: the connection may be reused
        encoding = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in encoding
        length = headers.get("content-length")
        self._left = int(length) if length is not None and not self._chunked else -1
        self.keep_alive = headers.get("connection", "").lower() != "close" and (
            self._chunked or self._left >= 0
        )

    async def _some(self) -> bytes:
        self._deadline = self._loop.time() + self._timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        self._reader = reader = asyncio.current_task()
        try:
            return await self.conn.reader.read(65536)
        except asyncio.CancelledError:
            if self._expired and reader is not None and reader.uncancel() == 0:
                raise TimeoutError(f"no data for {self._timeout} s") from None
            raise
        finally:
            self._reader = None

    def _check_deadline(self) -> None:
        self._timer = None
        if self._reader is None or self._expired:
            return  # not reading: the next read arms the timer again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._expired = True
        self._reader.cancel()

    def close(self) -> None:
        """Stop the read timer (the response is done with, read or not)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _more(self) -> bytes:
        data = await self._some()
        if not data:
            raise ConnectionFailed("the connection closed inside the body")
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked."""
        if self._chunked:
            async for data in self._dechunked():
                yield data
        elif self._left >= 0:
            while self._left > 0:
                data = await self._more()
                self._left -= len(data)
                yield data
        else:
            while data := await self._some():
                yield data
        self.complete = True

    async def _dechunked(self) -> AsyncIterator[bytes]:
        # Chunked framing parsed from whole reads rather than a readuntil/readexactly (and a
        # timeout) per size line and per chunk: a small answer usually arrives in one read,
        # and what is buffered goes out joined, one yield per read.
        buf = b""
        ready: list[bytes] = []
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                if ready:
                    yield b"".join(ready)
                    ready.clear()
                buf += await self._more()
                continue
            size = int(buf[:end].split(b";", 1)[0].strip(), 16)  # ValueError: not HTTP
            if size < 0:
                raise ConnectionFailed(f"a negative chunk size: {buf[:end]!r}")
            if size == 0:
                buf = buf[end + 2 :]
                break
            while len(buf) < end + 2 + size + 2:
                if ready:
                    yield b"".join(ready)
                    ready.clear()
                buf += await self._more()
            start = end + 2
            if buf[start + size : start + size + 2] != b"\r\n":
                raise ConnectionFailed("a chunk did not end with CRLF")
            ready.append(buf[start : start + size])
            buf = buf[start + size + 2 :]
        if ready:
            yield b"".join(ready)
        # Trailer fields, then the empty line that ends the body.
        while (end := buf.find(b"\r\n")) != 0:
            if end < 0:
                buf += await self._more()
            else:
                buf = buf[end + 2 :]
        if len(buf) > 2:
            self.keep_alive = False  # bytes past the response: this connection is not sane

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])


class StreamPool:
    """Keep-alive HTTP/1.1 connections to one server (``http://host:port`` or ``https://``)."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str],
        connect_timeout_s: float,
        read_timeout_s: float,
        max_idle: int = 256,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"Host: {host_header}\r\n{extra}Content-Type: application/json\r\n"
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._idle: list[_Conn] = []
        self._max_idle = max_idle

    async def _connect(self) -> _Conn:
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls, limit=_MAX_HEAD
            )
        return _Conn(reader, writer)

    async def _send(self, conn: _Conn, request: bytes) -> StreamedResponse:
        conn.writer.write(request)
        async with asyncio.timeout(self._read_timeout):
            await conn.writer.drain()
            head = await conn.reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head[:-4].decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ConnectionFailed(f"not an HTTP/1.x answer: {status_line!r}")
        headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        return StreamedResponse(conn, int(status), headers, self._read_timeout)

    async def _open(self, request: bytes) -> StreamedResponse:
        """Send on an idle connection if one still works, else on a new one."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable:
                conn.close()
                continue
            try:
                return await self._send(conn, request)
            except (OSError, asyncio.IncompleteReadError):
                # The server closed this idle connection as it was reused: the request never
                # reached it, so sending it again on a fresh connection is safe.
                conn.close()
        conn = await self._connect()
        try:
            return await self._send(conn, request)
        except BaseException:
            conn.close()
            raise

    @asynccontextmanager
    async def post(self, path: str, body: bytes) -> AsyncIterator[StreamedResponse]:
        """POST ``body``; the connection goes back to the pool only if the body was read."""
        request = (
            f"POST {self._prefix}{path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        try:
            response = await self._open(request)
        except _FAILURES as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from exc
        try:
            yield response
        except _FAILURES as exc:
            response.complete = False
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            response.close()
            conn = response.conn
            if response.complete and response.keep_alive and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                conn.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
