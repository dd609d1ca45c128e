"""The collector as a user runs it: real OTLP exporters in, Prometheus text out, bad input survived.

Every test starts a `CollectorService` on ephemeral ports, sends spans with the real OpenTelemetry
OTLP exporters (HTTP and gRPC) or raw HTTP where the exporter cannot produce the bad input, and
reads the totals back from /metrics the way Prometheus would.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_tokens import metric_names
from otel_tokens import semconv as sc
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.otlp_codec import decode_body
from tests import prom_text
from tests.prom_text import total

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- helpers -------------------------------------------------------------------------------------


def make_spans(
    n: int,
    *,
    agent: str = "support",
    model: str = "gpt-4o",
    scope: str = sc.INSTRUMENTATION_SCOPE,
    nested: bool = False,
    **extra: Any,
) -> list[ReadableSpan]:
    """n finished GenAI spans from a real TracerProvider: 100 input (30 cache read), 20 output, $0.01.

    `nested` puts them under a plain parent span: a foreign nested usage span is held for the
    dedupe window (its parent might be another instrumentation's span of the same call)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "test-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(scope)
    attributes: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_PROVIDER_NAME: "openai",
        sc.GEN_AI_REQUEST_MODEL: model,
        sc.GEN_AI_USAGE_INPUT_TOKENS: 100,
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 30,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 20,
        sc.GEN_AI_AGENT_NAME: agent,
        sc.OTEL_TOKENS_TASK: "answer-ticket",
        sc.OTEL_TOKENS_COST_USD: 0.01,
        **extra,
    }
    parent = tracer.start_span("agent step") if nested else None
    context = trace.set_span_in_context(parent) if parent is not None else None
    for _ in range(n):
        tracer.start_span(f"chat {model}", context, kind=SpanKind.CLIENT, attributes=attributes).end()
    if parent is not None:
        parent.end()
    provider.shutdown()
    return list(exporter.get_finished_spans())


def scrape(service: CollectorService, accept: str = "") -> Samples:
    return prom_text.samples(prom_text.scrape(service.metrics_port, accept=accept))


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def wait_for_tokens(service: CollectorService, expected: float, **labels: str) -> Samples:
    samples: Samples = {}

    def reached() -> bool:
        nonlocal samples
        samples = scrape(service)
        return total(samples, "llm_tokens_total", **labels) >= expected

    wait_for(reached)
    assert total(samples, "llm_tokens_total", **labels) == expected
    return samples


