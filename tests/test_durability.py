"""Durable state: what the collector acknowledged survives kill -9, SIGTERM and restarts, exactly.

The collector runs as a real process with a data directory; the real OTLP exporters (with their
own retries) send to it while the test kills it (`kill -9`) or stops it (SIGTERM, as `docker stop`
does) and starts it again on the same ports. What a user checks: `/metrics` and
`/api/v1/budgets` equal what was sent — nothing lost, nothing counted twice.
"""

from __future__ import annotations

import http.client
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.collector import CollectorConfig, CollectorService
from tests.collector_process import CollectorProcess, collector_args
from tests.services import poll
from tests.test_collector_service import make_spans, protobuf_body

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BUDGETS = textwrap.dedent(
    """
    version: 1
    budgets:
      - {name: support-daily, scope: {agent: support}, limit: {tokens: 500000}, window: 1d}
    """
)
TOKENS_PER_SPAN = 120  # make_spans: 100 input (30 of them cache read) + 20 output


@pytest.fixture
def budgets(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(BUDGETS)
    return path


@pytest.fixture(params=["1", "2"], ids=["workers=1", "workers=2"])
def collector(tmp_path: Path, budgets: Path, request: pytest.FixtureRequest) -> Iterator[CollectorProcess]:
    """With `--workers 2` the kill -9 hits the main process, which owns the journal: its workers
    exit with it, and what they had acknowledged was journaled first."""
    args = collector_args(data_dir=tmp_path / "data", budgets=budgets)
    process = CollectorProcess(tmp_path, *args, "--workers", request.param, grpc=True)
    try:
        yield process
    finally:
        process.stop()


class Workload:
    """Batches of spans exported one after another, as a BatchSpanProcessor does; counts the acks."""

    def __init__(self, exporter: SpanExporter, batches: int, per_batch: int) -> None:
        self.exporter = exporter
        self.batches = [make_spans(per_batch) for _ in range(batches)]
        self.acked = 0
        self.results: list[SpanExportResult] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for batch in self.batches:
            self.results.append(self.exporter.export(batch))
            self.acked += len(batch)


def test_kill_9_twice_mid_workload_loses_and_doubles_nothing(collector: CollectorProcess):
    collector.start()
    http = Workload(HttpExporter(endpoint=collector.traces_url, timeout=30), batches=20, per_batch=50)
    grpc = Workload(
        GrpcExporter(endpoint=f"127.0.0.1:{collector.grpc_port}", insecure=True, timeout=30),
        batches=20,
        per_batch=50,
    )
    workloads = (http, grpc)
    for w in workloads:
        w.thread.start()
    for acked in (600, 1300):  # two kill -9 + restart while both exporters are sending
        poll(lambda: sum(w.acked for w in workloads), lambda n, a=acked: n >= a, timeout=40, what="acks")
        collector.kill()
        collector.start()
    for w in workloads:
        w.thread.join(timeout=50)
        w.exporter.shutdown()
    assert [r for w in workloads for r in w.results] == [SpanExportResult.SUCCESS] * 40
    sent = 2000
    assert collector.total(mn.REQUESTS) == sent, collector.log()
    assert collector.total(mn.TOKENS) == sent * TOKENS_PER_SPAN
    assert collector.total(mn.COST) == pytest.approx(sent * 0.01, rel=1e-9)
    budget = collector.budgets()["support-daily"]
    assert budget["used"] == sent * TOKENS_PER_SPAN


def _spans_of(tokens: int, n: int) -> list[ReadableSpan]:
    """n spans of `tokens` fresh input tokens each (no cache, no output)."""
    counts = {
        sc.GEN_AI_USAGE_INPUT_TOKENS: tokens,
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 0,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 0,
    }
    return make_spans(n, **counts)


def test_a_budget_survives_sigterm_and_restart(collector: CollectorProcess):
    collector.start()
    exporter = HttpExporter(endpoint=collector.traces_url, timeout=30)
    try:
        assert exporter.export(_spans_of(100_000, 4)) == SpanExportResult.SUCCESS
        before = collector.budgets()["support-daily"]
        assert (before["used"], before["state"]) == (400_000, "warning")
        assert collector.terminate() == 0
        collector.start()
        after = collector.budgets()["support-daily"]
        assert (after["used"], after["state"]) == (400_000, "warning")
        assert collector.total(mn.TOKENS) == 400_000  # Prometheus sees a continuous counter
        assert exporter.export(_spans_of(100_000, 4)) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    final = collector.budgets()["support-daily"]
    assert (final["used"], final["state"]) == (800_000, "exceeded")
    assert collector.total(mn.BUDGET_USED, budget="support-daily") == 800_000


def test_sigterm_counts_held_spans_while_metrics_still_serves(tmp_path: Path):
    # no data dir: the only chance to see these tokens is the last scrape before exit
    collector = CollectorProcess(tmp_path, "--dedupe-hold-seconds", "3600")
    collector.start()
    try:
        exporter = HttpExporter(endpoint=collector.traces_url, timeout=10)
        held = make_spans(10, scope="openllmetry", nested=True)  # foreign and nested: held for a twin
        assert exporter.export(held) == SpanExportResult.SUCCESS
        exporter.shutdown()
        assert collector.total(mn.TOKENS) == 0  # held, waiting for a twin that never comes
        seen: list[float] = []

        def scrape_until_closed() -> None:
            while True:
                try:
                    seen.append(collector.total(mn.TOKENS))
                except OSError:  # connection refused: /metrics closed
                    return

        scraper = threading.Thread(target=scrape_until_closed, daemon=True)
        scraper.start()
        assert collector.terminate() == 0
        scraper.join(timeout=10)
    finally:
        collector.stop()
    assert max(seen) == 10 * TOKENS_PER_SPAN, collector.log()


def test_an_export_the_store_cannot_keep_is_refused_with_a_status_exporters_retry(tmp_path: Path):
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, data_dir=str(tmp_path / "data"))
    with CollectorService(config) as service:
        assert service.durability is not None
        service.durability.close()  # the store is gone, as at the very end of a shutdown
        body = protobuf_body(make_spans(2))
        conn = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=10)
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        assert conn.getresponse().status == 503  # retryable; a 500 would make the exporter drop it
        conn.close()
        with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            with pytest.raises(grpc.RpcError) as refused:
                export(body, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
