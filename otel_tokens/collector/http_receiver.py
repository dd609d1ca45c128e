"""OTLP/HTTP trace receiver (`POST /v1/traces`) and the Prometheus `/metrics` endpoint.

Both are `ThreadingHTTPServer`s speaking HTTP/1.1 with keep-alive, so an OTLP exporter reuses one
connection instead of paying a TCP handshake per batch; Nagle is off so a response's header and
body writes are not held back waiting for an ACK (a 40 ms stall per request otherwise).

The receiver follows the OTLP/HTTP spec: protobuf or OTLP/JSON bodies (JSON with hex trace and span
ids, which plain protobuf JSON would read as base64), optional gzip/deflate, a response in the
request's encoding with `partial_success` when spans were rejected, and a `google.rpc.Status` body
on 4xx. Every body is bounded twice — by Content-Length before reading and by the decompressed size
(a gzip bomb stops at the limit) — and a bad request never touches counts already made.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import json
import logging
import socket
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import CollectorRegistry

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.exposition_text import choose_encoder
from otel_tokens.pipeline import IngestResult, Pipeline

__all__ = ["MetricsHttpServer", "OtlpHttpServer", "decode_request", "partial_success"]

logger = logging.getLogger("otel_tokens.collector")

TRACES_PATH = "/v1/traces"
BUDGETS_PATH = "/api/v1/budgets"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_GRPC_INVALID_ARGUMENT = 3  # google.rpc.Code, used in the Status body of 4xx responses


@dataclass
class Rejected(Exception):
    """A request we refuse as a whole: HTTP status, a bounded reason label for the rejection
    counter, and a message telling the sender what was wrong."""

    status: HTTPStatus
    reason: str
    message: str


# --- decoding (no sockets here: unit-testable, shared with nothing else) ---------------------------


def decode_request(body: bytes, content_type: str, encoding: str, limit: int) -> ExportTraceServiceRequest:
    """Decompress and parse one export body; raise `Rejected` with the status the spec asks for."""
    data = _decompress(body, encoding, limit)
    if content_type == PROTOBUF:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            raise Rejected(
                HTTPStatus.BAD_REQUEST, "undecodable_payload", f"invalid OTLP protobuf: {exc}"
            ) from None
        return request
    return _parse_otlp_json(data)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise Rejected(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
            f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none",
        )  # fmt: skip
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)  # never inflates more than the limit
    except zlib.error as exc:
        raise Rejected(
            HTTPStatus.BAD_REQUEST, "undecodable_payload", f"invalid {encoding} body: {exc}"
        ) from None
    if len(data) > limit:
        raise Rejected(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
            f"decompressed body exceeds the limit of {limit} bytes (otlp.max_body_bytes)",
        )  # fmt: skip
    if not inflater.eof:
        raise Rejected(HTTPStatus.BAD_REQUEST, "undecodable_payload", f"truncated {encoding} body")
    return data


def _parse_otlp_json(data: bytes) -> ExportTraceServiceRequest:
    try:
        document = json.loads(data)
        _hex_ids_to_base64(document)
        request = ExportTraceServiceRequest()
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
        return request
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise Rejected(HTTPStatus.BAD_REQUEST, "undecodable_payload", f"invalid OTLP/JSON: {exc}") from None


_ID_LENGTHS = {"traceId": 32, "trace_id": 32, "spanId": 16, "span_id": 16, "parentSpanId": 16,
               "parent_span_id": 16}  # fmt: skip


def _hex_ids_to_base64(document: Any) -> None:
    """OTLP/JSON encodes trace and span ids as hex; protobuf's JSON mapping expects base64."""
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans"):
                _convert_ids(span)
                for link in _items(span, "links"):
                    _convert_ids(link)


def _items(parent: Any, *names: str) -> list[Any]:
    if isinstance(parent, dict):
        for name in names:
            value = parent.get(name)
            if isinstance(value, list):
                return value
    return []


def _convert_ids(obj: Any) -> None:
    if not isinstance(obj, dict):
        return
    for name, length in _ID_LENGTHS.items():
        value = obj.get(name)
        if isinstance(value, str) and len(value) == length:
            # A hex id of the right length cannot be a valid base64 id of that field; anything else
            # is left to the protobuf parser to accept (base64) or reject.
            with contextlib.suppress(ValueError):
                obj[name] = base64.b64encode(bytes.fromhex(value)).decode("ascii")


def partial_success(result: IngestResult) -> ExportTraceServiceResponse:
    """The OTLP response: empty on full success, else the rejected count and why."""
    response = ExportTraceServiceResponse()
    if result.spans_rejected:
        response.partial_success.rejected_spans = result.spans_rejected
        response.partial_success.error_message = "; ".join(result.reasons) or "spans rejected"
    return response


