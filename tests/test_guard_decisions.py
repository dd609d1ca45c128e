"""The collector's count of guard decisions, from the span events as OTLP carries them: what
`llm_guard_actions_total` and `llm_tokens_saved_total` show, resends counted once, labels bounded."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from prometheus_client import CollectorRegistry

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.guard_decisions import GuardDecisionCollector, GuardDecisions
from tests.prom_text import series


def kv(key: str, value: str | float) -> KeyValue:
    any_value = AnyValue(string_value=value) if isinstance(value, str) else AnyValue(double_value=value)
    return KeyValue(key=key, value=any_value)


def decision(outcome: str, budget: str, saved: float | None = None) -> Span.Event:
    attributes = [kv(sc.OTEL_TOKENS_GUARD_OUTCOME, outcome), kv(sc.OTEL_TOKENS_GUARD_BUDGET, budget)]
    if saved is not None:
        attributes.append(kv(sc.OTEL_TOKENS_GUARD_TOKENS_SAVED, saved))
    return Span.Event(name=sc.OTEL_TOKENS_GUARD_DECISION_EVENT, attributes=attributes)


def request(span_id: int, agent: str, *events: Span.Event) -> ExportTraceServiceRequest:
    span = Span(
        trace_id=b"\x01" * 16, span_id=span_id.to_bytes(8, "big"), name="chat gpt-4o",
        attributes=[kv(sc.GEN_AI_AGENT_NAME, agent)], events=list(events),
    )  # fmt: skip
    plain = Span(trace_id=b"\x01" * 16, span_id=b"\x09" * 8, name="no decisions")
    scope = ScopeSpans(spans=[span, plain])
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[scope])])


def exposed(decisions: GuardDecisions) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    registry = CollectorRegistry()
    registry.register(GuardDecisionCollector(decisions))
    actions = {tuple(sorted(dict(k).items())): v for k, v in series(registry, mn.GUARD_ACTIONS).items()}
    saved = {tuple(sorted(dict(k).items())): v for k, v in series(registry, mn.TOKENS_SAVED).items()}
    return {tuple(v for _, v in k): n for k, n in actions.items()}, {
        tuple(v for _, v in k): n for k, n in saved.items()
    }


def test_each_decision_is_counted_and_a_resend_is_not_counted_again():
    decisions = GuardDecisions()
    blocked = request(1, "coder", decision("blocked", "coder-daily", 120.0))
    downgraded = request(2, "writer", decision("downgraded", "w-usd", 33.5), decision("warned", "all", 0.0))
    for batch in (blocked, downgraded, blocked):  # the exporter resent the first batch
        decisions.count_otlp(batch)
    actions, saved = exposed(decisions)
    # sorted label names: action, agent, budget / agent, budget, reason
    assert actions == {
        ("blocked", "coder", "coder-daily"): 1.0,
        ("downgraded", "writer", "w-usd"): 1.0,
        ("warned", "writer", "all"): 1.0,
    }
    assert saved == {("coder", "coder-daily", "blocked"): 120.0, ("writer", "w-usd", "downgraded"): 33.5}


def test_labels_stay_bounded():
    decisions = GuardDecisions(max_series=3)
    decisions.count_otlp(request(1, "a", decision("made-up-outcome", "b", 5.0)))
    for i in range(10):
        decisions.count_otlp(request(100 + i, f"agent-{i}", decision("blocked", "b", 1.0)))
    actions, saved = exposed(decisions)
    assert actions[("other", "a", "b")] == 1.0  # an unknown outcome is `other`, and saves nothing
    assert ("a", "b", "made-up-outcome") not in saved
    assert len(actions) == 4 and actions[(mn.OVERFLOW,) * 3] == 8.0  # 3 series, then the overflow series


def test_what_compress_and_the_cache_saved_is_counted_from_their_saved_events():
    def saved_event(reason: str, tokens: int, budget: str | None) -> Span.Event:
        attributes = [kv(sc.OTEL_TOKENS_GUARD_SAVED_REASON, reason)]
        attributes.append(KeyValue(key=sc.OTEL_TOKENS_GUARD_SAVED_TOKENS, value=AnyValue(int_value=tokens)))
        if budget is not None:
            attributes.append(kv(sc.OTEL_TOKENS_GUARD_BUDGET, budget))
        return Span.Event(name=sc.OTEL_TOKENS_GUARD_SAVED_EVENT, attributes=attributes)

    decisions = GuardDecisions()
    decisions.count_otlp(
        request(1, "coder", decision("compressed", "codegen"), saved_event("compressed", 900, "codegen"))
    )
    decisions.count_otlp(request(2, "coder", saved_event(sc.SAVED_CACHED, 40, None)))
    actions, saved = exposed(decisions)
    assert actions == {("compressed", "coder", "codegen"): 1.0}  # a saving is no decision of its own
    assert saved == {("coder", "codegen", "compressed"): 900.0, ("coder", mn.UNKNOWN, "cached"): 40.0}


def test_the_serialized_request_path_counts_the_same_decisions():
    """`Pipeline.ingest_otlp_bytes` (the compiled walk, no decode) counts what `ingest_otlp` does."""
    from otel_tokens.pipeline import Pipeline

    blocked = request(1, "coder", decision("blocked", "coder-daily", 120.0))
    downgraded = request(2, "writer", decision("downgraded", "w-usd", 33.5))
    decoded, serialized = Pipeline(registry=CollectorRegistry()), Pipeline(registry=CollectorRegistry())
    for body in (blocked, downgraded, blocked):
        decoded.ingest_otlp(body)
        serialized.ingest_otlp_bytes(body.SerializeToString())
    assert exposed(serialized.guard_decisions) == exposed(decoded.guard_decisions)
    assert exposed(serialized.guard_decisions)[0] == {
        ("blocked", "coder", "coder-daily"): 1.0,
        ("downgraded", "writer", "w-usd"): 1.0,
    }
