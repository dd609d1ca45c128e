"""Span → UsageRecord for every dialect we read, over real OTLP protobuf and real SDK spans."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from otel_tokens import semconv as sc
from otel_tokens.extract import Extractor, Rejection, record_from_attributes
from otel_tokens.pipeline import _Batch
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

PRICES: list[tuple[str, str]] = []


def fake_price(provider: str, model: str, tokens: TokenCounts) -> float | None:
    """$1 per 1000 disjoint tokens, only for models starting with "gpt" or "claude"."""
    PRICES.append((provider, model))
    return tokens.total / 1000 if model.startswith(("gpt", "claude")) else None


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=value)


def otlp_span(attrs: dict[str, Any], *, span_id: int = 2, parent: int = 0, error: bool = False) -> Span:
    return Span(
        trace_id=(1).to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name="chat",
        start_time_unix_nano=10,
        end_time_unix_nano=20,
        attributes=[KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def extract(attrs: dict[str, Any], **kw: Any) -> UsageRecord | Rejection | None:
    return Extractor(price=fake_price).from_otlp_span(otlp_span(attrs, **kw))


def record(attrs: dict[str, Any], **kw: Any) -> UsageRecord:
    out = extract(attrs, **kw)
    assert isinstance(out, UsageRecord), out
    return out


def test_ours_semconv_keeps_meaning_and_uses_span_cost():
    r = record(
        {
            sc.GEN_AI_PROVIDER_NAME: "openai",
            sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
            sc.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 1000,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 200,
            sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 300,
            sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: 100,
            sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 50,
            sc.OTEL_TOKENS_COST_USD: 0.25,
            sc.OTEL_TOKENS_MARKER: True,
            sc.GEN_AI_AGENT_NAME: "coder",
            sc.OTEL_TOKENS_TASK: "fix-bug",
            sc.OTEL_TOKENS_TASK_ID: "run-17",
            sc.OTEL_TOKENS_USER: "alice",
            sc.GEN_AI_CONVERSATION_ID: "conv-1",
            sc.OTEL_TOKENS_STEP: "plan",
            sc.GEN_AI_WORKFLOW_NAME: "triage",
        },
        parent=7,
    )
    assert r.tokens == TokenCounts(1000, 200, 300, 100, 50)
    assert r.tokens.disjoint() == {
        "input": 600,
        "output": 150,
        "cache_read": 300,
        "cache_write": 100,
        "reasoning": 50,
    }
    assert (r.cost_usd, r.ours, r.model, r.response_model) == (0.25, True, "gpt-4o", "gpt-4o-2024-08-06")
    a = r.attribution
    assert (a.agent, a.task, a.task_id, a.user, a.session, a.step, a.workflow) == (
        "coder", "fix-bug", "run-17", "alice", "conv-1", "plan", "triage",
    )  # fmt: skip
    assert (r.trace_id, r.span_id, r.parent_span_id, r.start_time_ns, r.end_time_ns) == (1, 2, 7, 10, 20)
    assert r.status == "ok"


def test_anthropic_sdk_span_input_already_includes_cache():
    # anthropic/lib/_tracing: input_tokens + cache_read + cache_creation, cache_write under the new name
    r = record(
        {
            sc.GEN_AI_PROVIDER_NAME: "anthropic",
            sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4-5",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 1400,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 80,
            sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 300,
            sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: 100,
        }
    )
    assert r.tokens == TokenCounts(1400, 80, 300, 100, 0)
    assert r.tokens.disjoint()["input"] == 1000
    assert r.ours is False


def test_raw_anthropic_input_smaller_than_cache_is_normalised():
    r = record(
        {
            sc.GEN_AI_SYSTEM: "Anthropic",
            sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4-5",
            sc.OPENLLMETRY_PROMPT_TOKENS: 10,
            sc.OPENLLMETRY_COMPLETION_TOKENS: 40,
            sc.OPENLLMETRY_CACHE_READ_INPUT_TOKENS: 500,
            sc.OPENLLMETRY_CACHE_CREATION_INPUT_TOKENS: 0,
        }
    )
    assert r.provider == "anthropic"
    assert r.tokens == TokenCounts(510, 40, 500, 0, 0)


@pytest.mark.parametrize(("prompt", "total", "expected_input"), [(1000, 1300, 1200), (1200, 1300, 1200)])
def test_openllmetry_total_tells_raw_from_normalised(prompt: int, total: int, expected_input: int):
    r = record(
        {
            sc.GEN_AI_SYSTEM: "anthropic",
            sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4-5",
            sc.OPENLLMETRY_PROMPT_TOKENS: prompt,
            sc.OPENLLMETRY_COMPLETION_TOKENS: 100,
            sc.OPENLLMETRY_CACHE_READ_INPUT_TOKENS: 200,
            sc.OPENLLMETRY_TOTAL_TOKENS: total,
        }
    )
    assert r.tokens.input == expected_input
    assert r.tokens.total == 1300


def test_openllmetry_association_properties_attribute():
    r = record(
        {
            sc.GEN_AI_SYSTEM: "openai",
            sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
            sc.OPENLLMETRY_PROMPT_TOKENS: 100,
            sc.OPENLLMETRY_COMPLETION_TOKENS: 5,
            sc.OPENLLMETRY_ASSOCIATION_PREFIX + "user_id": "bob",
            sc.OPENLLMETRY_ASSOCIATION_PREFIX + "session_id": "s-9",
            sc.OPENLLMETRY_WORKFLOW_NAME: "summarise",
        }
    )
    assert (r.attribution.user, r.attribution.session, r.attribution.workflow) == ("bob", "s-9", "summarise")
    assert r.tokens == TokenCounts(100, 5)


def test_openinference_dialect():
    r = record(
        {
            sc.OPENINFERENCE_PROVIDER: "openai",
            sc.OPENINFERENCE_MODEL_NAME: "gpt-4o",
            sc.OPENINFERENCE_PROMPT_TOKENS: 900,
            sc.OPENINFERENCE_COMPLETION_TOKENS: 30,
            sc.OPENINFERENCE_CACHE_READ: 512,
            sc.SESSION_ID: "sess",
            sc.USER_ID: "u1",
            sc.GEN_AI_AGENT_ID: "agent-7",
        }
    )
    assert (r.provider, r.model, r.tokens) == ("openai", "gpt-4o", TokenCounts(900, 30, 512))
    assert (r.attribution.session, r.attribution.user, r.attribution.agent) == ("sess", "u1", "agent-7")


def test_our_names_win_over_fallbacks():
    r = record(
        {
            sc.GEN_AI_USAGE_INPUT_TOKENS: 1,
            sc.OPENLLMETRY_PROMPT_TOKENS: 999,
            sc.USER_ID: "fallback",
            sc.OTEL_TOKENS_USER: "ours",
            sc.GEN_AI_SYSTEM: "old",
            sc.GEN_AI_PROVIDER_NAME: "new",
        }
    )
    assert (r.tokens.input, r.attribution.user, r.provider) == (1, "ours", "new")


def test_only_a_total_counts_as_input_and_missing_names_are_unknown():
    r = record({sc.OPENLLMETRY_TOTAL_TOKENS: 42})
    assert (r.tokens, r.provider, r.model, r.operation) == (TokenCounts(42), "unknown", "unknown", "chat")


def test_pricing_prefers_response_model_and_falls_back_to_request_model():
    PRICES.clear()
    base = {sc.GEN_AI_PROVIDER_NAME: "openai", sc.GEN_AI_USAGE_INPUT_TOKENS: 1000}
    r = record({**base, sc.GEN_AI_REQUEST_MODEL: "gpt-4o", sc.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06"})
    assert PRICES == [("openai", "gpt-4o-2024-08-06")] and r.cost_usd == 1.0 and r.model == "gpt-4o"
    PRICES.clear()
    r = record({**base, sc.GEN_AI_REQUEST_MODEL: "gpt-4o", sc.GEN_AI_RESPONSE_MODEL: "snapshot-x"})
    assert PRICES == [("openai", "snapshot-x"), ("openai", "gpt-4o")] and r.cost_usd == 1.0
    r = record({**base, sc.GEN_AI_REQUEST_MODEL: "my-finetune"})
    assert r.cost_usd is None


def test_default_price_book_prices_known_models():
    attrs = {sc.GEN_AI_PROVIDER_NAME: "openai", sc.GEN_AI_REQUEST_MODEL: "gpt-4o"}
    out = Extractor().from_otlp_span(otlp_span({**attrs, sc.GEN_AI_USAGE_INPUT_TOKENS: 1000}))
    assert isinstance(out, UsageRecord) and out.cost_usd is not None and out.cost_usd > 0


def test_error_status_and_error_type():
    assert record({sc.GEN_AI_USAGE_INPUT_TOKENS: 0}, error=True).status == "error"
    r = record({sc.GEN_AI_USAGE_INPUT_TOKENS: 0, sc.ERROR_TYPE: "RateLimitError"})
    assert (r.status, r.error_type) == ("error", "RateLimitError")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-5, "negative_token_count"),
        ("12", "invalid_token_value"),
        (True, "invalid_token_value"),
        (1.5, "invalid_token_value"),
        ([1, 2], "invalid_token_value"),
        (10**12, "token_count_too_large"),
    ],
)
def test_malformed_token_values_are_rejected_with_reason(value: Any, reason: str):
    out = extract({sc.GEN_AI_USAGE_INPUT_TOKENS: 10, sc.GEN_AI_USAGE_OUTPUT_TOKENS: value})
    assert isinstance(out, Rejection) and out.reason == reason
    assert sc.GEN_AI_USAGE_OUTPUT_TOKENS in out.message()


@pytest.mark.parametrize("cost", [-1.0, float("nan"), float("inf"), "free", 1e9])
def test_malformed_cost_is_rejected(cost: Any):
    out = extract({sc.GEN_AI_USAGE_INPUT_TOKENS: 10, sc.OTEL_TOKENS_COST_USD: cost})
    assert isinstance(out, Rejection) and out.reason == "invalid_cost"


def test_integral_float_tokens_are_accepted():
    assert record({sc.GEN_AI_USAGE_INPUT_TOKENS: 12.0}).tokens.input == 12


def test_spans_without_usage_are_skipped():
    assert extract({"http.method": "GET", sc.GEN_AI_REQUEST_MODEL: "gpt-4o", sc.USER_ID: "x"}) is None
    assert record_from_attributes({}) is None


def test_outsider_labels_are_truncated():
    r = record(
        {sc.GEN_AI_USAGE_INPUT_TOKENS: 1, sc.GEN_AI_AGENT_NAME: "a" * 10_000, sc.GEN_AI_REQUEST_MODEL: 7}
    )
    assert r.attribution.agent == "a" * 128 and r.model == "7"


def _request(spans: list[Span], resource: dict[str, Any], scope: str) -> Any:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key=k, value=any_value(v)) for k, v in resource.items()]
                ),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=spans)],
            )
        ]
    )


def test_resource_attribution_fills_gaps_and_service_name_is_only_the_last_resort():
    spans = [
        otlp_span({sc.GEN_AI_USAGE_INPUT_TOKENS: 1}, span_id=2),
        otlp_span({sc.GEN_AI_USAGE_INPUT_TOKENS: 1, sc.GEN_AI_AGENT_NAME: "span-agent"}, span_id=3),
        otlp_span({"http.method": "GET"}, span_id=4),
    ]
    batch = _Batch()  # the pipeline's own batch: records, rejections, counts
    result = batch.result
    resource = {"service.name": "svc", sc.GEN_AI_AGENT_NAME: "res-agent", sc.OTEL_TOKENS_TASK: "t"}
    Extractor(price=fake_price).extract_otlp(_request(spans, resource, sc.INSTRUMENTATION_SCOPE), batch)
    assert result.spans_received == 3
    assert [(r.attribution.agent, r.attribution.task, r.ours) for r in batch.records] == [
        ("res-agent", "t", True),
        ("span-agent", "t", True),
    ]
    assert [r.agent_from_resource for r in batch.records] == [True, False]
    batch.records.clear()
    # a service is not an agent unless nothing else names one: then service.name is the fallback
    # (configurable; None turns it off), but never the SDK's made-up `unknown_service...`
    off = Extractor(price=fake_price, agent_fallback_attribute=None)
    off.extract_otlp(_request(spans[:1], {"service.name": "svc"}, "x"), batch)
    assert [(r.attribution.agent, r.ours) for r in batch.records] == [(None, False)]
    batch.records.clear()
    on = Extractor(price=fake_price)
    on.extract_otlp(_request(spans[:1], {"service.name": "svc"}, "x"), batch)
    on.extract_otlp(_request(spans[:1], {"service.name": "unknown_service:python"}, "x"), batch)
    assert [(r.attribution.agent, r.agent_from_resource) for r in batch.records] == [
        ("svc", True),
        (None, False),
    ]


def test_sdk_encoder_roundtrip_and_readable_span_adapter_agree():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({sc.OTEL_TOKENS_USER: "res-user"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("some.instrumentation")
    with tracer.start_as_current_span("agent"), tracer.start_as_current_span("chat claude", attributes={
        sc.GEN_AI_PROVIDER_NAME: "anthropic",
        sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4-5",
        sc.GEN_AI_USAGE_INPUT_TOKENS: 1500,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 20,
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 1000,
        sc.GEN_AI_RESPONSE_FINISH_REASONS: ("end_turn",),
        sc.GEN_AI_AGENT_NAME: "coder",
    }) as span:  # fmt: skip
        span.set_status(StatusCode.ERROR)
    finished = exporter.get_finished_spans()
    batch = _Batch()  # the pipeline's own batch: records, rejections, counts
    result = batch.result
    extractor = Extractor(price=fake_price)
    extractor.extract_otlp(encode_spans(finished), batch)
    direct = [extractor.from_readable_span(s) for s in finished]
    assert result.spans_received == 2 and len(batch.records) == 1
    assert direct[0] == batch.records[0] and direct[1] is None
    assert not batch.rejected
    r = batch.records[0]
    assert (r.tokens, r.status, r.attribution.agent, r.attribution.user) == (
        TokenCounts(1500, 20, 1000), "error", "coder", "res-user",
    )  # fmt: skip
    assert r.parent_span_id == finished[1].context.span_id and r.span_id == finished[0].context.span_id


def test_every_field_of_an_otlp_record():
    """Pins the whole record the OTLP adapter builds (it constructs records positionally)."""
    r = record(
        {
            sc.GEN_AI_SYSTEM: "OpenAI",
            sc.OPENINFERENCE_MODEL_NAME: "gpt-4o",
            sc.GEN_AI_OPERATION_NAME: "text_completion",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 10,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 5,
            sc.OTEL_TOKENS_ESTIMATED: True,
            sc.ERROR_TYPE: "timeout",
            sc.OTEL_TOKENS_STEP: 3,
            sc.USER_ID: "bob",
        },
        span_id=4,
    )
    assert r == UsageRecord(
        provider="openai",
        request_model="gpt-4o",
        operation="text_completion",
        response_model=None,
        tokens=TokenCounts(10, 5),
        estimated=True,
        cost_usd=0.015,
        attribution=Attribution(user="bob", step="3"),
        status="error",
        error_type="timeout",
        trace_id=1,
        span_id=4,
        parent_span_id=None,
        start_time_ns=10,
        end_time_ns=20,
        ours=False,
    )


def test_a_usage_name_with_an_empty_value_still_makes_a_record():
    """Usage is decided by the attribute names present; an empty AnyValue counts as zero tokens."""
    span = otlp_span({sc.GEN_AI_REQUEST_MODEL: "gpt-4o"})
    span.attributes.append(KeyValue(key=sc.GEN_AI_USAGE_INPUT_TOKENS, value=AnyValue()))
    out = Extractor(price=fake_price).from_otlp_span(span)
    assert isinstance(out, UsageRecord) and out.tokens == TokenCounts()


def test_the_first_of_duplicate_names_wins_and_better_names_win_in_any_order():
    span = otlp_span({sc.OPENLLMETRY_PROMPT_TOKENS: 7, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 1})
    span.attributes.append(KeyValue(key=sc.GEN_AI_USAGE_INPUT_TOKENS, value=AnyValue(int_value=40)))
    span.attributes.append(KeyValue(key=sc.GEN_AI_USAGE_INPUT_TOKENS, value=AnyValue(int_value=99)))
    out = Extractor(price=fake_price).from_otlp_span(span)
    assert isinstance(out, UsageRecord) and out.tokens.input == 40


# --- hostile numbers: a per-call ceiling, self-contradicting counts made consistent and counted -----
def _clamped(extractor: Extractor) -> dict[str, int]:
    return extractor.stats.snapshot()[0]


def test_a_call_above_the_per_call_ceiling_is_rejected_as_too_large():
    """Each count is under MAX_TOKENS, but one call of 600M input + 500M output is not a real call."""
    attrs = {sc.GEN_AI_USAGE_INPUT_TOKENS: 600_000_000, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 500_000_000}
    out = Extractor(price=fake_price).from_otlp_span(otlp_span(attrs))
    assert isinstance(out, Rejection) and out.reason == "token_count_too_large"
    assert "1100000000 tokens in one call" in out.message()


def test_the_ceiling_is_configurable_and_inclusive():
    extractor = Extractor(price=fake_price, max_tokens_per_call=1000)
    at = extractor.from_otlp_span(
        otlp_span({sc.GEN_AI_USAGE_INPUT_TOKENS: 900, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 100})
    )
    above = extractor.from_otlp_span(
        otlp_span({sc.GEN_AI_USAGE_INPUT_TOKENS: 901, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 100})
    )
    assert isinstance(at, UsageRecord) and at.tokens.input == 900
    assert isinstance(above, Rejection) and above.reason == "token_count_too_large"
    # cache tokens normalised into the input count toward the ceiling too
    cached = {sc.GEN_AI_USAGE_INPUT_TOKENS: 10, sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 995}
    assert isinstance(extractor.from_otlp_span(otlp_span(cached)), Rejection)
    with pytest.raises(ValueError, match="max_tokens_per_call"):
        Extractor(max_tokens_per_call=0)


def test_the_ceiling_is_bounded_reason_counted_by_the_pipeline():
    from prometheus_client import CollectorRegistry

    from otel_tokens import metric_names as mn
    from otel_tokens.pipeline import Pipeline

    pipe = Pipeline(registry=CollectorRegistry(), price=fake_price, max_tokens_per_call=5000)
    huge = {sc.GEN_AI_USAGE_INPUT_TOKENS: 4000, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 1001}
    fine = {sc.GEN_AI_USAGE_INPUT_TOKENS: 4000, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 1000}
    result = pipe.ingest_otlp(_request([otlp_span(huge), otlp_span(fine, span_id=3)], {}, "x"))
    assert (result.spans_received, result.records_counted, result.spans_rejected) == (2, 1, 1)
    rejected = pipe.registry.get_sample_value(mn.SPANS_REJECTED, {mn.REASON: "token_count_too_large"})
    assert rejected == 1


def test_reasoning_above_output_raises_output_to_include_it_and_is_counted():
    extractor = Extractor(price=fake_price)
    attrs = {
        sc.GEN_AI_USAGE_INPUT_TOKENS: 100,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 40,  # the visible answer only
        sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 500,  # thoughts, counted apart
    }
    r = extractor.from_otlp_span(otlp_span(attrs))
    assert isinstance(r, UsageRecord)
    assert (r.tokens.output, r.tokens.reasoning) == (540, 500)
    assert r.tokens.disjoint()["output"] + r.tokens.disjoint()["reasoning"] == 540  # nothing lost
    assert _clamped(extractor)["reasoning_exceeds_output"] == 1
    # consistent counts are left alone and not counted
    extractor.from_otlp_span(otlp_span({**attrs, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 600}))
    assert _clamped(extractor)["reasoning_exceeds_output"] == 1


def test_cache_above_input_is_normalised_and_counted():
    extractor = Extractor(price=fake_price)
    r = extractor.from_otlp_span(
        otlp_span({sc.GEN_AI_USAGE_INPUT_TOKENS: 10, sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 300})
    )
    assert isinstance(r, UsageRecord) and r.tokens.input == 310
    assert r.tokens.cache_read + r.tokens.cache_write <= r.tokens.input
    assert _clamped(extractor)["cache_exceeds_input"] == 1


def test_one_hour_cache_writes_are_read_and_cut_to_the_cache_writes():
    extractor = Extractor(price=fake_price)
    base = {
        sc.GEN_AI_USAGE_INPUT_TOKENS: 5000,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
        sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: 4000,
    }
    r = extractor.from_otlp_span(otlp_span({**base, sc.OTEL_TOKENS_CACHE_WRITE_1H: 3000}))
    assert isinstance(r, UsageRecord) and (r.tokens.cache_write, r.tokens.cache_write_1h) == (4000, 3000)
    r = extractor.from_otlp_span(otlp_span({**base, sc.OTEL_TOKENS_CACHE_WRITE_1H: 9000}))
    assert isinstance(r, UsageRecord) and r.tokens.cache_write_1h == 4000
    assert _clamped(extractor)["cache_write_1h_exceeds_cache_write"] == 1
    out = extractor.from_otlp_span(otlp_span({**base, sc.OTEL_TOKENS_CACHE_WRITE_1H: -1}))
    assert isinstance(out, Rejection) and out.reason == "negative_token_count"


@pytest.mark.parametrize(
    "attrs",
    [
        {
            sc.GEN_AI_USAGE_INPUT_TOKENS: 10,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 10**9,
            sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 10**9,
        },
        {sc.GEN_AI_USAGE_INPUT_TOKENS: 7, sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 10**9},
        {sc.GEN_AI_USAGE_INPUT_TOKENS: 1, sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 10**9},
    ],
)
def test_normalising_can_never_carry_a_call_past_the_ceiling(attrs: dict[str, Any]):
    out = Extractor(price=fake_price).from_otlp_span(otlp_span(attrs))
    assert isinstance(out, Rejection) and out.reason == "token_count_too_large"


# --- the right rate, read back from spans ------------------------------------------------------------
def _priced_by_the_collector(attrs: dict[str, Any]) -> UsageRecord:
    """Through the collector's own pipeline and default price book (no cost on the span)."""
    from prometheus_client import CollectorRegistry

    from otel_tokens.pipeline import Pipeline

    pipe = Pipeline(registry=CollectorRegistry(), config=None)
    seen: list[UsageRecord] = []
    pipe.add_listener(seen.append)
    pipe.ingest_otlp(_request([otlp_span(attrs)], {}, sc.INSTRUMENTATION_SCOPE))
    (only,) = seen
    return only


