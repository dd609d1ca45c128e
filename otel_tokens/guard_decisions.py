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
covers a long time). The counts live in memory: a restarted collector starts them from 0, which
`rate()` and `increase()` read as a counter reset.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.keyed import KeyedFamily

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["GuardDecisionCollector", "GuardDecisions"]

_OUTCOMES = frozenset(mn.GUARD_OUTCOMES)
_REASONS = frozenset(mn.SAVED_REASONS)
_WANTED = (
    sc.OTEL_TOKENS_GUARD_OUTCOME, sc.OTEL_TOKENS_GUARD_BUDGET, sc.OTEL_TOKENS_GUARD_TOKENS_SAVED,
    sc.OTEL_TOKENS_GUARD_SAVED_REASON, sc.OTEL_TOKENS_GUARD_SAVED_TOKENS,
)  # fmt: skip
_EVENTS = frozenset({sc.OTEL_TOKENS_GUARD_DECISION_EVENT, sc.OTEL_TOKENS_GUARD_SAVED_EVENT})


class _Count:
    __slots__ = ("last_seen", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.last_seen = 0.0


class GuardDecisions:
    """Counts decision events by (agent, budget, action) and savings by (agent, budget, reason)."""

    def __init__(
        self, *, max_series: int = 2000, max_remembered: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._seen: OrderedDict[tuple[object, object], None] = OrderedDict()
        self._max_remembered = max_remembered
        self.actions: KeyedFamily[_Count] = KeyedFamily(_Count, width=3, limit=max_series)
        self.saved: KeyedFamily[_Count] = KeyedFamily(_Count, width=3, limit=max_series)

    def first_time(self, trace_id: object, span_id: object) -> bool:
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
        budget = str(event.get(sc.OTEL_TOKENS_GUARD_BUDGET) or mn.UNKNOWN)
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

    def count_otlp(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.events:
                        self._otlp_span(span)

    def _otlp_span(self, span: Any) -> None:
        agent: str | None = None
        for event in span.events:
            if event.name not in _EVENTS:
                continue
            if agent is None:
                if span.span_id and not self.first_time(bytes(span.trace_id), bytes(span.span_id)):
                    return
                agent = _otlp_agent(span.attributes)
            values = {kv.key: _any_value(kv.value) for kv in event.attributes if kv.key in _WANTED}
            self.count(agent, values, event.name)

    def count_spans(self, spans: Iterable[ReadableSpan]) -> None:
        for span in spans:
            events = [e for e in span.events or () if e.name in _EVENTS]
            ctx = span.get_span_context()
            if not events or (ctx is not None and not self.first_time(ctx.trace_id, ctx.span_id)):
                continue
            agent = str((span.attributes or {}).get(sc.GEN_AI_AGENT_NAME) or mn.UNKNOWN)
            for event in events:
                self.count(agent, dict(event.attributes or {}), event.name)

    def snapshot(self) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
        with self._lock:
            return (
                {k: v.value for k, v in self.actions.entries.items()},
                {k: v.value for k, v in self.saved.entries.items()},
            )


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def _otlp_agent(attributes: Any) -> str:
    for kv in attributes:
        if kv.key == sc.GEN_AI_AGENT_NAME:
            return str(_any_value(kv.value) or mn.UNKNOWN)[:256]
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