def post(
    service: CollectorService, body: bytes, headers: dict[str, str], path: str = "/v1/traces"
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def protobuf_body(spans: Sequence[ReadableSpan]) -> bytes:
    return bytes(encode_spans(spans).SerializeToString())


PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def service() -> Iterator[CollectorService]:
    config = CollectorConfig(
        http_port=0, grpc_port=0, metrics_port=0, max_body_bytes=256 * 1024,
        dedupe_hold_seconds=0.05, flush_interval_seconds=0.02,
    )  # fmt: skip
    with CollectorService(config) as running:
        yield running


# --- the happy paths, with the real exporters ----------------------------------------------------


def test_http_exporter_spans_become_exact_token_and_cost_counters(service: CollectorService):
    exporter = HttpExporter(endpoint=f"http://127.0.0.1:{service.http_port}/v1/traces")
    assert exporter.export(make_spans(7)) == SpanExportResult.SUCCESS
    assert exporter.export(make_spans(3, agent="coder")) == SpanExportResult.SUCCESS
    exporter.shutdown()
    samples = wait_for_tokens(service, 10 * 120)
    support = {"agent": "support", "task": "answer-ticket", "model": "gpt-4o", "provider": "openai"}
    assert total(samples, "llm_tokens_total", **support, token_type="input") == 7 * 70
    assert total(samples, "llm_tokens_total", **support, token_type="cache_read") == 7 * 30
    assert total(samples, "llm_tokens_total", **support, token_type="output") == 7 * 20
    assert total(samples, "llm_tokens_total", agent="coder") == 3 * 120
    assert total(samples, "llm_cost_usd_total", **support) == pytest.approx(0.07)
    assert total(samples, "llm_cost_usd_total", agent="coder") == pytest.approx(0.03)
    assert total(samples, "llm_requests_total", **support, status="ok") == 7


def test_grpc_exporter_with_gzip_counts_the_same(service: CollectorService):
    exporter = GrpcExporter(
        endpoint=f"127.0.0.1:{service.grpc_port}", insecure=True, compression=grpc.Compression.Gzip
    )
    assert exporter.export(make_spans(5)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    samples = wait_for_tokens(service, 5 * 120)
    assert total(samples, "llm_cost_usd_total") == pytest.approx(0.05)


def test_gzip_http_and_foreign_spans_flushed_after_the_dedupe_hold(service: CollectorService):
    exporter = HttpExporter(
        endpoint=f"http://127.0.0.1:{service.http_port}/v1/traces", compression=Compression.Gzip
    )
    assert (
        exporter.export(make_spans(4, scope="opentelemetry.instrumentation.openai_v2", nested=True))
        == SpanExportResult.SUCCESS
    )
    exporter.shutdown()
    wait_for_tokens(service, 4 * 120)  # only the flusher thread can count these


def test_otlp_json_with_hex_ids_is_accepted_and_answered_in_json(service: CollectorService):
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "eee19b7ec3c1b173",
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": "1544712661000000000",
        "attributes": [
            {"key": sc.GEN_AI_PROVIDER_NAME, "value": {"stringValue": "openai"}},
            {"key": sc.GEN_AI_REQUEST_MODEL, "value": {"stringValue": "gpt-4o"}},
            {"key": sc.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "11"}},
            {"key": sc.GEN_AI_USAGE_OUTPUT_TOKENS, "value": {"intValue": 5}},
            {"key": sc.GEN_AI_AGENT_NAME, "value": {"stringValue": "json-agent"}},
        ],
        "someFutureField": True,  # the spec says receivers ignore unknown fields
    }
    body = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "x"}, "spans": [span]}]}]}
    status, content_type, reply = post(
        service, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert (status, content_type, json.loads(reply)) == (200, "application/json", {})
    wait_for_tokens(service, 16, agent="json-agent")


def test_partial_success_names_the_rejected_spans(service: CollectorService):
    good, bad = make_spans(2), make_spans(1, **{sc.GEN_AI_USAGE_OUTPUT_TOKENS: -4})
    status, _, reply = post(service, protobuf_body(good + bad), PB)
    response = ExportTraceServiceResponse.FromString(reply)
    assert status == 200
    assert response.partial_success.rejected_spans == 1
    assert "negative_token_count" in response.partial_success.error_message
    samples = wait_for_tokens(service, 2 * 120)
    assert total(samples, "otel_tokens_spans_rejected_total", reason="negative_token_count") == 1


# --- bad input: refused clearly, nothing counted lost, still serving -----------------------------


def test_malformed_bodies_get_400_and_the_collector_keeps_counting(service: CollectorService):
    assert post(service, protobuf_body(make_spans(2)), PB)[0] == 200
    wait_for_tokens(service, 240)

    status, content_type, reply = post(service, b"\x0a\xff\xff\xff\xff\x0f", PB)
    assert (status, content_type) == (400, "application/x-protobuf")
    assert status_pb2.Status.FromString(reply).message.startswith("invalid OTLP protobuf")

    status, _, reply = post(service, b'{"resourceSpans": [', {"Content-Type": "application/json"})
    assert status == 400 and json.loads(reply)["message"].startswith("invalid OTLP/JSON")

    status, _, reply = post(service, b"not gzip", {**PB, "Content-Encoding": "gzip"})
    assert status == 400 and b"invalid gzip body" in reply

    assert post(service, protobuf_body(make_spans(1)), PB)[0] == 200
    samples = wait_for_tokens(service, 360)
    assert total(samples, "otel_tokens_spans_rejected_total", reason="undecodable_payload") == 3


def test_oversize_bodies_and_gzip_bombs_get_413(service: CollectorService):
    limit = service.config.max_body_bytes
    status, _, reply = post(service, b"\0" * (limit + 1), PB)
    assert status == 413 and b"exceeds the limit" in reply
    bomb = gzip.compress(b"\0" * (64 * limit))  # ~16 MiB inflated, a few KiB on the wire
    assert len(bomb) < limit
    status, _, reply = post(service, bomb, {**PB, "Content-Encoding": "gzip"})
    assert status == 413 and b"decompressed body exceeds" in reply
    assert post(service, protobuf_body(make_spans(1)), PB)[0] == 200
    samples = wait_for_tokens(service, 120)
    assert total(samples, "otel_tokens_spans_rejected_total", reason="payload_too_large") == 2


def test_wrong_content_type_method_and_path(service: CollectorService):
    assert post(service, b"{}", {"Content-Type": "text/plain"})[0] == 415
    assert post(service, b"", {**PB, "Content-Encoding": "br"})[0] == 415
    assert post(service, b"", PB, path="/v1/metrics")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/v1/traces", timeout=5)
    assert info.value.code == 405 and info.value.headers["Allow"] == "POST"


def test_grpc_malformed_and_oversize_requests(service: CollectorService):
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda b: b,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            export(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "invalid OTLP protobuf" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            export(b"\0" * (service.config.max_body_bytes + 1), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = export(
            protobuf_body(make_spans(1) + make_spans(1, **{sc.GEN_AI_USAGE_INPUT_TOKENS: "many"})), timeout=5
        )
        assert reply.partial_success.rejected_spans == 1
    wait_for_tokens(service, 120)


# --- the service itself --------------------------------------------------------------------------


def test_keep_alive_connection_is_reused(service: CollectorService):
    conn = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)
    for _ in range(3):
        conn.request("POST", "/v1/traces", body=protobuf_body(make_spans(1)), headers=PB)
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Connection") != "close"
        response.read()
    conn.close()
    wait_for_tokens(service, 360)


def test_chunked_body_is_accepted(service: CollectorService):
    body = protobuf_body(make_spans(2))
    conn = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)
    try:
        chunks = iter([body[:1000], body[1000:]])
        conn.request("POST", "/v1/traces", body=chunks, headers=PB, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200, response.read()
    finally:
        conn.close()
    wait_for_tokens(service, 240)


def test_metrics_endpoint_gzip_when_accepted(service: CollectorService):
    request = urllib.request.Request(
        f"http://127.0.0.1:{service.metrics_port}/metrics", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert metric_names.SPANS_RECEIVED.encode() in gzip.decompress(response.read())


def test_metrics_endpoint_speaks_openmetrics_and_health(service: CollectorService):
    base = f"http://127.0.0.1:{service.metrics_port}"
    request = urllib.request.Request(
        base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().endswith(b"# EOF\n")
    with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
        assert response.read() == b"ok\n"


def test_stop_counts_spans_still_held_for_dedupe():
    config = CollectorConfig(http_port=0, grpc_enabled=False, metrics_port=0, dedupe_hold_seconds=3600)
    service = CollectorService(config).start()
    try:
        assert post(service, protobuf_body(make_spans(2, scope="openllmetry", nested=True)), PB)[0] == 200
        assert total(scrape(service), "llm_tokens_total") == 0  # held, waiting for a twin
    finally:
        service.stop()

    samples = prom_text.samples(service.pipeline.registry)
    assert total(samples, "llm_tokens_total") == 240


def test_run_collector_logs_where_it_listens_and_stops_on_sigterm():
    code = "import sys; from otel_tokens.collector import main; sys.exit(main(sys.argv[1:]))"
    args = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_TOKENS_COLLECTOR_")}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "OTLP/HTTP on http://127.0.0.1:" in line and "/v1/traces" in line, line
        assert "OTLP/gRPC on 127.0.0.1:" in line and "/metrics" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_a_taken_port_fails_start_and_leaves_nothing_running(service: CollectorService):
    before = {t.name for t in threading.enumerate()}
    for clash in (
        CollectorConfig(http_port=0, grpc_port=0, metrics_port=service.metrics_port),
        CollectorConfig(http_port=0, grpc_port=service.grpc_port, metrics_port=0),  # after HTTP is up
    ):
        with pytest.raises(OSError):
            CollectorService(clash).start()
    assert {t.name for t in threading.enumerate()} <= before


def test_json_hex_ids_decode_to_the_same_bytes_as_protobuf():
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    span = {"traceId": trace_id, "spanId": span_id, "links": [{"traceId": trace_id, "spanId": span_id}]}
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    decoded = (
        decode_body(body, "application/json", "", 1 << 20).request.resource_spans[0].scope_spans[0].spans[0]
    )
    assert (decoded.trace_id.hex(), decoded.span_id.hex()) == (trace_id, span_id)
    assert (decoded.links[0].trace_id.hex(), decoded.links[0].span_id.hex()) == (trace_id, span_id)
