"""The traces→metrics pipeline the receivers call: decode is theirs, the rest is here.

extract (span → UsageRecord) ─► dedupe (one LLM call counted once) ─► aggregate (counters)
─► exposition (a prometheus_client Collector in `registry`), and every counted record goes to the
listeners (the budget ledger). No sockets, no threads: receivers call `ingest_*` from their own
threads and `flush()` periodically and at shutdown; the clock is injected so tests control the
dedupe hold window. Records built in this process (our instrumentation's, via `otel_tokens.sinks`)
enter through `ingest_records` and skip extraction; spans of other instrumentations through
`ingest_spans` / `ingest_otlp` / `ingest_otlp_bytes` (the serialized request: with the optional
compiled walk, accelerator.py, it is never decoded into Python objects; same results; the
receivers call `ingest_otlp_scanned`, which leaves a body the walk declines to their decoder). Both meet
in the deduper, so one call is counted once either way.

Every change to the pipeline's state — a batch, a flush, a rejected payload — passes through its
`gate`: by default applied at once; the collector's durable store (otel_tokens.collector.durable)
installs one that journals each change before the receiver answers, and replays the journal at
start-up through the same `apply_*` methods. Those are deterministic given the clock, which is why
each reads it once (the aggregator and the budget ledger share that clock).

Task completions (a task span arrived) go to the aggregator after the batch's records, so a task's
calls exported with it are in its total. While the deduper holds foreign usage spans (up to the
hold window), a completion waits as long as they do and is observed by `flush()` after them: a
held span may be one of the task's calls. Our own call spans are never held, so with otel-tokens'
instrumentation a completion is normally observed at once. Verdicts (`otel_tokens.verify`) go to the
aggregator before the batch's completions; a completion with no verdict yet waits
`MetricsConfig.verdict_wait_seconds` for one (0 in-process; the collector's dedupe hold window).

Before the gate, a record naming no agent of its own takes an enclosing `invoke_agent` span's
(`ancestry.py`): the batch's spans of its trace are scanned for links. A foreign record whose
ancestors have not arrived is held by the deduper anyway; later batches continue its walk while it is
held and amend it, so waiting for an ancestor adds no delay beyond the dedupe hold window. (The
amendment is not journaled: after a crash such a record is counted with the resource's agent.)

With ingest workers (`collector --workers N`) a worker extracts and resolves against its own batch,
but the deduper and the tracked walks are the main process's: a batch carries its unfinished walks
there, and while the main process tracks any (`walks_elsewhere`), a worker scans every trace of its
batches and the batch carries those links and scopes to the main process's `apply_batch`, which
continues the walks and amends held records as `_resolve` does in one process. The limit is the one
a single process has between two concurrent exports: an ancestor scanned before its descendant's
walk is tracked is not seen; with workers that window also spans the descendant's trip over the pipe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from otel_tokens import metric_names as mn
from otel_tokens._safety import swallow_internal_errors
from otel_tokens.aggregate import Aggregator, MetricsConfig
from otel_tokens.ancestry import AncestorResolver, FreshWalks, Links, Scope, Scopes, Walk
from otel_tokens.dedupe import DedupeConfig, Deduper, DeduperState
from otel_tokens.exposition import TokenMetricsCollector
from otel_tokens.extract import (
    DEFAULT_MAX_TOKENS_PER_CALL,
    Extractor,
    Outcome,
    PriceFn,
    Rejection,
    scan_otlp,
    scan_readable,
)
from otel_tokens.extract_stats import ExtractStats, ExtractStatsCollector
from otel_tokens.guard_decisions import GuardDecisionCollector, GuardDecisions, SpanDecisions
from otel_tokens.ingest_stats import bounded_reason
from otel_tokens.record import Record, TaskCompletion, UsageRecord, Verdict

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import ReadableSpan

    from otel_tokens.collector.presum import Presummed

__all__ = ["Batch", "DedupeConfig", "Gate", "IngestResult", "MetricsConfig", "Pipeline", "PipelineState"]


def _link_records(
    records: list[UsageRecord],
    keys: list[int],
    parents: list[int],
    wanted: Container[int],
    links: Links,
    scopes: Scopes,
) -> None:
    """`_link_each_record`, in bulk: the batch's usage spans of the `wanted` traces as links too (a
    link the scan found first stays), each naming its own agent as a final scope."""
    if not links.keys() >= set(keys):  # else the scan found them all (usually: it saw these spans)
        at = [i for i, r in enumerate(records) if r.span_id and r.trace_id in wanted]
        found = {keys[i]: parents[i] for i in reversed(at)}  # reversed: the first of a span id wins
        found.update(links)
        links.update(found)
    for r in records:
        who = r.attribution
        if who.agent is not None and not r.agent_from_resource and r.span_id and r.trace_id in wanted:
            scopes.setdefault((r.trace_id << 64) | r.span_id, Scope(who.agent, who.workflow, final=True))


def _link_each_record(
    records: list[UsageRecord], wanted: Container[int], links: Links, scopes: Scopes
) -> None:
    """`_link_records`, record by record (the rule it must match)."""
    for r in records:
        trace_id = r.trace_id
        if trace_id in wanted and r.span_id:
            key = (trace_id << 64) | r.span_id
            if key not in links:
                links[key] = (trace_id << 64) | (r.parent_span_id or 0)
            if r.attribution.agent is not None and not r.agent_from_resource:
                scopes.setdefault(key, Scope(r.attribution.agent, r.attribution.workflow, final=True))


class _EveryTrace:
    """The trace filter of a worker's scan while the main process tracks walks: every trace."""

    def __contains__(self, trace_id: object) -> bool:
        return True


