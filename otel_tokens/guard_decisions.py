"""The guard's decisions, counted at the collector: `llm_guard_actions_total{agent,budget,action}`
and `llm_tokens_saved_total{agent,budget,reason}`.

The guard writes one span event `otel_tokens.guard.decision` per decision on the call's span, with
the outcome (blocked, deferred, downgraded, warned, stopped, ...) and the tokens it saved, and an
`otel_tokens.guard.saved` event (reason compressed or cached, and the tokens) for what a compress
rewrite or a response-cache hit saved. This module reads those events off received spans — a pass
of its own beside extraction, which it does not touch: spans without events cost one length check.

What counts as saved (`otel_tokens.guard.tokens_saved`, set by the guard): a blocked or deferred
call, its whole estimate (input + output ceiling), since nothing was sent; a downgraded call, the
estimate times the share of the price the cheaper model saves — the saving expressed in tokens of
the model asked for (0 when either model is unpriced); compress and cache put the tokens they removed
or answered on their saved event. Warnings save nothing.

Bounded: `action` and `reason` take fixed values (`GUARD_OUTCOMES`, `SAVED_REASONS`; anything
else is `other`, or not a saving), and (agent, budget) go through a `KeyedFamily` with a series
limit and the usual overflow series. An exporter's resend of a span is counted once: the ids of
the last `max_remembered` spans that carried decisions are remembered (decisions are rare, so this
covers a long time); the span's (trace id, span id) is the idempotency key.

Reading is split from counting: ingest reads a span's events into `SpanDecisions` carried by the
pipeline's batch, and the pipeline's apply step counts them (`apply`) — in the collector's main
process, under its gate, so with a data dir they are journaled with the batch and kept in the
snapshots like every other counter (counts and the memory of counted spans): they survive a
restart, and a resend after the restart is still counted once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.keyed import KeyedFamily

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["GuardDecisionCollector", "GuardDecisions", "SpanDecisions"]

_OUTCOMES = frozenset(mn.GUARD_OUTCOMES)
_REASONS = frozenset(mn.SAVED_REASONS)
_WANTED = (
    sc.OTEL_TOKENS_GUARD_OUTCOME, sc.OTEL_TOKENS_GUARD_BUDGET, sc.OTEL_TOKENS_GUARD_TOKENS_SAVED,
    sc.OTEL_TOKENS_GUARD_SAVED_REASON, sc.OTEL_TOKENS_GUARD_SAVED_TOKENS,
)  # fmt: skip
_EVENTS = frozenset({sc.OTEL_TOKENS_GUARD_DECISION_EVENT, sc.OTEL_TOKENS_GUARD_SAVED_EVENT})
#: What both event names start with: a serialized request without it carries no guard events.
_EVENT_MARK = sc.OTEL_TOKENS_GUARD_DECISION_EVENT.rsplit(".", 1)[0].encode() + b"."
assert sc.OTEL_TOKENS_GUARD_SAVED_EVENT.encode().startswith(_EVENT_MARK)
#: Longest agent / budget / reason text kept (they become label values).
_MAX_TEXT = 256


class _Count:
    __slots__ = ("last_seen", "value")

    def __init__(self, value: float = 0.0, last_seen: float = 0.0) -> None:
        self.value = value
        self.last_seen = last_seen


class SpanDecisions(NamedTuple):
    """One span's guard events as read at ingest, before anything is counted: the unit a batch
    carries to the apply step (and the journal keeps). Plain values only, so it pickles across an
    ingest worker's pipe and encodes as JSON."""

    #: the span's ids as integers (OTLP's bytes read big-endian, like the SDK's); the pair is the
    #: idempotency key of its decisions. `span_id` 0: the sender left it out (a resend of such a
    #: span cannot be told apart, and is counted again).
    trace_id: int
    span_id: int
    agent: str
    #: (event name, its wanted `otel_tokens.guard.*` attributes), in the span's order
    events: tuple[tuple[str, dict[str, Any]], ...]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> SpanDecisions:
        """Back from the journal (JSON has no tuples)."""
        trace_id, span_id, agent, events = value
        return cls(int(trace_id), int(span_id), str(agent), tuple((str(n), dict(a)) for n, a in events))