@pytest.mark.parametrize(
    "tier_key", [sc.OPENAI_RESPONSE_SERVICE_TIER, sc.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER]
)
@pytest.mark.parametrize("tier", ["flex", "priority", "default"])
def test_collector_prices_the_service_tier_on_the_span_as_genai_prices_does(tier_key: str, tier: str):
    from genai_prices import Usage, calc_price

    r = _priced_by_the_collector(
        {
            sc.GEN_AI_PROVIDER_NAME: "openai",
            sc.GEN_AI_REQUEST_MODEL: "gpt-5",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 100_000,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 10_000,
            tier_key: tier,
        }
    )
    usage = Usage(input_tokens=100_000, output_tokens=10_000)
    expected = calc_price(usage, "gpt-5", provider_id="openai", price_context={"service_tier": tier})
    assert r.service_tier == tier
    assert r.cost_usd == pytest.approx(float(expected.total_price), rel=1e-12)
    assert r.cost_usd == pytest.approx({"flex": 0.1125, "priority": 0.45, "default": 0.225}[tier])


def test_collector_prices_one_hour_cache_writes_at_their_rate():
    r = _priced_by_the_collector(
        {
            sc.GEN_AI_PROVIDER_NAME: "anthropic",
            sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4-5",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 4100,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 70,
            sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: 4000,
            sc.OTEL_TOKENS_CACHE_WRITE_1H: 4000,
        }
    )
    assert r.cost_usd == pytest.approx(0.02535, abs=1e-12)