_EVERY_TRACE = _EveryTrace()

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


class Batch:
    """One ingest call's outcomes, gathered before dedupe and aggregation take their locks once.
    `by_content`: the records came from spans, so one without a span id is deduplicated by its
    content (a resend of it is not counted twice)."""

    __slots__ = (
        "_fresh",
        "_keys",
        "_walks",
        "by_content",
        "completions",
        "decisions",
        "links",
        "materialize",
        "presummed",
        "records",
        "rejected",
        "result",
        "scopes",
        "verdicts",
    )

    def __init__(self, *, by_content: bool = False) -> None:
        self.result = IngestResult()
        self.records: list[UsageRecord] = []
        self.rejected: dict[str, int] = {}
        self.completions: list[TaskCompletion] = []
        self.verdicts: list[Verdict] = []
        #: the guard's decision events of the batch's spans, counted by `apply_batch` (journaled)
        self.decisions: list[SpanDecisions] = []
        self.by_content = by_content
        self._walks: list[Walk] = []
        self._fresh: FreshWalks | None = None  # `walks` before they are asked for one by one
        #: (the records list they belong to, each record's span key, each one's parent key)
        self._keys: tuple[list[UsageRecord], list[int], list[int]] | None = None
        #: an ingest worker's scan for the main process's tracked walks (see the module docstring)
        self.links: Links | None = None
        self.scopes: Scopes | None = None
        #: an ingest worker's sums of `records` (collector/presum.py): counted per series when the deduper
        #: counts every record (collector/worker_wire.py); not journaled (the records are)
        self.presummed: Presummed | None = None
        #: with `presummed`, records may hold their dedupe keys alone: this gives the whole ones
        #: for those the pipeline counts one by one or hands to listeners
        self.materialize: Callable[[list[UsageRecord]], list[UsageRecord]] | None = None

    @property
    def walks(self) -> list[Walk]:
        """Ancestor walks this batch could not finish (see `Pipeline._resolve`); not journaled."""
        if self._fresh is not None:
            self._walks, self._fresh = self._fresh.walks(), None
        return self._walks

    @walks.setter
    def walks(self, walks: list[Walk]) -> None:
        self._walks, self._fresh = walks, None

    @property
    def has_walks(self) -> bool:
        return bool(self._walks) or self._fresh is not None

    def span_keys(self) -> tuple[list[int], list[int]]:
        """Each record's span key and its parent's (`span_key`; a root's parent has span id 0),
        computed once for the batch: the ancestor walks and the deduper both key spans so."""
        records = self.records
        if self._keys is None or self._keys[0] is not records:
            keys = [(r.trace_id << 64) | r.span_id for r in records]  # `span_key`, inline (per record)
            parents = [(r.trace_id << 64) | (r.parent_span_id or 0) for r in records]
            self._keys = (records, keys, parents)
        return self._keys[1], self._keys[2]

    def __getstate__(self) -> dict[str, object]:
        """Pickled (an ingest worker's batch to the main process) without the key cache, which
        points at the records, and with its walks as `Walk` objects."""
        state = {name: getattr(self, name) for name in self.__slots__ if name not in ("_fresh", "_keys")}
        state["_walks"] = self.walks
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self._fresh = self._keys = None
        for name, value in state.items():
            object.__setattr__(self, name, value)

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
        elif type(outcome) is Verdict:
            self.verdicts.append(outcome)
        elif isinstance(outcome, Rejection):
            self.rejected[outcome.reason] = self.rejected.get(outcome.reason, 0) + 1
            self.result.spans_rejected += 1
            if len(self.result.reasons) < _MAX_REASONS:
                self.result.reasons.append(outcome.message())
        elif isinstance(outcome, UsageRecord):
            self.records.append(outcome)  # a UsageRecord subclass


