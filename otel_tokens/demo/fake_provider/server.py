"""The fake provider's HTTP server: routing, SSE framing, fault injection and the usage ledger.

Wire formats live in `openai_api.py` and `anthropic_api.py`; this module knows nothing about them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from otel_tokens.record import TokenCounts


@dataclass(frozen=True, slots=True)
class ReportedUsage:
    """What the fake provider told the client one call used, in semconv meaning (input includes
    cache tokens) — whether or not the wire format carried it (`sent`=False for a stream whose
    client did not ask for usage)."""

    provider: str
    model: str
    tokens: TokenCounts
    sent: bool = True
    path: str = ""


@dataclass(slots=True)
class FakeRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(slots=True)
class FakeResponse:
    """Either a JSON body or a stream of SSE events (`events`: (event name or None, data))."""

    status: int = 200
    body: Any = None
    events: Iterable[tuple[str | None, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Fault:
    """A failure to inject into the next matching request (tests queue these)."""

    status: int | None = None  # answer with this HTTP status and a provider-shaped error body
    delay_s: float = 0.0  # sleep before answering (client timeouts)
    break_after_events: int | None = None  # cut a stream's connection after N events
    path_contains: str = ""


Handler = Callable[[FakeRequest, "FakeProvider"], FakeResponse]
#: Largest request body read (`otel-tokens fake-provider` may listen beyond loopback).
MAX_BODY_BYTES = 8 * 1024 * 1024
ErrorBody = Callable[[int], Any]


class FakeProvider:
    """Start with `with FakeProvider() as fake:`; point SDKs at `fake.openai_base_url` /
    `fake.anthropic_base_url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, max_history: int | None = None) -> None:
        #: Keep only the last `max_history` calls in `reported` / `requests` (None: all, as tests want).
        self.max_history = max_history
        self._routes: dict[tuple[str, str], Handler] = {}
        self._error_bodies: list[tuple[str, ErrorBody]] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self.reported: list[ReportedUsage] = []
        self.requests: list[FakeRequest] = []
        self._server = _QuietServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        from otel_tokens.demo.fake_provider import anthropic_api, openai_api

        openai_api.register(self)
        anthropic_api.register(self)

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def start(self) -> FakeProvider:
        self._thread = threading.Thread(
            target=lambda: self._server.serve_forever(poll_interval=0.05), name="fake-provider", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- wiring used by the wire-format modules ----------------------------------------------------
    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method, path)] = handler

    def error_body_for(self, path_prefix: str, make: ErrorBody) -> None:
        self._error_bodies.append((path_prefix, make))

    def record(self, usage: ReportedUsage) -> None:
        with self._lock:
            self.reported.append(usage)
            self._trim(self.reported)

    def _trim(self, history: list[Any]) -> None:
        if self.max_history is not None and len(history) > self.max_history:
            del history[: len(history) - self.max_history]

    # --- used by tests ----------------------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def reported_totals(self, provider: str | None = None) -> TokenCounts:
        with self._lock:
            usages = [u for u in self.reported if provider is None or u.provider == provider]
        total = TokenCounts()
        for u in usages:
            total = total + u.tokens
        return total

    def reset(self) -> None:
        with self._lock:
            self.reported.clear()
            self.requests.clear()
            self._faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in path:
                    self._faults.remove(fault)
                    return fault
        return None

    def _dispatch(self, request: FakeRequest) -> tuple[FakeResponse, Fault | None]:
        with self._lock:
            self.requests.append(request)
            self._trim(self.requests)
        fault = self._take_fault(request.path)
        if fault and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault and fault.status:
            return FakeResponse(status=fault.status, body=self._error_body(request.path, fault.status)), fault
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return FakeResponse(status=404, body={"error": {"message": f"no route {request.path}"}}), fault
        return handler(request, self), fault

    def _error_body(self, path: str, status: int) -> Any:
        # The most specific prefix wins: OpenAI's "/v1/" must not answer for Anthropic's "/v1/messages".
        for prefix, make in sorted(self._error_bodies, key=lambda entry: -len(entry[0])):
            if path.startswith(prefix):
                return make(status)
        return {"error": {"message": f"injected HTTP {status}"}}


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up (a timeout test) leaves a broken pipe behind: expected, not news."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else keep-alive calls stall ~40 ms on delayed ACKs

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the ledger
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:  # a real API refuses huge bodies too; never buffer them
                self.close_connection = True
                self._send_json(413, {"error": {"message": f"body over {MAX_BODY_BYTES} bytes"}})
                return
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                self._send_json(400, {"error": {"message": "body is not JSON"}})
                return
            path = self.path.split("?", 1)[0]
            request = FakeRequest("POST", path, {k.lower(): v for k, v in self.headers.items()}, body)
            response, fault = provider._dispatch(request)
            if response.events is not None:
                self._send_sse(response, fault.break_after_events if fault else None)
            else:
                self._send_json(response.status, response.body, response.headers)

        def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _send_sse(self, response: FakeResponse, break_after: int | None) -> None:
            self.send_response(response.status)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            for n, chunk in enumerate(_sse_frames(response.events or ())):
                if break_after is not None and n >= break_after:
                    # An abrupt cut, as a dropped connection looks to the client.
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)
                self.wfile.flush()

    return _Handler


def _sse_frames(events: Iterable[tuple[str | None, Any]]) -> Iterator[bytes]:
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {name}\n" if name else ""
        yield f"{head}data: {payload}\n\n".encode()
