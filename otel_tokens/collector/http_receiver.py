"""The collector's HTTP endpoints as aiohttp apps: OTLP/HTTP (`POST /v1/traces`) on one listener;
`/metrics`, `/healthz` and the JSON API (`/api/v1/budgets`, and what comes next) on the other.

The apps are thin: bodies are read with a size limit and a read timeout, decoded and ingested on
`HttpEdge`'s worker pool (otlp_codec does the OTLP rules), and answered. A protobuf body goes to
the compiled walk first (`ingest_protobuf`): decoded only when the walk is not built or declines.
`/metrics` content negotiation (OpenMetrics when asked for, gzip when accepted, `name[]` filters)
is decided by prometheus_client's own `choose_encoder` (with our encoders for its default answers:
exposition_text.py) and `gzip_accepted`. Routing, 404 and 405 (with `Allow`)
are aiohttp's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

from aiohttp import web
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import gzip_accepted

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.collector.api_guard import GuardApi
from otel_tokens.collector.auth import BearerToken
from otel_tokens.collector.http_edge import HttpEdge
from otel_tokens.collector.otlp_codec import (
    JSON,
    PROTOBUF,
    UNDECODABLE,
    Decoded,
    Rejected,
    decode_json,
    decode_protobuf,
    decompress,
    encode_message,
    partial_success,
)
from otel_tokens.collector.store import StoreError
from otel_tokens.exposition_text import choose_encoder
from otel_tokens.pipeline import IngestResult, Pipeline

__all__ = ["BUDGETS_PATH", "HEALTH_PATH", "METRICS_PATH", "TRACES_PATH", "api_app", "otlp_app"]

logger = logging.getLogger("otel_tokens.collector")

TRACES_PATH = "/v1/traces"
BUDGETS_PATH = "/api/v1/budgets"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
_GRPC_INVALID_ARGUMENT = 3  # google.rpc.Code, used in the Status body of 4xx responses
_TEXT = "text/plain"
_READ_CHUNK = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- who may ask -----------------------------------------------------------------------------------


def _bearer_guard(
    token_for: Callable[[str], BearerToken | None],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: a request to a path whose token is set must carry `Authorization: Bearer <it>`."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = token_for(request.path)
        if token is not None and not token.accepts(request.headers.get("Authorization")):
            response = web.Response(
                status=HTTPStatus.UNAUTHORIZED, text="missing or wrong bearer token\n", content_type=_TEXT,
                headers={"WWW-Authenticate": 'Bearer realm="otel-tokens"'},
            )  # fmt: skip
            response.force_close()  # the body was not read
            return response
        return await handler(request)

    return guard


# --- OTLP/HTTP -------------------------------------------------------------------------------------


class _Otlp:
    def __init__(self, pipeline: Pipeline, edge: HttpEdge, max_body_bytes: int) -> None:
        self.pipeline = pipeline
        self.edge = edge
        self.max_body_bytes = max_body_bytes

    async def export(self, request: web.Request) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        try:
            if content_type not in (PROTOBUF, JSON):
                raise Rejected(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                    f"unsupported Content-Type {content_type!r}; use {PROTOBUF} or {JSON}",
                )  # fmt: skip
            body = await self._read_body(request)
            encoding = request.headers.get("Content-Encoding", "").strip().lower()
            reply = await self.edge.run_blocking(self._ingest, body, content_type, encoding)
        except Rejected as rejected:
            return self._reject(rejected, content_type)
        except StoreError as exc:  # not kept on disk, so not acknowledged: 503 is one the exporter retries
            return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, text=f"{exc}\n", content_type=_TEXT)
        return web.Response(body=reply, content_type=content_type)

    def _ingest(self, body: bytes, content_type: str, encoding: str) -> bytes:
        """Decode, count, and encode the answer — on the worker pool."""
        data = decompress(body, encoding, self.max_body_bytes)
        if content_type == PROTOBUF:
            response = ingest_protobuf(self.pipeline, data)
        else:
            decoded = decode_json(data)
            result = ingest_decoded(self.pipeline, decoded)
            response = partial_success(result, decoded.undecodable_spans, decoded.first_error)
        return encode_message(response, content_type)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Rejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
                f"body of {request.content_length} bytes exceeds the limit of {limit} bytes "
                "(otlp.max_body_bytes)",
            )  # fmt: skip
        try:
            return await asyncio.wait_for(_read_limited(request, limit), self.edge.limits.read_timeout)
        except asyncio.TimeoutError:
            raise Rejected(
                HTTPStatus.REQUEST_TIMEOUT, "invalid_payload",
                f"body not received within {self.edge.limits.read_timeout:g} s (server.read_timeout_seconds)",
            ) from None  # fmt: skip

    def _reject(self, rejected: Rejected, content_type: str) -> web.Response:
        """Count the payload as rejected and answer with a Status the exporter can log."""
        with swallow_internal_errors("collector.reject_payload"):
            self.pipeline.reject_payload(rejected.reason)
        if content_type in (PROTOBUF, JSON):
            status = status_pb2.Status(code=_GRPC_INVALID_ARGUMENT, message=rejected.message)
            response = web.Response(
                status=rejected.status, body=encode_message(status, content_type), content_type=content_type
            )
        else:
            response = web.Response(status=rejected.status, text=rejected.message + "\n", content_type=_TEXT)
        response.force_close()  # part of the body may be unread; the next request starts clean
        return response


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body (chunked or not: aiohttp decodes the framing), stopping past `limit`."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(_READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise Rejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
                f"body exceeds the limit of {limit} bytes (otlp.max_body_bytes)",
            )  # fmt: skip
        chunks.append(chunk)
    return b"".join(chunks)


def ingest_decoded(pipeline: Pipeline, decoded: Decoded) -> IngestResult:
    """Count a decoded request; spans that could not be decoded are counted as received and rejected."""
    if decoded.undecodable_spans:
        n = decoded.undecodable_spans
        with swallow_internal_errors("collector.reject_spans"):
            pipeline.reject_spans(UNDECODABLE, n)  # through the pipeline's gate: journaled when durable
    return pipeline.ingest_otlp(decoded.request)


def ingest_protobuf(pipeline: Pipeline, data: bytes) -> ExportTraceServiceResponse:
    """Count a serialized export request and answer it: walked without a decode when the compiled
    walk takes it (`Pipeline.ingest_otlp_scanned`), else decoded — piecewise when part of it is
    broken, its good spans kept — and counted. Raises `Rejected` for a body that is no request."""
    result = pipeline.ingest_otlp_scanned(data)
    if result is not None:
        return partial_success(result)
    decoded = decode_protobuf(data)
    return partial_success(ingest_decoded(pipeline, decoded), decoded.undecodable_spans, decoded.first_error)


def otlp_app(
    pipeline: Pipeline, edge: HttpEdge, max_body_bytes: int, token: BearerToken | None = None
) -> web.Application:
    """`POST /v1/traces`; every path needs `token` when one is set."""
    app = web.Application(middlewares=[_bearer_guard(lambda path: token)], client_max_size=max_body_bytes)
    app.router.add_post(TRACES_PATH, _Otlp(pipeline, edge, max_body_bytes).export)
    return app


# --- /metrics, /healthz and the API ----------------------------------------------------------------


def render_metrics(
    registry: CollectorRegistry, accept: str, accept_encoding: str, names: Sequence[str]
) -> tuple[bytes, dict[str, str]]:
    """The scrape body and headers, negotiated by prometheus_client's own helpers."""
    encoder, content_type = choose_encoder(accept)
    source = registry.restricted_registry(names) if names else registry
    body, headers = encoder(source), {"Content-Type": content_type}
    if gzip_accepted(accept_encoding):
        body, headers["Content-Encoding"] = gzip.compress(body, compresslevel=1), "gzip"
    return body, headers