class GuardDecisions:
    """Counts decision events by (agent, budget, action) and savings by (agent, budget, reason).

    Reading (`read_otlp`, `read_spans`) is apart from counting (`apply`), so a collector reads in
    whichever process decoded the spans and counts where every other change is applied and
    journaled; `count_otlp` / `count_spans` do both at once (in-memory use)."""

    def __init__(
        self, *, max_series: int = 2000, max_remembered: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._max_remembered = max_remembered
        self.actions: KeyedFamily[_Count] = KeyedFamily(_Count, width=3, limit=max_series)
        self.saved: KeyedFamily[_Count] = KeyedFamily(_Count, width=3, limit=max_series)

    # --- reading: pure, in whichever process decoded the spans ------------------------------------
    @staticmethod
    def read_otlp(request: ExportTraceServiceRequest) -> list[SpanDecisions]:
        """The guard events of a decoded OTLP request (spans without events cost a length check)."""
        found = []
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.events:
                        item = _otlp_span(span)
                        if item is not None:
                            found.append(item)
        return found

    @staticmethod
    def read_otlp_bytes(data: bytes) -> list[SpanDecisions]:
        """`read_otlp` of a serialized request, for the path that never decodes one: a byte search
        for the event names first, so only a request with guard events (rare) is decoded here."""
        if _EVENT_MARK not in data:
            return []
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        return GuardDecisions.read_otlp(ExportTraceServiceRequest.FromString(data))

    @staticmethod
    def read_spans(spans: Iterable[ReadableSpan]) -> list[SpanDecisions]:
        """The guard events of finished SDK spans (the in-process path)."""
        found = []
        for span in spans:
            events = tuple(
                (e.name, _scalars((e.attributes or {}).items()))
                for e in span.events or ()
                if e.name in _EVENTS
            )
            if not events:
                continue
            ctx = span.get_span_context()
            trace_id, span_id = (ctx.trace_id, ctx.span_id) if ctx is not None else (0, 0)
            agent = str((span.attributes or {}).get(sc.GEN_AI_AGENT_NAME) or mn.UNKNOWN)[:_MAX_TEXT]
            found.append(SpanDecisions(trace_id, span_id, agent, events))
        return found

    # --- counting: where the pipeline applies its changes (deterministic given the clock) ----------
    def apply(self, items: Iterable[SpanDecisions]) -> None:
        """Count what `read_*` found; a span already counted (by its ids) is not counted again."""
        for item in items:
            if item.span_id and not self.first_time(item.trace_id, item.span_id):
                continue
            for name, attributes in item.events:
                self.count(item.agent, attributes, name)

    def count_otlp(self, request: ExportTraceServiceRequest) -> None:
        self.apply(self.read_otlp(request))

    def count_spans(self, spans: Iterable[ReadableSpan]) -> None:
        self.apply(self.read_spans(spans))

    def first_time(self, trace_id: int, span_id: int) -> bool:
        """True the first time a span (by its ids) is seen; a resend is not counted again."""
        key = (trace_id, span_id)
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._seen) > self._max_remembered:
                self._seen.popitem(last=False)
            return True

    def count(
        self, agent: str, event: Mapping[str, Any], name: str = sc.OTEL_TOKENS_GUARD_DECISION_EVENT
    ) -> None:
        """One event's attributes (`otel_tokens.guard.*`): a decision (`name` the decision event)
        or a saving (the saved event)."""
        budget = str(event.get(sc.OTEL_TOKENS_GUARD_BUDGET) or mn.UNKNOWN)[:_MAX_TEXT]
        if name == sc.OTEL_TOKENS_GUARD_SAVED_EVENT:
            reason = str(event.get(sc.OTEL_TOKENS_GUARD_SAVED_REASON) or "")
            self._save(agent, budget, reason, event.get(sc.OTEL_TOKENS_GUARD_SAVED_TOKENS))
            return
        outcome = str(event.get(sc.OTEL_TOKENS_GUARD_OUTCOME) or "other")
        with self._lock:
            action = outcome if outcome in _OUTCOMES else "other"
            self.actions.get_or_create((agent, budget, action), self._clock()).value += 1
        self._save(agent, budget, outcome, event.get(sc.OTEL_TOKENS_GUARD_TOKENS_SAVED))

    def _save(self, agent: str, budget: str, reason: str, tokens: object) -> None:
        if reason not in _REASONS or not isinstance(tokens, int | float) or isinstance(tokens, bool):
            return
        if 0 < tokens < float("inf"):
            with self._lock:
                self.saved.get_or_create((agent, budget, reason), self._clock()).value += float(tokens)

    # --- exposition and persistence --------------------------------------------------------------
    def snapshot(self) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
        with self._lock:
            return (
                {k: v.value for k, v in self.actions.entries.items()},
                {k: v.value for k, v in self.saved.entries.items()},
            )

    def state(self) -> dict[str, Any]:
        """The counts and the memory of counted spans as plain data (the durable store's snapshot)."""
        with self._lock:
            return {
                "actions": self.actions.state(_count_values),
                "saved": self.saved.state(_count_values),
                "seen": [list(key) for key in self._seen],
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back `state()`."""
        with self._lock:
            self.actions.restore(state["actions"], _Count)
            self.saved.restore(state["saved"], _Count)
            self._seen = OrderedDict(((int(t), int(s)), None) for t, s in state["seen"])


def _count_values(count: _Count) -> list[Any]:
    return [count.value, count.last_seen]


def _otlp_span(span: Any) -> SpanDecisions | None:
    events = tuple((e.name, _scalars((kv.key, _any_value(kv.value)) for kv in e.attributes))
                   for e in span.events if e.name in _EVENTS)  # fmt: skip
    if not events:
        return None
    trace_id, span_id = int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big")
    return SpanDecisions(trace_id, span_id, _otlp_agent(span.attributes), events)


def _scalars(attributes: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The wanted attributes whose values are scalars (an outsider's list or map is ignored);
    text is cut at `_MAX_TEXT` characters."""
    kept: dict[str, Any] = {}
    for key, value in attributes:
        if key not in _WANTED:
            continue
        if isinstance(value, str):
            kept[key] = value[:_MAX_TEXT]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            kept[key] = value
    return kept


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def _otlp_agent(attributes: Any) -> str:
    for kv in attributes:
        if kv.key == sc.GEN_AI_AGENT_NAME:
            return str(_any_value(kv.value) or mn.UNKNOWN)[:_MAX_TEXT]
    return mn.UNKNOWN


class GuardDecisionCollector(Collector):
    """prometheus_client collector: fresh counter families from one snapshot per scrape."""

    def __init__(self, decisions: GuardDecisions) -> None:
        self._decisions = decisions

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        actions_family, saved_family = self._families()
        actions, saved = self._decisions.snapshot()
        for key, value in sorted(actions.items()):
            actions_family.add_metric(list(key), value)
        for key, value in sorted(saved.items()):
            saved_family.add_metric(list(key), value)
        yield actions_family
        yield saved_family

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                mn.GUARD_ACTIONS, "Decisions of the in-process budget guard, by what it did.",
                labels=[mn.AGENT, mn.BUDGET, mn.ACTION],
            ),
            CounterMetricFamily(
                mn.TOKENS_SAVED, "Tokens the guard kept from reaching a provider (README: what counts).",
                labels=[mn.AGENT, mn.BUDGET, mn.REASON],
            ),
        )  # fmt: skip
