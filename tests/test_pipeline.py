"""The pipeline as the receivers use it: OTLP requests in, exact Prometheus counters out.

Deduplication is checked in every arrival order the field produces: child before parent (the
usual export order), parent before child, in different batches, and after the hold window.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from prometheus_client import CollectorRegistry

from otel_tokens import semconv as sc
from otel_tokens.dedupe import DedupeConfig
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import TokenCounts, UsageRecord
from tests import prom_text

OURS, SDK, FOREIGN = (
    sc.INSTRUMENTATION_SCOPE,
    sc.ANTHROPIC_SDK_SCOPE,
    "opentelemetry.instrumentation.openai_v2",
)


def price(provider: str, model: str, tokens: TokenCounts) -> float | None:
    return tokens.total / 1000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    return AnyValue(string_value=v)


def span(span_id: int, parent: int = 0, *, trace: int = 1, usage: bool = True, **attrs: Any) -> Span:
    base: dict[str, Any] = (
        {sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4-5", sc.GEN_AI_PROVIDER_NAME: "anthropic",
         sc.GEN_AI_USAGE_INPUT_TOKENS: 100, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 10}
        if usage else {"http.method": "POST"}
    )  # fmt: skip
    base.update({k.replace("__", "."): v for k, v in attrs.items()})
    return Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name="chat",
        attributes=[KeyValue(key=k, value=_value(v)) for k, v in base.items()],
    )


def request(*scoped: tuple[str, Span]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(scope_spans=[ScopeSpans(scope=InstrumentationScope(name=name), spans=[s])])
            for name, s in scoped
        ]
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pipeline(clock: Clock) -> Pipeline:
    return Pipeline(registry=CollectorRegistry(), clock=clock, price=price)


def metrics(p: Pipeline) -> dict[str, float]:
    """Sample name{labels} → value, from the text Prometheus would scrape."""
    out: dict[str, float] = {}
    for (name, labels), v in prom_text.samples(p.registry).items():
        out[f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels))}}}"] = v
    return out


def requests_total(p: Pipeline) -> float:
    return sum(v for k, v in metrics(p).items() if k.startswith("llm_requests_total{"))


def dropped(p: Pipeline) -> float:
    return metrics(p)["otel_tokens_duplicates_dropped_total{}"]


def test_counts_tokens_and_reports_result(pipeline: Pipeline):
    result = pipeline.ingest_otlp(
        request((OURS, span(2, 1, gen_ai__agent__name="coder")), (OURS, span(3, 0, usage=False)))
    )
    assert (result.spans_received, result.records_counted, result.spans_rejected, result.reasons) == (
        2,
        1,
        0,
        [],
    )
    m = metrics(pipeline)
    labels = "agent=coder,model=claude-sonnet-4-5,provider=anthropic,task=unknown"
    assert m[f"llm_tokens_total{{{labels},token_type=input}}"] == 100
    assert m[f"llm_cost_usd_total{{{labels}}}"] == pytest.approx(0.11)
    assert m["otel_tokens_spans_received_total{}"] == 2


@pytest.mark.parametrize("order", ["child_first", "parent_first", "separate_batches"])
def test_our_span_and_the_sdk_child_count_once(pipeline: Pipeline, order: str):
    ours, sdk = (OURS, span(10, 1, gen_ai__agent__name="coder")), (SDK, span(11, 10))
    if order == "child_first":
        pipeline.ingest_otlp(request(sdk, ours))
    elif order == "parent_first":
        pipeline.ingest_otlp(request(ours, sdk))
    else:
        pipeline.ingest_otlp(request(sdk))
        pipeline.ingest_otlp(request(ours))
    pipeline.flush(float("inf"))
    assert requests_total(pipeline) == 1 and dropped(pipeline) == 1
    assert "agent=coder" in next(k for k in metrics(pipeline) if k.startswith("llm_requests_total"))


@pytest.mark.parametrize("ours_first", [True, False])
def test_foreign_instrumentation_outside_ours_counts_once(pipeline: Pipeline, ours_first: bool):
    outer, inner = (FOREIGN, span(20, 0, gen_ai__system="openai")), (OURS, span(21, 20))
    pipeline.ingest_otlp(request(inner, outer) if ours_first else request(outer))
    if not ours_first:
        pipeline.ingest_otlp(request(inner))
    # ours first: the foreign root is the duplicate. Root first: it was counted at once, so ours is
    # the duplicate — either way the call is counted exactly once.
    assert requests_total(pipeline) == 1 and dropped(pipeline) == 1


def test_two_foreign_spans_the_outer_one_wins(pipeline: Pipeline, clock: Clock):
    inner, outer = (SDK, span(31, 30)), (FOREIGN, span(30, 5, gen_ai__agent__name="outer"))
    pipeline.ingest_otlp(request(inner))
    pipeline.ingest_otlp(request(outer))
    assert requests_total(pipeline) == 0  # both wait: a parent (ours?) may still come
    clock.now += 2.5
    pipeline.flush()
    assert requests_total(pipeline) == 1 and dropped(pipeline) == 1
    assert any("agent=outer" in k for k in metrics(pipeline) if k.startswith("llm_requests_total"))


def test_hold_window_expiry_with_injected_clock(pipeline: Pipeline, clock: Clock):
    counted: list[UsageRecord] = []
    pipeline.add_listener(counted.append)
    result = pipeline.ingest_otlp(request((SDK, span(41, 40))))  # parent 40 is a non-usage span
    assert result.records_counted == 0
    clock.now += 1.9
    pipeline.flush()
    assert counted == []
    clock.now += 0.2
    pipeline.flush()
    assert [r.span_id for r in counted] == [41] and requests_total(pipeline) == 1
    # its parent's usage span arriving after the window is a duplicate, not a second call
    pipeline.ingest_otlp(request((OURS, span(40, 0))))
    assert requests_total(pipeline) == 1 and dropped(pipeline) == 1 and len(counted) == 1


def test_foreign_root_counts_at_once_and_retries_are_dropped(pipeline: Pipeline):
    req = request((FOREIGN, span(50, 0)))
    assert pipeline.ingest_otlp(req).records_counted == 1
    assert pipeline.ingest_otlp(req).records_counted == 0  # an exporter retry of the same span
    assert requests_total(pipeline) == 1 and dropped(pipeline) == 1


def test_same_span_ids_in_different_traces_are_different_calls(pipeline: Pipeline):
    pipeline.ingest_otlp(request((OURS, span(60, 1, trace=1)), (OURS, span(60, 1, trace=2))))
    assert requests_total(pipeline) == 2


def test_held_overflow_counts_at_once_rather_than_dropping(clock: Clock):
    p = Pipeline(
        dedupe=DedupeConfig(max_held_spans=2), registry=CollectorRegistry(), clock=clock, price=price
    )
    results = [p.ingest_otlp(request((SDK, span(70 + i, 1)))).records_counted for i in range(4)]
    assert results == [0, 0, 1, 1]
    p.flush(float("inf"))
    assert requests_total(p) == 4


def test_malformed_spans_are_rejected_and_earlier_counts_stay(pipeline: Pipeline):
    pipeline.ingest_otlp(request((OURS, span(80, 1))))
    bad = request(
        (OURS, span(81, 1, gen_ai__usage__input_tokens=-3)),
        (OURS, span(82, 1, gen_ai__usage__output_tokens="lots")),
        (OURS, span(83, 1)),
    )
    result = pipeline.ingest_otlp(bad)
    assert (result.spans_received, result.records_counted, result.spans_rejected) == (3, 1, 2)
    assert result.reasons[0].startswith("negative_token_count: gen_ai.usage.input_tokens")
    assert result.reasons[1].startswith("invalid_token_value: gen_ai.usage.output_tokens")
    pipeline.reject_payload("undecodable_payload")
    pipeline.reject_payload("something a receiver made up")
    m = metrics(pipeline)
    assert requests_total(pipeline) == 2
    assert m["otel_tokens_spans_rejected_total{reason=negative_token_count}"] == 1
    assert m["otel_tokens_spans_rejected_total{reason=invalid_token_value}"] == 1
    assert m["otel_tokens_spans_rejected_total{reason=undecodable_payload}"] == 1
    assert m["otel_tokens_spans_rejected_total{reason=invalid_payload}"] == 1


def test_listeners_see_every_counted_record_once(pipeline: Pipeline):
    seen: list[int] = []
    pipeline.add_listener(lambda r: seen.append(r.span_id))
    pipeline.ingest_otlp(request((SDK, span(91, 90)), (OURS, span(90, 1))))
    without_span = [UsageRecord(provider="openai", request_model="gpt-4o", ours=True) for _ in range(2)]
    assert (
        pipeline.ingest_records(without_span).records_counted == 2
    )  # no span ids: nothing to deduplicate against
    assert seen == [90, 0, 0]


def test_a_failing_listener_never_breaks_ingest(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTEL_TOKENS_RAISE_INTERNAL_ERRORS", "0")

    def boom(record: UsageRecord) -> None:
        raise RuntimeError("ledger down")

    pipeline.add_listener(boom)
    assert pipeline.ingest_otlp(request((OURS, span(95, 1)))).records_counted == 1
    assert requests_total(pipeline) == 1


def test_concurrent_ingest_is_exact(pipeline: Pipeline):
    def work(thread: int) -> None:
        for i in range(200):
            pipeline.ingest_otlp(
                request(
                    (OURS, span(i + 1, 0, trace=thread + 1)), (SDK, span(10_000 + i, i + 1, trace=thread + 1))
                )
            )

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pipeline.flush(float("inf"))
    m = metrics(pipeline)
    assert requests_total(pipeline) == 1200 and dropped(pipeline) == 1200
    assert sum(v for k, v in m.items() if k.startswith("llm_tokens_total")) == 1200 * 110
    assert m["otel_tokens_spans_received_total{}"] == 2400


def test_a_failing_listener_skips_no_record_and_no_other_listener(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TOKENS_RAISE_INTERNAL_ERRORS", "0")
    seen: list[int] = []

    def flaky(record: UsageRecord) -> None:
        if record.span_id == 96:
            raise RuntimeError("ledger down")

    pipeline.add_listener(flaky)
    pipeline.add_listener(lambda r: seen.append(r.span_id))
    pipeline.ingest_otlp(request((OURS, span(96, 1)), (OURS, span(97, 2))))
    assert seen == [96, 97]
    assert requests_total(pipeline) == 2


def test_dedupe_memory_is_bounded_and_forgets_the_oldest_spans(clock: Clock):
    p = Pipeline(
        dedupe=DedupeConfig(max_remembered_spans=2), registry=CollectorRegistry(), clock=clock, price=price
    )
    for span_id in (1, 2, 3):
        p.ingest_otlp(request((OURS, span(span_id))))
    assert p.ingest_otlp(request((OURS, span(3)))).records_counted == 0  # remembered: a retry
    assert p.ingest_otlp(request((OURS, span(1)))).records_counted == 1  # forgotten: counted again
    assert requests_total(p) == 4 and dropped(p) == 1


def test_records_built_in_process_meet_the_rules_a_spans_record_meets(pipeline: Pipeline):
    """ingest_records skips extraction, not its rules: an unpriced record is priced here (and marked
    if that fails), contradicting counts are made consistent and counted, reported enrichment
    failures are counted, and a call above the per-call ceiling is rejected."""
    shared = UsageRecord("openai", "gpt-4o", tokens=TokenCounts(100, 5, reasoning=20), span_id=1, trace_id=1)
    records = [
        shared,  # unpriced, reasoning above output
        UsageRecord("openai", "gpt-4o", tokens=TokenCounts(7, 3), cost_usd=0.5, span_id=2, trace_id=1,
                    failed_steps=(sc.ENRICHMENT_ATTRIBUTION,)),
        UsageRecord("openai", "gpt-4o", tokens=TokenCounts(10**8, 1), cost_usd=0.1, span_id=3, trace_id=1),
    ]  # fmt: skip
    result = pipeline.ingest_records(records)
    assert (result.spans_received, result.records_counted, result.spans_rejected) == (3, 2, 1)
    assert result.reasons[0].startswith("token_count_too_large")
    m = metrics(pipeline)
    labels = "agent=unknown,model=gpt-4o,provider=openai,task=unknown"
    assert m[f"llm_cost_usd_total{{{labels}}}"] == 0.5 + TokenCounts(100, 25, reasoning=20).total / 1000
    assert m[f"llm_tokens_total{{{labels},token_type=output}}"] == 5 + 3  # output raised to hold reasoning
    assert m["otel_tokens_records_clamped_total{reason=reasoning_exceeds_output}"] == 1
    assert m["otel_tokens_enrichment_failures_total{step=attribution}"] == 1
    assert m["otel_tokens_spans_rejected_total{reason=token_count_too_large}"] == 1
    assert shared.cost_usd is None and shared.tokens.output == 5, "other sinks' record left as it was"


def test_a_record_whose_pricing_fails_here_is_counted_and_marked(clock: Clock):
    def broken(provider: str, model: str, tokens: TokenCounts) -> float | None:
        raise RuntimeError("no price table")

    seen: list[UsageRecord] = []
    p = Pipeline(registry=CollectorRegistry(), clock=clock, price=broken)
    p.add_listener(seen.append)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_TOKENS_RAISE_INTERNAL_ERRORS", "0")
        p.ingest_records([UsageRecord("openai", "gpt-4o", tokens=TokenCounts(10, 2))])
    (record,) = seen
    assert record.cost_usd is None and record.failed_steps == (sc.ENRICHMENT_PRICING,)
    assert requests_total(p) == 1
