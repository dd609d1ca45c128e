"""Exactly once: an exporter's resend is never counted again, however late (within the window).

The OTLP exporters resend a batch they got no answer for, after backing off 1, 2, 4, ... s; the
collector may have counted it already. The pipeline tests drive the clock; the integration tests
put a proxy between the real retrying exporter and the real collector that swallows the first
reply, so the exporter itself decides to resend.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from prometheus_client import CollectorRegistry

from otel_tokens import metric_names as mn
from otel_tokens.dedupe import DedupeConfig
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import UsageRecord
from tests.collector_process import CollectorProcess, collector_args
from tests.test_collector_service import make_spans
from tests.test_pipeline import OURS, Clock, dropped, metrics, price, request, requests_total, span

OLD_MEMORY = 100_000  # spans the dedupe memory used to hold, by count


def _others(n: int, first_id: int) -> list[UsageRecord]:
    return [
        UsageRecord(provider="openai", request_model="gpt-4o", trace_id=7, span_id=first_id + i, ours=True)
        for i in range(n)
    ]


def test_a_resend_after_the_backoff_is_dropped_however_many_spans_came_between(clock: Clock):
    p = Pipeline(registry=CollectorRegistry(), clock=clock, price=price)
    resent = request((OURS, span(1)))
    assert p.ingest_otlp(resent).records_counted == 1
    for second in range(7):  # the exporter backs off 1 + 2 + 4 s; the collector keeps ingesting
        clock.now += 1
        others = _others(OLD_MEMORY // 6, 1_000_000 * (second + 1))
        assert p.ingest_records(others).records_counted == OLD_MEMORY // 6
    assert p.ingest_otlp(resent).records_counted == 0
    assert dropped(p) == 1


def test_the_window_is_time_and_configurable(clock: Clock):
    config = DedupeConfig(window_seconds=60)
    p = Pipeline(dedupe=config, registry=CollectorRegistry(), clock=clock, price=price)
    resent = request((OURS, span(1)))
    p.ingest_otlp(resent)
    clock.now += 59
    assert p.ingest_otlp(resent).records_counted == 0
    clock.now += 2  # past the window (of the first sighting): a new call as far as we can know
    assert p.ingest_otlp(resent).records_counted == 1
    assert requests_total(p) == 2


def test_the_memory_cap_holds_and_says_when_it_broke_the_window(clock: Clock):
    config = DedupeConfig(max_remembered_spans=2)
    p = Pipeline(dedupe=config, registry=CollectorRegistry(), clock=clock, price=price)
    for span_id in (1, 2, 3):
        p.ingest_otlp(request((OURS, span(span_id))))
    m = metrics(p)
    assert m["otel_tokens_dedupe_remembered_spans{}"] == 2
    assert m["otel_tokens_dedupe_forgotten_early_total{}"] == 1  # span 1, inside its window
    clock.now += 601  # the window passed: forgetting now is no longer early
    p.ingest_otlp(request((OURS, span(4))))
    assert metrics(p)["otel_tokens_dedupe_forgotten_early_total{}"] == 1


def _without_span_id(tokens: int, start_ns: int) -> Any:
    s = span(1, gen_ai__usage__input_tokens=tokens)
    s.span_id = b""
    s.start_time_unix_nano, s.end_time_unix_nano = start_ns, start_ns + 10**9
    return s


def test_spans_without_span_id_are_deduplicated_by_content(clock: Clock):
    p = Pipeline(registry=CollectorRegistry(), clock=clock, price=price)
    one = request((OURS, _without_span_id(100, 10**18)))
    assert p.ingest_otlp(one).records_counted == 1
    clock.now += 7
    assert p.ingest_otlp(one).records_counted == 0  # the resend
    other_call = request((OURS, _without_span_id(100, 10**18 + 5)), (OURS, _without_span_id(300, 10**18)))
    assert p.ingest_otlp(other_call).records_counted == 2  # other times or tokens: other calls
    assert requests_total(p) == 3 and dropped(p) == 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- the real exporter, a lost reply, and its own resend -------------------------------------------


class ReplyLosingProxy:
    """Forwards OTLP/HTTP exports to the collector. The first reply is lost (the connection closes
    after the collector counted the batch), so the exporter backs off and resends; the resend is
    held until `release` is set, so the test decides what happens in between."""

    def __init__(self, upstream_port: int) -> None:
        self.lost = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if proxy.lost.is_set():
                    proxy.release.wait(timeout=40)
                status, headers, reply = proxy._forward(self.path, body, self.headers["Content-Type"])
                if not proxy.lost.is_set():
                    proxy.lost.set()
                    self.close_connection = True  # counted upstream, but the exporter never hears
                    return
                self.send_response(status)
                for name in ("Content-Type", "Content-Length"):
                    self.send_header(name, headers[name])
                self.end_headers()
                self.wfile.write(reply)

        self.upstream_port = upstream_port
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def _forward(self, path: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            headers = {name: response.getheader(name, "") for name in ("Content-Type", "Content-Length")}
            return response.status, headers, response.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    process = CollectorProcess(tmp_path, *collector_args(data_dir=tmp_path / "data"))
    try:
        yield process.start()
    finally:
        process.stop()


def _export_in_background(
    exporter: OTLPSpanExporter, spans: list[ReadableSpan]
) -> tuple[list[SpanExportResult], threading.Thread]:
    results: list[SpanExportResult] = []
    thread = threading.Thread(target=lambda: results.append(exporter.export(spans)), daemon=True)
    thread.start()
    return results, thread


def _other_spans_posted(collector: CollectorProcess, batches: int, per_batch: int) -> int:
    """Distinct spans straight to the collector, as other agents' exports would arrive meanwhile."""
    template = request(*[(OURS, span(i + 1)) for i in range(per_batch)])
    spans = template.resource_spans
    conn = http.client.HTTPConnection("127.0.0.1", collector.http_port, timeout=30)
    try:
        for b in range(batches):
            for rs in spans:
                for s in rs.scope_spans[0].spans:
                    s.trace_id = (1_000 + b).to_bytes(16, "big")
            conn.request("POST", "/v1/traces", body=template.SerializeToString(), headers=PROTOBUF)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
    finally:
        conn.close()
    return batches * per_batch


PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_resend_after_the_backoff_counts_once_after_more_spans_than_the_old_memory(
    collector: CollectorProcess,
):
    proxy = ReplyLosingProxy(collector.http_port)
    exporter = OTLPSpanExporter(endpoint=proxy.url, timeout=50)
    try:
        batch = make_spans(5)
        results, exporting = _export_in_background(exporter, batch)
        assert proxy.lost.wait(timeout=20)  # counted, but the exporter got no answer: it will resend
        others = _other_spans_posted(collector, batches=24, per_batch=5_000)
        assert others > OLD_MEMORY
        proxy.release.set()
        exporting.join(timeout=50)
    finally:
        exporter.shutdown()
        proxy.close()
    assert results == [SpanExportResult.SUCCESS]
    assert collector.total(mn.REQUESTS, agent="support") == 5
    assert collector.total(mn.DUPLICATES_DROPPED) == 5


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_resend_without_span_ids_counts_once_even_across_a_kill_9(collector: CollectorProcess):
    proxy = ReplyLosingProxy(collector.http_port)
    exporter = OTLPSpanExporter(endpoint=proxy.url, timeout=50)
    try:
        batch = [_strip_span_id(s, i) for i, s in enumerate(make_spans(5))]
        results, exporting = _export_in_background(exporter, batch)
        assert proxy.lost.wait(timeout=20)
        collector.kill()  # the resend meets a collector restarted from its data dir
        collector.start()
        proxy.release.set()
        exporting.join(timeout=50)
    finally:
        exporter.shutdown()
        proxy.close()
    assert results == [SpanExportResult.SUCCESS]
    assert collector.total(mn.REQUESTS, agent="support") == 5
    assert collector.total(mn.TOKENS, agent="support") == 5 * 120
    assert collector.total(mn.DUPLICATES_DROPPED) == 5  # the first count survived; the resend is not one


def _strip_span_id(s: ReadableSpan, i: int) -> ReadableSpan:
    """The same span without a span id (as some hand-written senders emit), its own start time."""
    assert s.context is not None
    context = SpanContext(trace_id=s.context.trace_id, span_id=0, is_remote=False, trace_flags=TraceFlags(1))
    start = (s.start_time or 0) + i
    return ReadableSpan(
        name=s.name, context=context, kind=SpanKind.CLIENT, attributes=s.attributes,
        start_time=start, end_time=start + 1_000_000, resource=s.resource or Resource.create({}),
        instrumentation_scope=s.instrumentation_scope,
    )  # fmt: skip
