"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, in front of a test S3 server.

It forwards requests one by one (keep-alive connections are mapped 1:1 to
upstream connections) and, for requests that match a rule, injects a fault:

``"drop_response"``
    forward the request, read the whole response, then close the client's
    connection without sending it (the write happened, its acknowledgement is lost);
``"status"``
    answer with an HTTP error (``503 SlowDown``, ``500 InternalError``, ...)
    without forwarding;
``"reset"``
    reset the client's connection (TCP RST) without forwarding;
``"stall"``
    forward, send the response head and half of the body, then send nothing more
    until the client gives up (the connection is closed after ``stall_seconds``).

The proxy runs its own event loop in a daemon thread, so sync and async tests
can use it alike. Every request is recorded (method, path, fault, time).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "Rule", "Seen", "fault_proxy"]

_ERROR_CODES = {500: "InternalError", 503: "SlowDown"}
#: Seconds an idle connection (no request, no response) may stay open.
_IDLE_TIMEOUT = 120.0


@dataclass
class Rule:
    """Inject ``fault`` into the next ``times`` requests matching method and key."""

    fault: str
    method: str | None = None
    path_contains: str = ""
    times: int = 1
    status: int = 503
    stall_seconds: float = 30.0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or method == self.method)
            and self.path_contains in path
        )


@dataclass(frozen=True)
class Seen:
    """One request that reached the proxy."""

    method: str
    path: str
    fault: str | None
    at: float


@dataclass
class FaultProxy:
    """Listen on 127.0.0.1 and forward to ``upstream`` (``host``, ``port``)."""

    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    #: The most requests that were in flight (read, not yet answered) at once.
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: str, **kw: object) -> Rule:
        """Add a :class:`Rule` (see its fields) and return it."""
        rule = Rule(fault, **kw)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def requests(self, method: str | None = None, path_contains: str = "") -> list[Seen]:
        """The recorded requests, optionally filtered."""
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method) and path_contains in s.path
            ]

    def _take_rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    self.seen.append(Seen(method, path, rule.fault, time.monotonic()))
                    return rule
            self.seen.append(Seen(method, path, None, time.monotonic()))
        return None

    # -- one client connection ------------------------------------------------------

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection(*self.upstream)
        conn = _Connection(creader, cwriter, ureader, uwriter)
        try:
            while True:
                head = await asyncio.wait_for(creader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT)
                method, path, headers = _parse_head(head)
                body = await _read_body(creader, headers, has_body=True)
                rule = self._take_rule(method, path)
                self._count(+1)
                try:
                    if not await conn.answer(rule, method, path, head + body):
                        return
                finally:
                    self._count(-1)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy is shutting down
        finally:
            uwriter.close()
            cwriter.close()

    def _count(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    # -- lifecycle ------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[FaultProxy]:
        """Serve in a daemon thread until the ``with`` block ends."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        server: list[asyncio.Server] = []

        async def start() -> None:
            srv = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = srv.sockets[0].getsockname()[1]
            server.append(srv)
            started.set()

        thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
        started.wait(30)
        try:
            yield self
        finally:

            async def stop() -> None:
                server[0].close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()


@dataclass
class _Connection:
    """A client connection and its upstream connection."""

    creader: asyncio.StreamReader
    cwriter: asyncio.StreamWriter
    ureader: asyncio.StreamReader
    uwriter: asyncio.StreamWriter

    async def answer(self, rule: Rule | None, method: str, path: str, request: bytes) -> bool:
        """Answer one request, applying ``rule``; False when the connection must end."""
        fault = rule.fault if rule is not None else None
        if fault == "reset":
            _reset(self.cwriter)
            return False
        if fault == "status":
            assert rule is not None
            self.cwriter.write(_error_response(rule.status, path))
            await self.cwriter.drain()
            return True
        self.uwriter.write(request)
        await self.uwriter.drain()
        rhead = await asyncio.wait_for(self.ureader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT)
        status, rheaders = _parse_status(rhead)
        has_body = method != "HEAD" and status not in (204, 304) and status >= 200
        rbody = await _read_body(self.ureader, rheaders, has_body=has_body)
        if fault == "drop_response":
            _reset(self.cwriter)
            return False
        if fault == "stall":
            assert rule is not None
            # Half the body, or half the head if there is no body: never complete.
            cut = len(rhead) + len(rbody) // 2 if rbody else len(rhead) // 2
            self.cwriter.write((rhead + rbody)[:cut])
            await self.cwriter.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.creader.read(), rule.stall_seconds)
            return False
        self.cwriter.write(rhead + rbody)
        await self.cwriter.drain()
        return True


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    return method, path, _headers(lines[1:])


def _parse_status(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split(" ", 2)[1]), _headers(lines[1:])


def _headers(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            out[name.strip().lower()] = value.strip()
    return out


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], *, has_body: bool
) -> bytes:
    """Read a message body as raw bytes (Content-Length or chunked)."""
    if not has_body:
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raw = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            raw += size_line + await reader.readexactly(size + 2)
            if size == 0:
                return raw
    return await reader.readexactly(int(headers.get("content-length", "0")))


def _error_response(status: int, path: str) -> bytes:
    code = _ERROR_CODES.get(status, "InjectedError")
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected by the test proxy</Message><Resource>{path}</Resource></Error>"
    ).encode()
    reason = {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def fault_proxy(endpoint: str) -> Iterator[FaultProxy]:
    """Run a :class:`FaultProxy` in front of ``endpoint`` (``http://127.0.0.1:<port>``)."""
    host, port = endpoint.removeprefix("http://").rstrip("/").rsplit(":", 1)
    with FaultProxy((host, int(port))).running() as proxy:
        yield proxy
