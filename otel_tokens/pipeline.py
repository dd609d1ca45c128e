"""The traces→metrics pipeline the receivers call: decode is theirs, the rest is here.

extract (span → UsageRecord) ─► dedupe (one LLM call counted once) ─► aggregate (counters)
─► exposition (a prometheus_client Collector in `registry`), and every counted record goes to the
listeners (the budget ledger). No sockets, no threads: receivers call `ingest_*` from their own
threads and `flush()` periodically and at shutdown; the clock is injected so tests control the
dedupe hold window. Records built in this process (our instrumentation's, via `otel_tokens.sinks`)
enter through `ingest_records` and skip extraction; spans of other instrumentations through
`ingest_spans` / `ingest_otlp` / `ingest_otlp_bytes` (the serialized request: with the optional
compiled walk, accelerator.py, it is never decoded into Python objects; same results). Both meet
in the deduper, so one call is counted once either way.

Task completions (a task span arrived) go to the aggregator after the batch's records, so a task's
calls exported with it are in its total. While the deduper holds foreign usage spans (up to the
hold window), a completion waits as long as they do and is observed by `flush()` after them: a
held span may be one of the task's calls. Our own call spans are never held, so with otel-tokens'
instrumentation a completion is normally observed at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.aggregate import Aggregator, MetricsConfig
from otel_tokens.dedupe import DedupeConfig, Deduper
from otel_tokens.exposition import TokenMetricsCollector
from otel_tokens.extract import DEFAULT_MAX_TOKENS_PER_CALL, Extractor, Outcome, PriceFn, Rejection
from otel_tokens.extract_stats import ExtractStatsCollector
from otel_tokens.ingest_stats import bounded_reason
from otel_tokens.record import Record, TaskCompletion, UsageRecord

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["DedupeConfig", "IngestResult", "MetricsConfig", "Pipeline"]

#: How many rejection details an IngestResult carries (enough for an error message, bounded).
_MAX_REASONS = 5


@dataclass
class IngestResult:
    """What one export request did; receivers turn rejections into a 400 or an OTLP partial success."""

    spans_received: int = 0
    records_counted: int = 0
    spans_rejected: int = 0
    reasons: list[str] = field(default_factory=list)  # first few reasons, for the error message
    tasks_completed: int = 0  # task spans received (observed now or after the dedupe window)


class _Batch:
    """One ingest call's outcomes, gathered before dedupe and aggregation take their locks once."""

    __slots__ = ("completions", "records", "rejected", "result")

    def __init__(self) -> None:
        self.result = IngestResult()
        self.records: list[UsageRecord] = []
        self.rejected: dict[str, int] = {}
        self.completions: list[TaskCompletion] = []

    @property
    def spans_received(self) -> int:
        return self.result.spans_received

    @spans_received.setter
    def spans_received(self, value: int) -> None:
        self.result.spans_received = value

    def add(self, outcome: Outcome) -> None:
        if type(outcome) is UsageRecord:  # the common case first: this runs per usage span
            self.records.append(outcome)
        elif type(outcome) is TaskCompletion:
            self.completions.append(outcome)
        elif isinstance(outcome, Rejection):
            self.rejected[outcome.reason] = self.rejected.get(outcome.reason, 0) + 1
            self.result.spans_rejected += 1
            if len(self.result.reasons) < _MAX_REASONS:
                self.result.reasons.append(outcome.message())
        elif isinstance(outcome, UsageRecord):
            self.records.append(outcome)  # a UsageRecord subclass


