"""`--workers N`: N ingest processes on the same ports, one main process whose /metrics is exact.

The collector runs as `ScaledCollectorService` (the main process in this test process, two spawned
worker processes); the real OTLP exporters send over HTTP and gRPC. What a user checks: the totals
on /metrics equal what was sent, whichever worker decoded it; a worker killed with SIGKILL is
replaced and the collector keeps serving; the page is one page (each family once), carrying what
the workers counted on the side (rejected payloads, clamped records).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import fields

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.ancestry import Scope, Walk
from otel_tokens.collector import CollectorConfig
from otel_tokens.collector.worker_link import OK, RemoteGate, WorkerLink, unpack_batch
from otel_tokens.collector.workers import ScaledCollectorService
from otel_tokens.extract_stats import ExtractStats
from otel_tokens.pipeline import Batch
from otel_tokens.record import Attribution, TaskCompletion, TokenCounts, UsageRecord, Verdict
from tests import prom_text
from tests.services import poll
from tests.test_collector_service import PB, make_spans
from tests.test_guard_decisions import decision, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKENS_PER_SPAN = 120  # make_spans: 100 input + 20 output


@pytest.fixture
def collector() -> Iterator[ScaledCollectorService]:
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, workers=2)
    with ScaledCollectorService(config) as service:
        yield service


def _exporters(service: ScaledCollectorService) -> list[SpanExporter]:
    return [
        HttpExporter(endpoint=f"http://127.0.0.1:{service.http_port}/v1/traces", timeout=30),
        GrpcExporter(endpoint=f"127.0.0.1:{service.grpc_port}", insecure=True, timeout=30),
    ]


def _send(exporters: list[SpanExporter], batches: int, per_batch: int) -> int:
    sent = 0
    for _ in range(batches):
        for exporter in exporters:
            assert exporter.export(make_spans(per_batch)) == SpanExportResult.SUCCESS
            sent += per_batch
    return sent


def test_counts_from_both_workers_are_exact(collector: ScaledCollectorService) -> None:
    assert len(collector.pool.pids() if collector.pool else []) == 2
    exporters = _exporters(collector)
    try:
        sent = _send(exporters, batches=10, per_batch=40)
    finally:
        for exporter in exporters:
            exporter.shutdown()
    page = prom_text.scrape(collector.metrics_port)
    assert prom_text.total(page, mn.REQUESTS) == sent
    assert prom_text.total(page, mn.TOKENS) == sent * TOKENS_PER_SPAN
    assert prom_text.total(page, mn.SPANS_RECEIVED) == sent


def test_a_worker_killed_with_sigkill_is_restarted_and_the_collector_keeps_serving(
    collector: ScaledCollectorService,
) -> None:
    pool = collector.pool
    assert pool is not None
    exporters = _exporters(collector)
    try:
        sent = _send(exporters, batches=3, per_batch=20)
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        poll(lambda: (pool.restarts, pool.pids()), lambda r: r[0] == 1 and victim not in r[1],
             what="the killed worker to be replaced")  # fmt: skip
        poll(lambda: len(pool.pids()), lambda n: n == 2, what="two workers again")
        sent += _send(exporters, batches=5, per_batch=20)  # the exporters' own retries, if any
    finally:
        for exporter in exporters:
            exporter.shutdown()
    assert prom_text.total(prom_text.scrape(collector.metrics_port), mn.TOKENS) == sent * TOKENS_PER_SPAN


def test_metrics_is_one_page_with_what_the_workers_counted_aside(collector: ScaledCollectorService) -> None:
    exporter = HttpExporter(endpoint=f"http://127.0.0.1:{collector.http_port}/v1/traces", timeout=30)
    # reasoning above output: the extractor (in a worker) clamps it and counts that
    clamped = make_spans(3, **{sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 50})
    try:
        assert exporter.export(clamped) == SpanExportResult.SUCCESS
        assert exporter.export(make_spans(7)) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    bad = urllib.request.Request(
        f"http://127.0.0.1:{collector.http_port}/v1/traces", data=b"\xff not protobuf", headers=PB
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=10)
    assert refused.value.code == 400
    page = prom_text.scrape(collector.metrics_port)
    families = [line.split()[2] for line in page.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families)), "every family once: one page, not one per worker"
    assert prom_text.total(page, mn.REQUESTS) == 10
    assert prom_text.total(page, mn.RECORDS_CLAMPED) == 3
    assert prom_text.total(page, mn.SPANS_REJECTED) == 1


def test_guard_decisions_sent_to_either_worker_are_on_the_one_metrics_page_once(
    collector: ScaledCollectorService,
) -> None:
    """The guard's decision counters are counted in the main process, whichever worker decoded the
    span (each export on a connection of its own, over HTTP and gRPC, so both workers take some), and
    a resend reaching the other worker is not counted again."""
    sent = [request(i, f"agent-{i % 3}", decision("blocked", "daily", 100.0 + i)) for i in range(1, 13)]
    post = f"http://127.0.0.1:{collector.http_port}/v1/traces"
    for body in [*sent, sent[0], sent[5]]:  # two resends
        with urllib.request.urlopen(
            urllib.request.Request(post, data=body.SerializeToString(), headers=PB), timeout=30
        ) as response:
            assert response.status == 200
    grpc_sent = request(99, "agent-grpc", decision("downgraded", "daily", 7.0))
    channel = grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}")
    try:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        for _ in range(2):  # sent, then resent
            export(grpc_sent, timeout=30)
    finally:
        channel.close()
    page = prom_text.scrape(collector.metrics_port)
    assert prom_text.total(page, mn.GUARD_ACTIONS, action="blocked") == len(sent)
    assert prom_text.total(page, mn.GUARD_ACTIONS, action="downgraded", agent="agent-grpc") == 1
    assert prom_text.total(page, mn.TOKENS_SAVED, reason="blocked") == sum(100.0 + i for i in range(1, 13))
    assert prom_text.total(page, mn.TOKENS_SAVED, agent="agent-1", reason="blocked") == 101 + 104 + 107 + 110
    assert prom_text.total(page, mn.TOKENS_SAVED, reason="downgraded") == 7.0


def test_a_batch_crosses_the_pipe_with_every_record_field_its_verdicts_and_its_walks() -> None:
    """What a worker extracted reaches the main process whole, through the real `RemoteGate` and
    `WorkerLink` over a real pipe: every `UsageRecord` field (one added later fails the first
    assertion until it is set here), verdicts, completions, the links of a worker's scan, and the
    unfinished ancestor walks, pointing at the very record objects the main deduper will hold."""
    record = UsageRecord(
        provider="openai", request_model="gpt-4o-mini", operation="text_completion",
        response_model="gpt-4o-mini-2024-07-18", tokens=TokenCounts(10, 2, 3, 4, 1, 5), estimated=True,
        cost_usd=0.5, attribution=Attribution("svc", "fix", "t1", "u", "s", "plan", "report"),
        status="error", error_type="Timeout", trace_id=1 << 100, span_id=7, parent_span_id=6,
        start_time_ns=1, end_time_ns=2, ours=True, service_tier="flex", failed_steps=("pricing",),
        agent_from_resource=True,
    )  # fmt: skip
    default = UsageRecord(provider="", request_model="")
    assert [f.name for f in fields(UsageRecord) if getattr(record, f.name) == getattr(default, f.name)] == []
    plain = UsageRecord(provider="anthropic", request_model="claude", trace_id=3, span_id=4, parent_span_id=5)
    # the same shape as `plain` (sent once), its own ids, times, cost and tokens
    twin = UsageRecord(
        provider="anthropic", request_model="claude", tokens=TokenCounts(7, 1), cost_usd=0.25,
        trace_id=3, span_id=9, start_time_ns=10, end_time_ns=11,
    )  # fmt: skip
    batch = Batch(by_content=True)
    batch.spans_received = 4
    batch.records = [plain, record, twin]
    batch.verdicts = [Verdict("t1", False, "lint", trace_id=9, span_id=8, end_time_ns=7)]
    batch.completions = [TaskCompletion("t1", "fix", "svc", "ok", trace_id=9, span_id=6, end_time_ns=5)]
    walk = Walk(record, deadline=12.5)
    walk.frontier, walk.workflow = 99, "report"
    batch.walks = [walk]
    batch.links, batch.scopes = {1: 2}, {2: Scope("researcher", None)}

    worker_end, main_end = multiprocessing.Pipe()
    link = WorkerLink(worker_end, max_in_flight=1, on_lost=lambda: None).start()
    received: list[Batch] = []

    def main_process() -> None:
        rid, _, payload = main_end.recv()
        got, _ = unpack_batch(payload)
        received.append(got)
        main_end.send((rid, OK, got.result))

    main = threading.Thread(target=main_process)
    main.start()
    try:
        assert RemoteGate(link, ExtractStats()).batch(batch).spans_received == 4
    finally:
        main.join(timeout=30)
        link.close()
        main_end.close()
    (got,) = received
    assert got.records == [plain, record, twin] and got.by_content
    assert got.records[1].agent_from_resource and got.records[1].attribution.workflow == "report"
    assert got.verdicts == batch.verdicts and got.completions == batch.completions
    assert (got.links, got.scopes) == ({1: 2}, {2: Scope("researcher", None)})
    (w,) = got.walks
    assert w.record is got.records[1], "a walk amends the record object the deduper holds"
    assert (w.frontier, w.agent, w.workflow, w.deadline) == (99, None, "report", 12.5)
