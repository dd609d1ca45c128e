"""Hostile clients against the real collector: idle floods, slow bodies, batches with one bad span.

The flood test runs the collector as its own process with a 1,024 open-files limit, as in the
issue's reproduction, opens 1,100 silent loopback sockets to it and checks that the real OTLP
exporters (HTTP and gRPC) and a /metrics scrape are still served exactly, with a bounded number
of collector threads.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_tokens import semconv as sc
from otel_tokens.collector import CollectorConfig, CollectorService
from tests.test_collector_service import PB, make_spans, post, scrape, total, wait_for, wait_for_tokens

pytestmark = pytest.mark.integration

FLOOD = 1_100
FD_LIMIT = 1_024
BAD = b"\xff"  # never valid in UTF-8


@pytest.fixture
def service() -> Iterator[CollectorService]:
    config = CollectorConfig(
        http_port=0, grpc_port=0, metrics_port=0, dedupe_hold_seconds=0.05, flush_interval_seconds=0.02
    )
    with CollectorService(config) as running:
        yield running


# --- one bad span does not sink its batch ----------------------------------------------------------


def with_bad_bytes(spans: list[ReadableSpan], marker: str) -> bytes:
    """The spans' protobuf with `marker` (ASCII, same length) turned into invalid UTF-8 in place."""
    body = bytes(encode_spans(spans).SerializeToString())
    assert body.count(marker.encode()) >= 1
    return body.replace(marker.encode(), marker[:2].encode() + BAD + marker[3:].encode())


def test_a_span_with_invalid_utf8_is_rejected_alone_over_http(service: CollectorService):
    spans = make_spans(3) + make_spans(1, agent="bad-agent-x") + make_spans(2, agent="coder")
    status, _, reply = post(service, with_bad_bytes(spans, "bad-agent-x"), PB)
    response = ExportTraceServiceResponse.FromString(reply)
    assert status == 200
    assert response.partial_success.rejected_spans == 1
    assert "1 spans could not be decoded" in response.partial_success.error_message
    samples = wait_for_tokens(service, 5 * 120)
    assert total(samples, "llm_tokens_total", agent="support") == 3 * 120
    assert total(samples, "llm_tokens_total", agent="coder") == 2 * 120
    assert total(samples, "otel_tokens_spans_rejected_total", reason="undecodable_payload") == 1


def test_a_span_with_invalid_utf8_is_rejected_alone_over_grpc(service: CollectorService):
    spans = make_spans(2) + make_spans(1, **{sc.OTEL_TOKENS_TASK: "bad-task-x"})
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda b: b,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        reply = export(with_bad_bytes(spans, "bad-task-x"), timeout=5)
    assert reply.partial_success.rejected_spans == 1
    wait_for_tokens(service, 2 * 120)


def test_a_bad_resource_rejects_only_its_own_spans(service: CollectorService):
    good = make_spans(2)
    bad = make_spans(3, agent="other")
    for span in bad:  # a resource of their own, with a broken service name
        span._resource = Resource.create({"service.name": "svc-bad-x"})
    status, _, reply = post(service, with_bad_bytes(good + bad, "svc-bad-x"), PB)
    assert status == 200
    assert ExportTraceServiceResponse.FromString(reply).partial_success.rejected_spans == 3
    samples = wait_for_tokens(service, 2 * 120)
    assert total(samples, "llm_tokens_total", agent="other") == 0


def _json_span(n: int, agent: str, input_tokens: object) -> dict[str, object]:
    return {
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": f"{n + 1:016x}",
        "name": "chat gpt-4o", "kind": 3,
        "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
        "attributes": [
            {"key": sc.GEN_AI_PROVIDER_NAME, "value": {"stringValue": "openai"}},
            {"key": sc.GEN_AI_REQUEST_MODEL, "value": {"stringValue": "gpt-4o"}},
            {"key": sc.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": input_tokens}},
            {"key": sc.GEN_AI_USAGE_OUTPUT_TOKENS, "value": {"intValue": 5}},
            {"key": sc.GEN_AI_AGENT_NAME, "value": {"stringValue": agent}},
        ],
    }  # fmt: skip


def test_an_otlp_json_span_that_does_not_parse_is_rejected_alone(service: CollectorService):
    spans = [_json_span(0, "json-a", "11"), _json_span(1, "json-bad", "many"), _json_span(2, "json-b", 20)]
    body = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "x"}, "spans": spans}]}]}
    status, _, reply = post(service, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert status == 200
    assert json.loads(reply)["partialSuccess"]["rejectedSpans"] == "1"
    samples = wait_for_tokens(service, 16 + 25)
    assert total(samples, "llm_tokens_total", agent="json-bad") == 0


def test_broken_framing_still_gets_400(service: CollectorService):
    body = bytes(encode_spans(make_spans(2)).SerializeToString())
    status, _, _ = post(service, body[:-7], PB)  # truncated inside the last span
    assert status == 400
    assert total(scrape(service), "llm_tokens_total") == 0


# --- slow and silent clients -------------------------------------------------------------------------


def test_a_body_that_never_finishes_gets_408_and_others_are_served():
    config = CollectorConfig(http_port=0, grpc_enabled=False, metrics_port=0, read_timeout_seconds=0.5)
    with CollectorService(config) as service, socket.create_connection(("127.0.0.1", service.http_port)) as s:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  b"Content-Length: 1000\r\n\r\n" + b"\x0a" * 10)  # fmt: skip
        assert post(service, bytes(encode_spans(make_spans(1)).SerializeToString()), PB)[0] == 200
        s.settimeout(10)
        assert s.recv(100).startswith(b"HTTP/1.1 408")


