"""Where the collector's HTTP listeners run: one aiohttp event loop, in one thread, for all of them.

aiohttp owns the HTTP work — keep-alive, chunked bodies, header limits, routing, 404/405 — and its
keep-alive timer starts when a connection opens, so a socket that never sends a request (or drips
its headers) is closed after `idle_timeout` instead of holding a thread. Idle sockets cost a file
descriptor and no thread: every listener shares this one loop, and request handlers hand their CPU
work to a small worker pool (`HttpEdge.run_blocking`) so the loop keeps accepting while a large
batch is decoded.

What aiohttp does not have is a connection cap, added here as a wrapper around its protocol
factory (`_ConnectionCap`): at the cap, a new connection takes the place of one that never sent a
byte, else of the one quiet the longest (an idle flood cannot lock exporters out), or is reset at
once when every connection sent bytes within the last second. Sockets are bound here too, before
the loop starts, so a port already in use fails start-up with the port and the flag that moves it,
and port 0 resolves at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aiohttp import web

__all__ = ["AddressInUse", "EdgeLimits", "HttpEdge", "Listener", "bind_socket"]

logger = logging.getLogger("otel_tokens.collector")

T = TypeVar("T")

#: A connection quiet for less than this is never evicted to make room (it is likely mid-request).
_EVICT_AFTER_QUIET_SECONDS = 1.0


class AddressInUse(OSError):
    """A listener's port is taken: the message names the port and the flag (or key) that moves it."""


@dataclass(frozen=True)
class EdgeLimits:
    """What any one client may hold: see the `server.*` keys in collector/config.py."""

    idle_timeout: float = 30.0
    read_timeout: float = 30.0
    max_connections: int = 256
    workers: int = 4


@dataclass
class Listener:
    """One bound socket and the aiohttp app that serves it."""

    name: str
    sock: socket.socket
    app: web.Application

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def bind_socket(host: str, port: int, what: str, moved_by: str) -> socket.socket:
    """A listening TCP socket. `0.0.0.0` is IPv4 only; an IPv6 literal such as `::` binds IPv6 (and
    IPv4-mapped addresses where the system allows it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart despite TIME_WAIT
        sock.bind((host, port))
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, host, port, what, moved_by) from None
    sock.setblocking(False)
    return sock


def bind_error(exc: OSError, host: str, port: int, what: str, moved_by: str) -> OSError:
    """The error a user can act on: which port, for what, and how to pick another."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        error: OSError = AddressInUse(
            f"port {port} is already in use ({what} on {where}); another collector may be running — "
            f"stop it or choose another port with {moved_by}"
        )
    else:
        error = OSError(f"cannot listen on {where} ({what}): {exc.strerror or exc}; see {moved_by}")
    error.errno = exc.errno  # a message without the "[Errno N]" prefix, the number still there
    return error