class _Api:
    def __init__(
        self, registry: CollectorRegistry, edge: HttpEdge, ledger: BudgetLedger | None, guard: GuardApi | None
    ) -> None:
        self.registry = registry
        self.edge = edge
        self.ledger = ledger
        self.guard = guard

    async def metrics(self, request: web.Request) -> web.Response:
        body, headers = await self.edge.run_blocking(
            render_metrics, self.registry, request.headers.get("Accept", ""),
            request.headers.get("Accept-Encoding", ""), request.query.getall("name[]", []),
        )  # fmt: skip
        return web.Response(body=body, headers=headers)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type=_TEXT)

    async def budgets(self, request: web.Request) -> web.Response:
        ledger = self.ledger
        if ledger is None:
            raise web.HTTPNotFound(text="this collector tracks no budgets (budgets_file is not set)\n")
        if self.guard is not None:  # with the stop orders guards obey
            answer = await self.edge.run_blocking(self.guard.status_json)
        else:
            status = await self.edge.run_blocking(ledger.status)
            answer = {"budgets": [dataclasses.asdict(s) for s in status]}
        return web.Response(text=json.dumps(answer, sort_keys=True), content_type="application/json")


def api_app(
    registry: CollectorRegistry,
    edge: HttpEdge,
    ledger: BudgetLedger | None = None,
    *,
    token: BearerToken | None = None,
    metrics_token: BearerToken | None = None,
    routes: Sequence[web.RouteDef] = (),
    guard: GuardApi | None = None,
) -> web.Application:
    """/metrics (needs `metrics_token`, else `token`), /healthz (open: liveness probes carry no
    secret and it reveals nothing), `/api/v1/*` (needs `token`); `routes` adds further endpoints;
    `guard` adds the reservation and Alertmanager webhook endpoints (`collector/api_guard.py`)."""

    def token_for(path: str) -> BearerToken | None:
        if path == HEALTH_PATH:
            return None
        if path == METRICS_PATH and metrics_token is not None:
            return metrics_token
        return token

    api = _Api(registry, edge, ledger, guard)
    app = web.Application(middlewares=[_bearer_guard(token_for)])
    app.router.add_get(METRICS_PATH, api.metrics)
    app.router.add_get(HEALTH_PATH, api.health)
    app.router.add_get(BUDGETS_PATH, api.budgets)
    app.add_routes(routes)
    if guard is not None:
        app.add_routes(guard.routes())
    return app
