"""The guard's counters are money too: `llm_guard_actions_total` and `llm_tokens_saved_total` survive
a restart on the same data dir like every other counter, and a resend of the same spans — before or
after the restart — is counted once (the span's trace and span id are the idempotency key).

Three layers: the real collector service over OTLP/HTTP with a data dir, restarted (what a user sees on
/metrics); and the durable store in process, "crashed" by closing it without the final snapshot
(what a `kill -9` leaves once every acknowledged export was committed), so the journal's replay is
checked apart from the snapshot's; and a collector with ingest workers, whose main process counts.
"""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from otel_tokens import metric_names as mn
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.durable import Durability, PinnedClock
from otel_tokens.collector.store import Store
from otel_tokens.collector.workers import ScaledCollectorService
from otel_tokens.pipeline import Pipeline
from tests.prom_text import scrape, series
from tests.test_guard_decisions import decision, exposed, request
from tests.test_pipeline import Clock

BLOCKED = request(1, "coder", decision("blocked", "coder-daily", 120.0))
DOWNGRADED = request(2, "writer", decision("downgraded", "w-usd", 33.5), decision("warned", "all", 0.0))
LATER = request(3, "coder", decision("deferred", "coder-daily", 80.0))


def post(port: int, body: ExportTraceServiceRequest) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/traces",
            body=body.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    finally:
        conn.close()


def guard_counters(port: int) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    text = scrape(port)
    return {name: dict(series(text, name)) for name in (mn.GUARD_ACTIONS, mn.TOKENS_SAVED)}


def test_guard_counters_read_the_same_after_a_restart_and_a_resend_counts_once(tmp_path: Path) -> None:
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, data_dir=str(tmp_path / "data"))
    with CollectorService(config) as first:
        for body in (BLOCKED, DOWNGRADED):
            post(first.http_port, body)
        before = guard_counters(first.metrics_port)
    assert sum(before[mn.GUARD_ACTIONS].values()) == 3  # blocked, downgraded, warned
    assert sum(before[mn.TOKENS_SAVED].values()) == 120.0 + 33.5
    with CollectorService(config) as second:
        assert guard_counters(second.metrics_port) == before
        for body in (BLOCKED, DOWNGRADED):  # the exporter resends the whole batch to the new process
            post(second.http_port, body)
        assert guard_counters(second.metrics_port) == before
        post(second.http_port, LATER)  # a new decision still counts
        after = guard_counters(second.metrics_port)
    deferred = frozenset({(mn.AGENT, "coder"), (mn.BUDGET, "coder-daily"), (mn.ACTION, "deferred")})
    assert after[mn.GUARD_ACTIONS] == {**before[mn.GUARD_ACTIONS], deferred: 1.0}


class _Durable:
    """A pipeline on a durable store in `data_dir`, wired as the collector service wires it."""

    def __init__(self, data_dir: Path, clock: Clock) -> None:
        self.pipeline = Pipeline(registry=CollectorRegistry(), clock=PinnedClock(base=clock))
        self.store = Store(data_dir)
        self.durability = Durability(self.store, self.pipeline)
        self.durability.restore()
        self.durability.start()


def test_a_crash_keeps_guard_counters_from_the_snapshot_and_the_journal(tmp_path: Path) -> None:
    clock = Clock()
    first = _Durable(tmp_path / "data", clock)
    first.pipeline.ingest_otlp(BLOCKED)
    first.durability.snapshot()  # the first decision from the snapshot...
    clock.now += 30
    first.pipeline.ingest_otlp(DOWNGRADED)  # ...the second from the journal
    running = exposed(first.pipeline.guard_decisions), first.pipeline.guard_decisions.state()
    first.store.close()  # the crash: no final snapshot

    second = _Durable(tmp_path / "data", clock)
    guard = second.pipeline.guard_decisions
    assert (exposed(guard), guard.state()) == running  # counts, last-seen times and remembered spans
    for body in (BLOCKED, DOWNGRADED):
        second.pipeline.ingest_otlp(body)  # resent after the restart: already counted
    assert exposed(guard) == running[0]
    second.durability.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_with_ingest_workers_the_main_process_counts_each_decision_once() -> None:
    """Decoded in either worker, counted in the main process (where the journal is): the page shows
    each decision once however often, and through whichever worker, it was sent."""
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, workers=2)
    with ScaledCollectorService(config) as service:
        for _ in range(4):  # new connections: the kernel spreads them over both workers
            for body in (BLOCKED, DOWNGRADED):
                post(service.http_port, body)
        counted = guard_counters(service.metrics_port)
    assert sorted(counted[mn.GUARD_ACTIONS].values()) == [1.0, 1.0, 1.0]
    assert sum(counted[mn.TOKENS_SAVED].values()) == 120.0 + 33.5