class HttpEdge:
    """Serve several aiohttp apps on pre-bound sockets from one background event loop."""

    def __init__(self, limits: EdgeLimits, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limits = limits
        self._ssl = ssl_context
        self._listeners: list[Listener] = []
        self._pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="otel-tokens-http")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.AbstractServer] = []
        self.caps: dict[str, _ConnectionCap] = {}
        self._stopped: set[int] = set()  # listeners stopped alone (stop_listener), by index

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work (decode, ingest, render) off the loop, so accepting and reading go on."""
        return await self._loop.run_in_executor(self._pool, fn, *args)

    def start(self) -> None:
        """Start the loop thread and every listener; returns once all of them accept connections."""
        self._thread = threading.Thread(target=self._loop.run_forever, name="otel-tokens-http", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_all(), self._loop).result(timeout=30)

    async def _start_all(self) -> None:
        for listener in self._listeners:
            runner = web.AppRunner(
                listener.app,
                keepalive_timeout=self.limits.idle_timeout,  # counted from connect: silent sockets too
                access_log=None,
                auto_decompress=False,  # otlp_codec inflates, bounded by the size limit
                handle_signals=False,
                shutdown_timeout=2.0,
            )
            await runner.setup()
            self._runners.append(runner)
            assert runner.server is not None
            cap = _ConnectionCap(runner.server, self.limits.max_connections, listener.name)
            self.caps[listener.name] = cap
            server = await self._loop.create_server(
                cap,
                sock=listener.sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self.limits.idle_timeout if self._ssl is not None else None,
            )
            self._servers.append(server)

    def stop_listener(self, listener: Listener) -> None:
        """Stop one listener as `stop()` stops them all, while the others keep serving (the collector
        ends OTLP intake first and closes /metrics last, after counting what it still held)."""
        if self._thread is None or listener not in self._listeners:
            return
        index = self._listeners.index(listener)
        asyncio.run_coroutine_threadsafe(self._stop_one(index), self._loop).result(timeout=10)

    async def _stop_one(self, index: int) -> None:
        if index in self._stopped or index >= len(self._servers):
            return
        self._stopped.add(index)
        self._servers[index].close()
        await self._runners[index].cleanup()
        cap = self.caps.get(self._listeners[index].name)
        for conn in list(cap.open if cap is not None else ()):
            conn.abort()

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the runners' shutdown timeout)."""
        if self._thread is not None:
            future = asyncio.run_coroutine_threadsafe(self._stop_all(), self._loop)
            try:
                future.result(timeout=10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)
                self._thread = None
        for listener in self._listeners:
            listener.sock.close()
        self._pool.shutdown(wait=True)
        if not self._loop.is_running():
            self._loop.close()

    async def _stop_all(self) -> None:
        for i, server in enumerate(self._servers):
            if i not in self._stopped:
                server.close()
        for i, runner in enumerate(self._runners):
            if i not in self._stopped:
                await runner.cleanup()
        for cap in self.caps.values():  # whatever aiohttp did not close (e.g. mid-handshake)
            for conn in list(cap.open):
                conn.abort()
        # Let the handlers of just-closed connections finish, so none is destroyed while pending.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._servers.clear()
        self._runners.clear()
        self._stopped.clear()


class _ConnectionCap:
    """A protocol factory that admits at most `limit` connections to the wrapped one."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int, name: str) -> None:
        self._factory = factory
        self.limit = limit
        self.name = name
        self.open: dict[_Capped, None] = {}  # admitted connections (insertion-ordered)
        self.refused = 0
        self.evicted = 0

    def __call__(self) -> _Capped:
        return _Capped(self, self._factory())

    def admit(self, conn: _Capped) -> bool:
        if len(self.open) >= self.limit and not self._evict_quietest():
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                logger.warning("%s: connection cap of %d reached; refused %d so far (server.max_connections)",
                               self.name, self.limit, self.refused)  # fmt: skip
            return False
        self.open[conn] = None
        return True

    def _evict_quietest(self) -> bool:
        """Make room by closing the connection quiet the longest: one that never sent a byte first
        (it has no request in flight), else one quiet for a while (likely idle between requests)."""
        quietest = min(self.open, key=lambda c: (c.has_spoken, c.last_activity), default=None)
        if quietest is None or (
            quietest.has_spoken and time.monotonic() - quietest.last_activity < _EVICT_AFTER_QUIET_SECONDS
        ):
            return False
        self.evicted += 1
        self.open.pop(quietest, None)
        quietest.abort()
        return True


class _Capped(asyncio.Protocol):
    """Forwards every protocol event to the real (aiohttp) protocol, recording when data last came."""

    def __init__(self, cap: _ConnectionCap, inner: asyncio.Protocol) -> None:
        self._cap = cap
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self.has_spoken = False
        self.last_activity = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._cap.admit(self):
            self._transport.abort()  # reset at once: the client sees a refusal, not a hang
            return
        self._admitted = True
        self._inner.connection_made(transport)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self.has_spoken = True
        self.last_activity = time.monotonic()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cap.open.pop(self, None)
        if self._admitted:
            self._admitted = False
            self._inner.connection_lost(exc)