def encode_message(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        text: str = json_format.MessageToJson(message, indent=None)
        return text.encode()
    return bytes(message.SerializeToString())


# --- the servers --------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: serve_forever()'s poll interval, i.e. how long shutdown() may wait; short for quick stops.
    poll_interval = 0.05
    request_queue_size = 128

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in host:  # an IPv6 literal such as "::"
            self.address_family = socket.AF_INET6
        super().__init__((host, port), handler)

    def serve(self) -> None:
        self.serve_forever(self.poll_interval)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class OtlpHttpServer(_Server):
    """Binds on construction (so port 0 resolves at once); `serve_forever()` in a thread."""

    def __init__(self, host: str, port: int, pipeline: Pipeline, max_body_bytes: int) -> None:
        self.pipeline = pipeline
        self.max_body_bytes = max_body_bytes
        super().__init__(host, port, _OtlpHandler)


class MetricsHttpServer(_Server):
    """/metrics for Prometheus, /healthz, and /api/v1/budgets (the ledger's exact standing, as JSON,
    for in-process guards and scripts) when the collector tracks budgets."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, budgets: BudgetLedger | None = None
    ) -> None:
        self.registry = registry
        self.budgets = budgets
        super().__init__(host, port, _MetricsHandler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _reply(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self) -> None:
        self._reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")


class _OtlpHandler(_Handler):
    server: OtlpHttpServer

    def do_POST(self) -> None:
        if self.path.partition("?")[0] != TRACES_PATH:
            self.close_connection = True  # the unread body would corrupt the next request
            return self._not_found()
        content_type = self.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        try:
            if content_type not in (PROTOBUF, JSON):
                raise Rejected(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                    f"unsupported Content-Type {content_type!r}; use {PROTOBUF} or {JSON}",
                )  # fmt: skip
            body = self._read_body()
            encoding = self.headers.get("Content-Encoding", "").strip().lower()
            request = decode_request(body, content_type, encoding, self.server.max_body_bytes)
        except Rejected as rejected:
            return self._reject(rejected, content_type)
        result = self.server.pipeline.ingest_otlp(request)
        self._reply(HTTPStatus.OK, encode_message(partial_success(result), content_type), content_type)

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise Rejected(HTTPStatus.LENGTH_REQUIRED, "invalid_payload", "Content-Length required") from None
        if length < 0:
            raise Rejected(HTTPStatus.BAD_REQUEST, "invalid_payload", f"invalid Content-Length {length}")
        if length > limit:
            raise Rejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
                f"body of {length} bytes exceeds the limit of {limit} bytes (otlp.max_body_bytes)",
            )  # fmt: skip
        return self.rfile.read(length)

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(64).split(b";")[0], 16)
            except ValueError:
                raise Rejected(
                    HTTPStatus.BAD_REQUEST, "invalid_payload", "invalid chunked encoding"
                ) from None
            if size == 0:
                self.rfile.readline(64)
                return b"".join(chunks)
            total += size
            if total > limit:
                raise Rejected(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", f"body exceeds {limit} bytes"
                )
            chunks.append(self.rfile.read(size))
            self.rfile.readline(64)

    def _reject(self, rejected: Rejected, content_type: str) -> None:
        """Count the payload as rejected and answer with a Status the exporter can log."""
        with swallow_internal_errors("collector.reject_payload"):
            self.server.pipeline.reject_payload(rejected.reason)
        self.close_connection = True  # part of the body may be unread; start the next one clean
        if content_type in (PROTOBUF, JSON):
            status = status_pb2.Status(code=_GRPC_INVALID_ARGUMENT, message=rejected.message)
            body, reply_type = encode_message(status, content_type), content_type
        else:
            body, reply_type = rejected.message.encode() + b"\n", "text/plain; charset=utf-8"
        self._reply(rejected.status, body, reply_type)

    def _method_not_allowed(self) -> None:
        if self.path.partition("?")[0] != TRACES_PATH:
            return self._not_found()
        self.close_connection = True
        self._reply(
            HTTPStatus.METHOD_NOT_ALLOWED, b"use POST\n", "text/plain; charset=utf-8", {"Allow": "POST"}
        )

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _method_not_allowed


class _MetricsHandler(_Handler):
    server: MetricsHttpServer

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/healthz":
            return self._reply(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        if path == BUDGETS_PATH and self.server.budgets is not None:
            status = [dataclasses.asdict(s) for s in self.server.budgets.status()]
            body = json.dumps({"budgets": status}, sort_keys=True).encode()
            return self._reply(HTTPStatus.OK, body, "application/json")
        if path != "/metrics":
            return self._not_found()
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(self.server.registry)
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body, headers = gzip.compress(body, compresslevel=1), {"Content-Encoding": "gzip"}
        self._reply(HTTPStatus.OK, body, content_type, headers)

    def do_POST(self) -> None:
        self.close_connection = True
        self._reply(
            HTTPStatus.METHOD_NOT_ALLOWED, b"use GET\n", "text/plain; charset=utf-8", {"Allow": "GET"}
        )