_Batch = Batch  # the name tests and older callers import


class Gate(Protocol):
    """Where every change to a pipeline's state passes; it calls the pipeline's `apply_*` method
    (the collector's durable store journals the change around that call)."""

    def batch(self, batch: Batch) -> IngestResult: ...

    def flush(self, until: float | None) -> None: ...

    def rejection(self, reason: str, rejected: int, received: int) -> None: ...


class _ApplyAtOnce:
    """The default gate: no journal, state in memory only."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def batch(self, batch: Batch) -> IngestResult:
        return self._pipeline.apply_batch(batch)

    def flush(self, until: float | None) -> None:
        self._pipeline.apply_flush(until)

    def rejection(self, reason: str, rejected: int, received: int) -> None:
        self._pipeline.apply_rejection(reason, rejected, received)


@dataclass
class PipelineState:
    """What a pipeline remembers besides the aggregator's counters: the dedupe memory and the task
    completions waiting for held spans, as (deadline, completion)."""

    deduper: DeduperState
    pending: list[tuple[float, TaskCompletion]]
    #: the extractor's self-metrics (clamped records, enrichment failures), as ExtractStats.snapshot()
    extract_stats: tuple[dict[str, int], dict[str, int]] = ({}, {})


class _DedupeMemoryCollector(Collector):
    """How full the dedupe memory is, and whether its cap broke the exactly-once window."""

    def __init__(self, deduper: Deduper) -> None:
        self._deduper = deduper

    def collect(self) -> Iterator[Metric]:
        early = CounterMetricFamily(
            mn.DEDUPE_FORGOTTEN_EARLY,
            "Counted spans forgotten by the dedupe memory's size cap before their window passed "
            "(a resend of one would be counted again): raise the cap or shorten the window.",
        )
        early.add_metric([], self._deduper.evicted_early)
        remembered = GaugeMetricFamily(
            mn.DEDUPE_REMEMBERED, "Counted spans the dedupe memory holds (each ~150 bytes)."
        )
        remembered.add_metric([], self._deduper.remembered)
        yield early
        yield remembered


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
        self.aggregator = Aggregator(self.config, clock=clock, compiled=compiled)
        self._clock = clock
        self._extractor = Extractor(
            price=price,
            max_tokens_per_call=max_tokens_per_call,
            agent_fallback_attribute=self.config.agent_fallback_attribute,
            compiled=compiled,
        )
        self._resolver = AncestorResolver(max_walks=self.dedupe.max_held_spans)
        self._resolver_lock = threading.Lock()
        self._deduper = Deduper(
            hold_seconds=self.dedupe.hold_seconds,
            max_held=self.dedupe.max_held_spans,
            max_remembered=self.dedupe.max_remembered_spans,
            window_seconds=self.dedupe.window_seconds,
        )
        self._listeners: list[Callable[[UsageRecord], None]] = []
        # completions waiting for held spans: (deadline, completion), in arrival (= deadline) order
        self._pending: deque[tuple[float, TaskCompletion]] = deque()
        self._pending_lock = threading.Lock()
        self.registry.register(TokenMetricsCollector(self.aggregator))
        self.registry.register(ExtractStatsCollector(self._extractor.stats))
        self.registry.register(_DedupeMemoryCollector(self._deduper))
        #: Every state change passes here (see the module docstring); replaced by a durable store.
        self.gate: Gate = _ApplyAtOnce(self)
        #: the guard's decision events: read at ingest apart from extraction, carried by the batch
        #: and counted by `apply_batch` (`guard_decisions.py`), so a durable gate journals them
        self.guard_decisions = GuardDecisions(max_series=self.config.max_series_per_metric, clock=clock)
        self.registry.register(GuardDecisionCollector(self.guard_decisions))
        #: In an ingest worker: whether the main process tracks unfinished walks (then every batch
        #: carries its links and scopes there). None: this pipeline tracks its own.
        self.walks_elsewhere: Callable[[], bool] | None = None
        #: Told how many walks this pipeline tracks whenever that changes (the collector's main
        #: process publishes it to its ingest workers).
        self.on_walks: Callable[[int], None] | None = None

    @property
    def batch_paths(self) -> bool:
        """Whole-batch paths of the deduper and the ancestor walks, where they provably give what the
        per-record rules give (`Deduper.batch_paths`); False: per record only (the tests compare)."""
        return self._deduper.batch_paths

    @batch_paths.setter
    def batch_paths(self, on: bool) -> None:
        self._deduper.batch_paths = on

    def ingest_otlp(self, request: ExportTraceServiceRequest) -> IngestResult:
        """Count the usage spans of one decoded OTLP export request. With the compiled walk, the
        request is serialized again and counted as `ingest_otlp_scanned` counts bytes (cheaper than
        reading its attributes, links and events in Python), unless the walk declines."""
        if self._extractor.compiled:
            result = self.ingest_otlp_scanned(request.SerializeToString(), request)
            if result is not None:
                return result
        batch = Batch(by_content=True)
        with swallow_internal_errors("Pipeline.ingest_otlp"):
            self._extractor.extract_otlp(request, batch)
            self._resolve(batch, lambda ts, links, scopes: scan_otlp(request, ts, links, scopes))
        with swallow_internal_errors("Pipeline.guard_decisions"):
            batch.decisions = self.guard_decisions.read_otlp(request)
        return self.gate.batch(batch)

    def ingest_otlp_bytes(self, data: bytes) -> IngestResult:
        """`ingest_otlp(ExportTraceServiceRequest.FromString(data))`, the same result, without the
        decode when the compiled walk is built (accelerator.py): it reads the wire bytes itself.
        Raises protobuf's DecodeError, as `FromString` does, for a body that is not a request."""
        result = self.ingest_otlp_scanned(data)
        if result is None:  # no compiled walk, or it declined: decode and take the Python path
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            return self.ingest_otlp(ExportTraceServiceRequest.FromString(data))
        return result

    def ingest_otlp_scanned(
        self, data: bytes, request: ExportTraceServiceRequest | None = None
    ) -> IngestResult | None:
        """The serialized request counted by the compiled walk, with `ingest_otlp`'s result; None
        (nothing counted) when there is no compiled walk or it declines `data` — the receivers then
        decode it their own way (otlp_codec keeps the good spans of a partly broken request). The
        walk declines whatever `FromString` would refuse, so a None is also how a malformed body
        shows. The guard's decision events are read from `request` when the caller has it decoded,
        else from the bytes (`GuardDecisions.read_otlp_bytes`), only when the walk saw span events."""
        found = self._extractor.scan(data)
        if found is None:
            return None
        batch = Batch(by_content=True)
        with swallow_internal_errors("Pipeline.ingest_otlp_bytes"):
            self._extractor.count_scanned(found, batch)
            # the ancestor walk's parent links, read from the bytes only when a record needs them
            self._resolve(
                batch, lambda ts, links, scopes: self._extractor.scan_links(data, ts, links, scopes)
            )
        if found[4]:  # span events (the guard's decisions travel as events), else none to read
            with swallow_internal_errors("Pipeline.guard_decisions"):
                decisions = self.guard_decisions
                batch.decisions = (
                    decisions.read_otlp(request) if request is not None else decisions.read_otlp_bytes(data)
                )
        return self.gate.batch(batch)

    def ingest_spans(self, spans: Iterable[ReadableSpan]) -> IngestResult:
        """Count the usage spans among finished SDK spans (the in-process path)."""
        batch = Batch(by_content=True)
        spans = tuple(spans)
        with swallow_internal_errors("Pipeline.ingest_spans"):
            for span in spans:
                batch.spans_received += 1
                batch.add(self._extractor.from_readable_span(span))
            self._resolve(batch, lambda ts, links, scopes: scan_readable(spans, ts, links, scopes))
        with swallow_internal_errors("Pipeline.guard_decisions"):
            batch.decisions = self.guard_decisions.read_spans(spans)
        return self.gate.batch(batch)

    def ingest_records(self, records: Iterable[Record]) -> IngestResult:
        """Count records built in this process (our instrumentation's, through `otel_tokens.sinks`):
        no extraction, but the extractor's rules for a record (consistency, ceiling, pricing when
        unpriced); deduplicated against spans like any span. Each record stands for the span it
        describes, so it counts as a span received."""
        batch = Batch()
        admit = self._extractor.admit_record
        with swallow_internal_errors("Pipeline.ingest_records"):
            for record in records:
                batch.spans_received += 1
                batch.add(admit(record) if isinstance(record, UsageRecord) else record)
            self._resolve(batch, None)
        return self.gate.batch(batch)

    def reject_payload(self, reason: str) -> None:
        """A receiver could not decode a body: count it as one rejection under a bounded reason."""
        self.gate.rejection(reason, 1, 0)

    def reject_spans(self, reason: str, count: int) -> None:
        """A receiver decoded a request but not `count` of its spans: count them as received and
        rejected (through the gate, so a durable collector keeps the figures too)."""
        if count > 0:
            self.gate.rejection(reason, count, count)

    def flush(self, now: float | None = None) -> None:
        """Count held foreign spans whose dedupe window has passed (all of them at shutdown:
        pass `now=float("inf")`)."""
        self.gate.flush(now)

    # --- the state transitions a gate applies (deterministic given the clock) ----------------------
    def apply_batch(self, batch: Batch) -> IngestResult:
        """Dedupe, count and observe one batch; the clock is read once."""
        now = self._clock()
        dropped = 0
        if batch.links is not None:
            self._continue_walks(batch.links, batch.scopes or {})
        if batch.records:
            keys = batch.span_keys() if self.batch_paths else None
            counted, dropped = self._deduper.offer_many(
                batch.records, now, by_content=batch.by_content, keys=keys
            )
            whole = batch.presummed if len(counted) == len(batch.records) else None
            if batch.materialize is not None and counted and (whole is None or self._listeners):
                counted = batch.materialize(counted)
            batch.result.records_counted = self._emit(counted, whole)
            if batch.has_walks:
                self._track(batch)
        self.aggregator.ingest_stats.add(batch.result.spans_received, batch.rejected, dropped)
        if batch.verdicts:
            self.aggregator.add_verdicts(batch.verdicts)
        if batch.completions:
            batch.result.tasks_completed = len(batch.completions)
            self._complete(batch.completions, now)
        if batch.decisions:
            with swallow_internal_errors("Pipeline.guard_decisions"):
                self.guard_decisions.apply(batch.decisions)
        return batch.result

    def apply_flush(self, until: float | None = None) -> bool:
        """Count held spans due by `until` (default: now); True when that changed anything. When
        scrapes do not expire idle series (a durable owner), the periodic sweep happens here, as
        part of this change."""
        now = self._clock() if until is None else until
        if self._resolver.waiting:
            with self._resolver_lock:
                self._resolver.expire(now)
                self._publish_walks()
        released = self._deduper.flush(now)
        self._emit(released)
        due = self._due_completions(now) if self._pending else []
        if due:
            self.aggregator.complete_tasks(due)
        aggregator = self.aggregator
        swept = until is None and not aggregator.expire_on_snapshot and aggregator.sweep_due(now)
        if swept:
            aggregator.expire(now)
        return bool(released or due or swept)

    def apply_rejection(self, reason: str, rejected: int = 1, received: int = 0) -> None:
        self.aggregator.ingest_stats.add(received, {bounded_reason(reason): rejected})

    def state(self) -> PipelineState:
        """A copy of the dedupe memory and the waiting completions (the aggregator has its own)."""
        with self._pending_lock:
            pending = list(self._pending)
        return PipelineState(self._deduper.state(), pending, self._extractor.stats.snapshot())

    def restore(self, state: PipelineState) -> None:
        self._deduper.restore(state.deduper)
        self._extractor.stats.restore(*state.extract_stats)
        with self._pending_lock:
            self._pending.clear()
            self._pending.extend(state.pending)

    @property
    def clock(self) -> Callable[[], float]:
        """The injected clock (share it with the budget ledger, so both count at one time)."""
        return self._clock

    @property
    def extract_stats(self) -> ExtractStats:
        """The extractor's self-metrics (the collector's ingest workers ship theirs to the main one)."""
        return self._extractor.stats

    @property
    def held_spans(self) -> int:
        """Foreign spans waiting for a twin (counted by `flush`)."""
        return self._deduper.held

    def add_listener(self, fn: Callable[[UsageRecord], None]) -> None:
        """`fn` sees every counted record, after dedupe (the budget ledger subscribes here)."""
        self._listeners.append(fn)

    def always_admit(self, values: Mapping[str, Iterable[str]]) -> None:
        """Label values (by label name) that always get series of their own beyond the series limit:
        the budget ledger registers the names its budgets' scopes match on."""
        self.aggregator.always_admit(values)

    # --- internals -----------------------------------------------------------------------------
    def _resolve(self, batch: Batch, scan: Callable[[Container[int], Links, Scopes], None] | None) -> None:
        """Records without an agent of their own take an ancestor `invoke_agent` span's: the batch's
        spans of their traces (and of traces with walks in progress) are scanned only when needed.
        Walks this batch cannot finish go with the batch, tracked if the deduper holds their record."""
        records = batch.records
        needing = [
            r for r in records if r.parent_span_id and (r.attribution.agent is None or r.agent_from_resource)
        ]  # `AncestorResolver.needs`, inline (per record)
        traces = {r.trace_id for r in needing}
        elsewhere = self.walks_elsewhere is not None and self.walks_elsewhere()
        if not traces and not self._resolver.waiting and not elsewhere:
            return
        links: Links = {}
        scopes: Scopes = {}
        with self._resolver_lock:
            traces |= self._resolver.traces
            wanted: Container[int] = _EVERY_TRACE if elsewhere else traces
            if scan is not None:
                scan(wanted, links, scopes)
            if not self.batch_paths:
                _link_each_record(records, wanted, links, scopes)
                self._advance(links, scopes)
                deadline = self._clock() + self.dedupe.hold_seconds
                batch.records, batch.walks = AncestorResolver.start(records, links, scopes, deadline)
            else:
                keys, parents = batch.span_keys()
                _link_records(records, keys, parents, wanted, links, scopes)
                self._advance(links, scopes)
                deadline = self._clock() + self.dedupe.hold_seconds
                self._start(batch, needing, links, scopes, deadline)
        if elsewhere:
            batch.links, batch.scopes = links, scopes

    @staticmethod
    def _start(
        batch: Batch, needing: list[UsageRecord], links: Links, scopes: Scopes, deadline: float
    ) -> None:
        """`AncestorResolver.start` of the batch, the walks kept as `FreshWalks` when none moves."""
        if not needing:
            return
        keys, parents = batch.span_keys()
        if len(needing) == len(batch.records):  # often every record (foreign spans under a parent)
            frontiers, own = parents, keys
        else:
            frontiers, own = [(r.trace_id << 64) | r.parent_span_id for r in needing], None  # type: ignore[operator]
        fresh = AncestorResolver.start_fresh(needing, frontiers, links, scopes, deadline)
        if fresh is not None:
            fresh.keys = own
            batch._fresh = fresh
        else:
            batch.records, batch.walks = AncestorResolver.start(batch.records, links, scopes, deadline)

    def _advance(self, links: Links, scopes: Scopes) -> None:
        """Continue the tracked walks with these spans, amending each held record a walk finishes
        (under the resolver lock)."""
        if not self._resolver.waiting:
            return
        for walk in self._resolver.advance(links, scopes):
            attribution = walk.attribution()
            if attribution is not None:
                self._deduper.amend_held(walk.record, attribution)
        self._publish_walks()

    def _continue_walks(self, links: Links, scopes: Scopes) -> None:
        """An ingest worker's scan of a batch, for the walks this (main) process tracks."""
        with self._resolver_lock:
            self._advance(links, scopes)

    def _publish_walks(self) -> None:
        if self.on_walks is not None:
            self.on_walks(self._resolver.waiting)

    def _track(self, batch: Batch) -> None:
        """Track the batch's unfinished walks whose record the deduper holds."""
        fresh = batch._fresh
        with self._resolver_lock:
            if fresh is not None:
                held = self._deduper.holding(fresh.records, fresh.keys)
                self._resolver.track_fresh(fresh if all(held) else fresh.only(held))
            else:
                walks = batch.walks
                held = self._deduper.holding([walk.record for walk in walks])
                self._resolver.track_many(
                    [walk for walk, is_held in zip(walks, held, strict=True) if is_held]
                )
            self._publish_walks()

    def _complete(self, completions: list[TaskCompletion], now: float) -> None:
        """Observe now, unless held or waiting foreign spans (maybe the task's calls) are still to be
        counted, or a verdict may still come."""
        held = self._deduper.held or self._resolver.waiting
        hold = self.dedupe.hold_seconds if held else 0.0
        verdict_wait = self.config.verdict_wait_seconds
        at_once: list[TaskCompletion] = []
        with self._pending_lock:
            for c in completions:
                waits_verdict = verdict_wait > 0 and not self.aggregator.has_verdict(c.task_id)
                wait = max(hold, verdict_wait if waits_verdict else 0.0)
                if wait <= 0 or len(self._pending) >= self.dedupe.max_held_spans:
                    at_once.append(c)  # bounded: past the limit, observe at once rather than drop
                else:
                    self._pending.append((now + wait, c))
        if at_once:
            self.aggregator.complete_tasks(at_once)

    def _due_completions(self, now: float) -> list[TaskCompletion]:
        """Every waiting completion due by `now` (waits differ, so not only those in front)."""
        with self._pending_lock:
            if not any(deadline <= now for deadline, _ in self._pending):
                return []
            due = [c for deadline, c in self._pending if deadline <= now]
            self._pending = deque((d, c) for d, c in self._pending if d > now)
        return due

    def _emit(self, counted: list[UsageRecord], presummed: Presummed | None = None) -> int:
        if not counted:
            return 0
        if presummed is None:
            self.aggregator.add_many(counted)
        else:  # the same counts, summed by an ingest worker
            self.aggregator.add_presummed(presummed)
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