def test_a_silent_connection_is_closed_after_the_idle_timeout():
    config = CollectorConfig(http_port=0, grpc_enabled=False, metrics_port=0, idle_timeout_seconds=0.3)
    with CollectorService(config) as service:
        for port in (service.http_port, service.metrics_port):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(10)
                assert s.recv(1) == b""  # closed by the server, not by our timeout


def test_at_the_cap_a_silent_connection_makes_room_for_an_exporter():
    config = CollectorConfig(http_port=0, grpc_enabled=False, metrics_port=0, max_connections=5)
    with CollectorService(config) as service:
        silent = [socket.create_connection(("127.0.0.1", service.http_port)) for _ in range(8)]
        try:
            exporter = HttpExporter(endpoint=f"http://127.0.0.1:{service.http_port}/v1/traces", timeout=5)
            assert exporter.export(make_spans(2)) == SpanExportResult.SUCCESS
            exporter.shutdown()
            refused, evicted = service.connection_caps["otlp-http"]
            assert (refused, evicted) == (0, 4)  # 3 silent ones over the cap, then the exporter
        finally:
            for s in silent:
                s.close()
        wait_for_tokens(service, 240)


# --- the flood, as the issue reproduced it -----------------------------------------------------------


def _limit_open_files() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@pytest.fixture
def collector_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    code = "import sys; from otel_tokens.collector import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_TOKENS_COLLECTOR_")}
    args = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--flush-interval-seconds", "0.05"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_limit_open_files,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"OTLP/HTTP on http://127.0.0.1:(\d+).*OTLP/gRPC on 127.0.0.1:(\d+).*"
                          r"metrics on http://127.0.0.1:(\d+)", line)  # fmt: skip
        assert found, line
        yield proc, dict(zip(("http", "grpc", "metrics"), map(int, found.groups()), strict=True))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


def _scrape(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(float(m) for m in re.findall(r"^llm_tokens_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.mark.timeout(90)
def test_an_idle_flood_leaves_every_exporter_served_and_threads_bounded(collector_process):
    proc, ports = collector_process
    threads_before = _threads(proc.pid)
    flood: list[socket.socket] = []
    try:
        for i in range(FLOOD):  # silent sockets on every listener, most on OTLP/HTTP
            port = ports["http"] if i % 4 else ports["metrics"]
            with contextlib.suppress(OSError):  # a reset at the cap is a refusal, which is fine
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        http_exporter = HttpExporter(endpoint=f"http://127.0.0.1:{ports['http']}/v1/traces", timeout=10)
        grpc_exporter = GrpcExporter(endpoint=f"127.0.0.1:{ports['grpc']}", insecure=True, timeout=10)
        assert http_exporter.export(make_spans(3)) == SpanExportResult.SUCCESS
        assert grpc_exporter.export(make_spans(2)) == SpanExportResult.SUCCESS
        http_exporter.shutdown()
        grpc_exporter.shutdown()
        wait_for(lambda: _scrape(ports["metrics"]) >= 5 * 120)
        assert _scrape(ports["metrics"]) == 5 * 120
        # at most the worker pools filling up (4 HTTP, 8 gRPC), never a thread per socket
        assert _threads(proc.pid) <= threads_before + 4 + 8
    finally:
        for s in flood:
            s.close()
    assert proc.poll() is None


def test_a_silent_grpc_flood_is_shed_by_the_handshake_timeout():
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, max_connections=20,
                             idle_timeout_seconds=1.0)  # fmt: skip
    with CollectorService(config) as service:
        silent = [socket.create_connection(("127.0.0.1", service.grpc_port)) for _ in range(40)]
        try:
            deadline = time.monotonic() + 20
            for s in silent:  # every silent socket is closed by the server within the timeout
                s.settimeout(max(deadline - time.monotonic(), 0.1))
                with contextlib.suppress(ConnectionResetError):  # over the cap: reset at once
                    while s.recv(4096):  # the server's HTTP/2 preface, then the close
                        pass
            exporter = GrpcExporter(endpoint=f"127.0.0.1:{service.grpc_port}", insecure=True, timeout=10)
            assert exporter.export(make_spans(1)) == SpanExportResult.SUCCESS
            exporter.shutdown()
        finally:
            for s in silent:
                s.close()
        wait_for_tokens(service, 120)