def test_enrichment_failures_reported_by_a_span_are_kept_and_counted():
    from prometheus_client import CollectorRegistry

    from otel_tokens import metric_names as mn
    from otel_tokens.pipeline import Pipeline

    pipe = Pipeline(registry=CollectorRegistry(), price=fake_price)
    attrs = {
        sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
        sc.GEN_AI_USAGE_INPUT_TOKENS: 10,
        sc.OTEL_TOKENS_ENRICHMENT_FAILED: ["estimation", "pricing", "no-such-step", "estimation"],
    }
    seen: list[UsageRecord] = []
    pipe.add_listener(seen.append)
    pipe.ingest_otlp(_request([otlp_span(attrs)], {}, sc.INSTRUMENTATION_SCOPE))
    assert seen[0].failed_steps == ("estimation", "pricing")
    assert seen[0].tokens.input == 10
    value = pipe.registry.get_sample_value
    assert value(mn.ENRICHMENT_FAILURES, {mn.STEP: "estimation"}) == 1
    assert value(mn.ENRICHMENT_FAILURES, {mn.STEP: "pricing"}) == 1
    assert value(mn.ENRICHMENT_FAILURES, {mn.STEP: "attribution"}) == 0
    assert value(mn.RECORDS_CLAMPED, {mn.REASON: "reasoning_exceeds_output"}) == 0


def test_the_collector_ceiling_is_a_config_key(tmp_path: Any):
    """`otlp.max_tokens_per_call` (file, env, flag) reaches the collector's extractor."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from otel_tokens import settings
    from otel_tokens.collector import CollectorService
    from otel_tokens.collector.config import ConfigError, load_config

    path = tmp_path / "collector.yaml"
    path.write_text("otlp:\n  max_tokens_per_call: 1000\n")
    config = load_config(path=str(path), env={})
    assert config.max_tokens_per_call == 1000
    assert load_config(env={settings.ENV_COLLECTOR_MAX_TOKENS_PER_CALL: "50"}).max_tokens_per_call == 50
    path.write_text("otlp:\n  max_tokens_per_call: -3\n")
    with pytest.raises(ConfigError, match=r"collector.yaml:2: otlp.max_tokens_per_call: expected a positive"):
        load_config(path=str(path), env={})
    service = CollectorService(config)  # not started: no ports opened
    request: ExportTraceServiceRequest = _request(
        [otlp_span({sc.GEN_AI_USAGE_INPUT_TOKENS: 990, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 11})], {}, "x"
    )
    result = service.pipeline.ingest_otlp(request)
    assert result.spans_rejected == 1 and "token_count_too_large" in result.reasons[0]