class Pipeline:
    """extract → dedupe → aggregate → exposition, plus listeners. Thread-safe."""

    def __init__(
        self,
        config: MetricsConfig | None = None,
        *,
        dedupe: DedupeConfig | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        price: PriceFn | None = None,
        max_tokens_per_call: int = DEFAULT_MAX_TOKENS_PER_CALL,
        compiled: bool = True,
    ) -> None:
        self.config = config if config is not None else MetricsConfig()
        self.config.validate()
        self.dedupe = dedupe if dedupe is not None else DedupeConfig()
        self.dedupe.validate()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.aggregator = Aggregator(self.config, clock=clock)
        self._clock = clock
        self._extractor = Extractor(price=price, max_tokens_per_call=max_tokens_per_call, compiled=compiled)
        self._deduper = Deduper(
            hold_seconds=self.dedupe.hold_seconds,
            max_held=self.dedupe.max_held_spans,
            max_remembered=self.dedupe.max_remembered_spans,
        )
        self._listeners: list[Callable[[UsageRecord], None]] = []
        # completions waiting for held spans: (deadline, completion), in arrival (= deadline) order
        self._pending: deque[tuple[float, TaskCompletion]] = deque()
        self._pending_lock = threading.Lock()
        self.registry.register(TokenMetricsCollector(self.aggregator))
        self.registry.register(ExtractStatsCollector(self._extractor.stats))

    def ingest_otlp(self, request: ExportTraceServiceRequest) -> IngestResult:
        """Count the usage spans of one decoded OTLP export request."""
        batch = _Batch()
        with swallow_internal_errors("Pipeline.ingest_otlp"):
            self._extractor.extract_otlp(request, batch)
        return self._finish(batch)

    def ingest_otlp_bytes(self, data: bytes) -> IngestResult:
        """`ingest_otlp(ExportTraceServiceRequest.FromString(data))`, the same result, without the
        decode when the compiled walk is built (accelerator.py): it reads the wire bytes itself.
        Raises protobuf's DecodeError, as `FromString` does, for a body that is not a request."""
        found = self._extractor.scan(data)
        if found is None:  # no compiled walk, or it declined: decode and take the Python path
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            return self.ingest_otlp(ExportTraceServiceRequest.FromString(data))
        batch = _Batch()
        with swallow_internal_errors("Pipeline.ingest_otlp_bytes"):
            self._extractor.count_scanned(found, batch)
        return self._finish(batch)

    def ingest_spans(self, spans: Iterable[ReadableSpan]) -> IngestResult:
        """Count the usage spans among finished SDK spans (the in-process path)."""
        batch = _Batch()
        with swallow_internal_errors("Pipeline.ingest_spans"):
            for span in spans:
                batch.spans_received += 1
                batch.add(self._extractor.from_readable_span(span))
        return self._finish(batch)

    def ingest_records(self, records: Iterable[Record]) -> IngestResult:
        """Count records built in this process (our instrumentation's, through `otel_tokens.sinks`):
        no extraction, but the extractor's rules for a record (consistency, ceiling, pricing when
        unpriced); deduplicated against spans like any span. Each record stands for the span it
        describes, so it counts as a span received."""
        batch = _Batch()
        admit = self._extractor.admit_record
        with swallow_internal_errors("Pipeline.ingest_records"):
            for record in records:
                batch.spans_received += 1
                batch.add(admit(record) if isinstance(record, UsageRecord) else record)
        return self._finish(batch)

    def reject_payload(self, reason: str) -> None:
        """A receiver could not decode a body: count it as one rejection under a bounded reason."""
        self.aggregator.ingest_stats.add(rejected={bounded_reason(reason): 1})

    def flush(self, now: float | None = None) -> None:
        """Count held foreign spans whose dedupe window has passed (all of them at shutdown:
        pass `now=float("inf")`)."""
        now = self._clock() if now is None else now
        self._emit(self._deduper.flush(now))
        if self._pending:
            self.aggregator.complete_tasks(self._due_completions(now))

    def add_listener(self, fn: Callable[[UsageRecord], None]) -> None:
        """`fn` sees every counted record, after dedupe (the budget ledger subscribes here)."""
        self._listeners.append(fn)

    def always_admit(self, values: Mapping[str, Iterable[str]]) -> None:
        """Label values (by label name) that always get series of their own beyond the series limit:
        the budget ledger registers the names its budgets' scopes match on."""
        self.aggregator.always_admit(values)

    # --- internals -----------------------------------------------------------------------------
    def _finish(self, batch: _Batch) -> IngestResult:
        dropped = 0
        if batch.records:
            counted, dropped = self._deduper.offer_many(batch.records, self._clock())
            batch.result.records_counted = self._emit(counted)
        self.aggregator.ingest_stats.add(batch.result.spans_received, batch.rejected, dropped)
        if batch.completions:
            batch.result.tasks_completed = len(batch.completions)
            self._complete(batch.completions)
        return batch.result

    def _complete(self, completions: list[TaskCompletion]) -> None:
        """Observe now, unless held foreign spans (maybe the task's calls) are still to be counted."""
        hold = self.dedupe.hold_seconds
        if not self._deduper.held or hold <= 0:
            self.aggregator.complete_tasks(completions)
            return
        deadline = self._clock() + hold
        with self._pending_lock:
            room = max(self.dedupe.max_held_spans - len(self._pending), 0)
            self._pending.extend((deadline, c) for c in completions[:room])
        if completions[room:]:  # bounded: past the limit, observe at once rather than drop
            self.aggregator.complete_tasks(completions[room:])

    def _due_completions(self, now: float) -> list[TaskCompletion]:
        due: list[TaskCompletion] = []
        with self._pending_lock:
            while self._pending and self._pending[0][0] <= now:
                due.append(self._pending.popleft()[1])
        return due

    def _emit(self, counted: list[UsageRecord]) -> int:
        if not counted:
            return 0
        self.aggregator.add_many(counted)
        for fn in self._listeners:
            for record in counted:
                try:
                    fn(record)
                except Exception:
                    # the shared policy logs once (or re-raises under tests); entering it per record
                    # would cost more than a ledger update
                    with swallow_internal_errors("Pipeline listener"):
                        raise
        return len(counted)
