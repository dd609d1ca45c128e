"""The real `anthropic` SDK, instrumented, against the fake provider's Anthropic wire format.

What a user checks: one span per call with the provider's token counts in semconv meaning (input
includes cache), the price genai-prices gives, the attribution in force; the SDK behaving exactly as
without us (same objects, same exceptions); and span totals equal to what the provider reported.

Runs against the current SDK (2.x, `.venv`) and the previous major (0.x, `.venv-compat`); what 0.x
lacks is skipped by feature detection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam, TextBlockParam
from genai_prices import Usage, calc_price
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import otel_tokens
from otel_tokens import semconv as sc
from otel_tokens.demo.fake_provider import FakeProvider, Fault
from otel_tokens.record import TokenCounts
from otel_tokens.tokencount import count_message_tokens
from tests.sdk_responses import BODY_READS, parse_async, read_body

MODEL = "claude-sonnet-4-6"
SDK_SCOPE = "com.anthropic.sdk.python"
#: anthropic >= 1.14 emits its own spans and takes an `open_telemetry` client option; 0.x does neither.
SDK_HAS_OWN_SPANS = "open_telemetry" in inspect.signature(anthropic.Anthropic.__init__).parameters
needs_sdk_spans = pytest.mark.skipif(
    not SDK_HAS_OWN_SPANS, reason=f"anthropic {anthropic.__version__} emits no OpenTelemetry spans of its own"
)
CACHED_SYSTEM: list[TextBlockParam] = [
    {
        "type": "text",
        "text": "You are a careful research assistant. " * 40,
        "cache_control": {"type": "ephemeral"},
    }
]
HELLO: list[MessageParam] = [{"role": "user", "content": "Summarise the plot of Hamlet in one line"}]


ATTRIBUTION_ATTRIBUTES = {
    sc.GEN_AI_AGENT_NAME,
    sc.OTEL_TOKENS_TASK,
    sc.OTEL_TOKENS_TASK_ID,
    sc.OTEL_TOKENS_USER,
    sc.GEN_AI_CONVERSATION_ID,
    sc.OTEL_TOKENS_STEP,
    sc.GEN_AI_WORKFLOW_NAME,
}


# --- fixtures and helpers -----------------------------------------------------------------------
def client_options(fake: FakeProvider, tracer_provider: TracerProvider, **extra: Any) -> dict[str, Any]:
    """Retries off (a fault is seen once); the SDK's own spans go to the test's tracer provider."""
    options: dict[str, Any] = {"base_url": fake.anthropic_base_url, "api_key": "test-key", "max_retries": 0}
    if SDK_HAS_OWN_SPANS:
        options["open_telemetry"] = {"tracer_provider": tracer_provider}
    return {**options, **extra}


@pytest.fixture
def client(fake_provider: FakeProvider, instrumented: TracerProvider) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(**client_options(fake_provider, instrumented)) as c:
        yield c


@pytest.fixture
def aclient_options(fake_provider: FakeProvider, instrumented: TracerProvider) -> dict[str, Any]:
    """An AsyncAnthropic is made inside each test's event loop, from these options."""
    return client_options(fake_provider, instrumented)


def scope_of(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def int_attr(span: ReadableSpan, key: str) -> int:
    value = (span.attributes or {}).get(key, 0)
    assert isinstance(value, int), (key, value)
    return value


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """Our LLM call spans (not the task spans `attribute(task_id=...)` opens, also from our scope)."""
    return [
        s
        for s in exporter.get_finished_spans()
        if scope_of(s) == sc.INSTRUMENTATION_SCOPE and sc.OTEL_TOKENS_TASK_SCOPE not in (s.attributes or {})
    ]


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = ours(exporter)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def span_tokens(span: ReadableSpan) -> TokenCounts:
    return TokenCounts(
        input=int_attr(span, sc.GEN_AI_USAGE_INPUT_TOKENS),
        output=int_attr(span, sc.GEN_AI_USAGE_OUTPUT_TOKENS),
        cache_read=int_attr(span, sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        cache_write=int_attr(span, sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        cache_write_1h=int_attr(span, sc.OTEL_TOKENS_CACHE_WRITE_1H),
    )


def genai_prices_cost(model: str, tokens: TokenCounts) -> float:
    usage = Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cache_read_tokens=tokens.cache_read,
        cache_write_tokens=tokens.cache_write,
        cache_write_1h_tokens=tokens.cache_write_1h,
    )
    return float(calc_price(usage, model, provider_id="anthropic").total_price)


def assert_ok_call_span(span: ReadableSpan, fake: FakeProvider, *, stream: bool = False) -> None:
    """The span of one successful call, attribute by attribute, against the provider's own ledger."""
    (reported,) = fake.reported
    tokens = reported.tokens
    a = dict(span.attributes or {})
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert a.pop(sc.GEN_AI_PROVIDER_NAME) == "anthropic"
    assert a.pop(sc.GEN_AI_OPERATION_NAME) == "chat"
    assert a.pop(sc.GEN_AI_REQUEST_MODEL) == MODEL
    assert a.pop(sc.GEN_AI_RESPONSE_MODEL) == MODEL
    assert a.pop(sc.GEN_AI_REQUEST_MAX_TOKENS) == 256
    assert a.pop(sc.GEN_AI_USAGE_INPUT_TOKENS) == tokens.input
    assert a.pop(sc.GEN_AI_USAGE_OUTPUT_TOKENS) == tokens.output
    assert a.pop(sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 0) == tokens.cache_read
    assert a.pop(sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, 0) == tokens.cache_write
    assert a.pop(sc.OTEL_TOKENS_COST_USD) == pytest.approx(genai_prices_cost(MODEL, tokens), abs=1e-12)
    assert a.pop(sc.OTEL_TOKENS_MARKER) is True
    assert str(a.pop(sc.GEN_AI_RESPONSE_ID)).startswith("msg_")
    assert a.pop(sc.GEN_AI_RESPONSE_FINISH_REASONS) == ("end_turn",)
    assert a.pop(sc.SERVER_ADDRESS) == "127.0.0.1"
    assert a.pop(sc.SERVER_PORT) == int(fake.url.rsplit(":", 1)[1])
    assert a.pop(sc.GEN_AI_REQUEST_STREAM, False) is stream
    assert sc.OTEL_TOKENS_ESTIMATED not in a
    assert not {k for k in a if k.startswith(("gen_ai.input", "gen_ai.output"))}, "no content by default"
    assert not {k for k in a if k.startswith("gen_ai.usage")}, f"unexpected usage attributes {a}"


# --- messages.create ----------------------------------------------------------------------------
def test_create_returns_the_sdk_message_and_one_span_with_reported_usage_cost_and_attribution(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    outer = otel_tokens.attribute(agent="planner", task="research", task_id="t-42", user="u-7", session="s-1")
    with outer, otel_tokens.attribute(step=3, workflow="weekly-report"):  # nested scopes merge
        message = client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)

    assert type(message) is anthropic.types.Message
    span = only_span(span_exporter)
    attrs = dict(span.attributes or {})
    attribution = {k: attrs.pop(k) for k in list(attrs) if k in ATTRIBUTION_ATTRIBUTES}
    assert attribution == {
        sc.GEN_AI_AGENT_NAME: "planner",
        sc.OTEL_TOKENS_TASK: "research",
        sc.OTEL_TOKENS_TASK_ID: "t-42",
        sc.OTEL_TOKENS_USER: "u-7",
        sc.GEN_AI_CONVERSATION_ID: "s-1",
        sc.OTEL_TOKENS_STEP: "3",
        sc.GEN_AI_WORKFLOW_NAME: "weekly-report",
    }
    assert_ok_call_span(span, fake_provider)
    assert span.attributes and span.attributes[sc.GEN_AI_RESPONSE_ID] == message.id
    # the scope introducing task t-42 opened its task span, and the call nests under it
    (task_span,) = [s for s in span_exporter.get_finished_spans() if s.name == "task research"]
    assert span.parent is not None and span.parent.span_id == task_span.context.span_id
    assert (task_span.attributes or {})[sc.OTEL_TOKENS_TASK_ID] == "t-42"


def test_cache_tokens_are_added_to_input_as_semconv_means_and_priced_at_their_own_rates(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    first = client.messages.create(model=MODEL, max_tokens=256, system=CACHED_SYSTEM, messages=HELLO)
    second = client.messages.create(model=MODEL, max_tokens=256, system=CACHED_SYSTEM, messages=HELLO)

    # Anthropic's own input_tokens excludes the cache: the first call writes it, the second reads it.
    assert first.usage.cache_creation_input_tokens and not first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    write_span, read_span = ours(span_exporter)
    for span, usage in ((write_span, first.usage), (read_span, second.usage)):
        cache_read = usage.cache_read_input_tokens or 0
        cache_write = usage.cache_creation_input_tokens or 0
        expected = TokenCounts.from_anthropic(
            usage.input_tokens, usage.output_tokens, cache_read, cache_write
        )
        assert span_tokens(span) == expected
        assert span.attributes and span.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] == (
            usage.input_tokens + cache_read + cache_write
        )
        assert span.attributes[sc.OTEL_TOKENS_COST_USD] == pytest.approx(
            genai_prices_cost(MODEL, expected), abs=1e-12
        )
    assert [span_tokens(s) for s in (write_span, read_span)] == [r.tokens for r in fake_provider.reported]
    assert sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS in (write_span.attributes or {})
    assert sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS in (read_span.attributes or {})


ONE_HOUR_SYSTEM: list[TextBlockParam] = [
    {
        "type": "text",
        "text": "Rules that hold all session long. " * 30,
        "cache_control": {"type": "ephemeral"},
    },
    {
        "type": "text",
        "text": "A long reference document, cached for an hour. " * 60,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    },
]


def one_hour_writes(fake: FakeProvider) -> TokenCounts:
    (reported,) = fake.reported
    assert 0 < reported.tokens.cache_write_1h < reported.tokens.cache_write, "a 5m part and a 1h part"
    return reported.tokens


@pytest.mark.parametrize("how", ["json", "sse", "stream_helper"])
def test_one_hour_cache_writes_are_recorded_and_priced_at_the_one_hour_rate(
    how: str, client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    """The wire's `usage.cache_creation` TTL split reaches the span (`cache_creation` stays the total)
    and the cost is genai-prices' with the 1-hour part at its own rate, above the 5-minute price."""
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 256,
        "system": ONE_HOUR_SYSTEM,
        "messages": HELLO,
    }
    if how == "json":
        message = client.messages.create(**request)
        wire_split = getattr(message.usage, "cache_creation", None)
        if wire_split is not None:  # SDKs that predate the field keep it as a dict
            one_hour = wire_split["ephemeral_1h_input_tokens"] if isinstance(wire_split, dict) else None
            assert (one_hour or wire_split.ephemeral_1h_input_tokens) > 0  # type: ignore[union-attr]
    elif how == "sse":
        with client.messages.create(**request, stream=True) as stream:
            assert [e.type for e in stream][-1] == "message_stop"
    else:
        with client.messages.stream(**request) as helper:
            helper.get_final_message()

    tokens = one_hour_writes(fake_provider)
    span = only_span(span_exporter)
    a = span.attributes or {}
    assert span_tokens(span) == tokens
    assert a[sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == tokens.cache_write  # 5m + 1h
    assert a[sc.OTEL_TOKENS_CACHE_WRITE_1H] == tokens.cache_write_1h
    cost = a[sc.OTEL_TOKENS_COST_USD]
    assert cost == pytest.approx(genai_prices_cost(MODEL, tokens), abs=1e-12)
    all_five_minutes = genai_prices_cost(MODEL, dataclasses.replace(tokens, cache_write_1h=0))
    assert isinstance(cost, float) and cost > all_five_minutes


def test_async_create(
    aclient_options: dict[str, Any], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def main() -> anthropic.types.Message:
        async with anthropic.AsyncAnthropic(**aclient_options) as aclient:
            return await aclient.messages.create(model=MODEL, max_tokens=256, messages=HELLO)

    message = asyncio.run(main())
    assert type(message) is anthropic.types.Message
    assert_ok_call_span(only_span(span_exporter), fake_provider)


# --- streams --------------------------------------------------------------------------------------
EVENT_TYPES = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def test_create_stream_stays_an_sdk_stream_and_counts_message_start_plus_message_delta(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    with client.messages.create(model=MODEL, max_tokens=256, messages=HELLO, stream=True) as stream:
        assert type(stream) is anthropic.Stream
        assert ours(span_exporter) == [], "the span stays open while the stream is read"
        kinds = [event.type for event in stream]

    assert sorted(set(kinds), key=EVENT_TYPES.index) == EVENT_TYPES
    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=True)


def test_async_create_stream(
    aclient_options: dict[str, Any], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def main() -> list[str]:
        async with anthropic.AsyncAnthropic(**aclient_options) as aclient:
            stream = await aclient.messages.create(model=MODEL, max_tokens=256, messages=HELLO, stream=True)
            assert type(stream) is anthropic.AsyncStream
            async with stream:
                return [event.type async for event in stream]

    assert asyncio.run(main())[-1] == "message_stop"
    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=True)


def test_stream_helper_text_stream_and_final_message_work_and_make_one_span(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream:
        assert type(stream).__name__ == "MessageStream"
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == text_of(final) and text.startswith("Fake reply:")
    (reported,) = fake_provider.reported
    assert TokenCounts.from_anthropic(final.usage.input_tokens, final.usage.output_tokens) == reported.tokens
    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=True)


def test_async_stream_helper(
    aclient_options: dict[str, Any], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def main() -> tuple[str, anthropic.types.Message]:
        async with (
            anthropic.AsyncAnthropic(**aclient_options) as aclient,
            aclient.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream,
        ):
            assert type(stream).__name__ == "AsyncMessageStream"
            text = "".join([t async for t in stream.text_stream])
            return text, await stream.get_final_message()

    text, final = asyncio.run(main())
    assert text == text_of(final)
    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=True)


def test_stream_cut_by_the_server_is_an_error_and_keeps_what_was_consumed(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    # message_start, content_block_start, ping, two text deltas, then the connection drops.
    fake_provider.inject(Fault(break_after_events=5))
    with client.messages.create(model=MODEL, max_tokens=256, messages=HELLO, stream=True) as stream:
        kinds = [event.type for event in stream]  # the SDK itself raises nothing

    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_delta"]
    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    attrs = span.attributes or {}
    assert attrs[sc.ERROR_TYPE] == "incomplete_stream"
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == fake_provider.reported[0].tokens.input  # from message_start
    assert 0 < int_attr(span, sc.GEN_AI_USAGE_OUTPUT_TOKENS) < fake_provider.reported[0].tokens.output
    assert attrs[sc.OTEL_TOKENS_ESTIMATED] is True  # output counted from the text consumed


def test_stream_without_any_usage_is_estimated_with_the_tokenizer(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    fake_provider.inject(Fault(break_after_events=0))  # the connection drops before message_start
    with client.messages.create(
        model=MODEL, max_tokens=256, system="Be brief.", messages=HELLO, stream=True
    ) as stream:
        assert list(stream) == []

    span = only_span(span_exporter)
    attrs = span.attributes or {}
    assert span.status.status_code is StatusCode.ERROR
    assert attrs[sc.OTEL_TOKENS_ESTIMATED] is True
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == count_message_tokens(HELLO, MODEL, system="Be brief.")
    assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 0


def test_stream_closed_early_by_the_application_is_not_an_error_and_keeps_what_was_consumed(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream:
        first_text = next(iter(stream.text_stream))

    assert first_text == "Fake"
    span = only_span(span_exporter)
    attrs = span.attributes or {}
    assert span.status.status_code is StatusCode.UNSET
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == fake_provider.reported[0].tokens.input
    assert int_attr(span, sc.GEN_AI_USAGE_OUTPUT_TOKENS) >= 1
    assert attrs[sc.OTEL_TOKENS_ESTIMATED] is True


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "exception"),
    [(529, anthropic.OverloadedError), (500, anthropic.InternalServerError), (429, anthropic.RateLimitError)],
)
@pytest.mark.parametrize("how", ["create", "create-stream", "stream-helper"])
def test_http_errors_reach_the_application_unchanged_and_fail_the_span(
    client: anthropic.Anthropic,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
    status: int,
    exception: type[anthropic.APIStatusError],
    how: str,
) -> None:
    fake_provider.inject(Fault(status=status))
    with pytest.raises(anthropic.APIStatusError) as raised:
        if how == "stream-helper":
            with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO):
                pass
        else:
            client.messages.create(model=MODEL, max_tokens=256, messages=HELLO, stream=how == "create-stream")

    assert type(raised.value) is exception and raised.value.status_code == status
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "error"
    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[sc.ERROR_TYPE] == exception.__qualname__
    assert span_tokens(span) == TokenCounts()


def test_timeout_reaches_the_application_unchanged_and_fails_the_span(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    fake_provider.inject(Fault(delay_s=1.0))
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.2).messages.create(model=MODEL, max_tokens=256, messages=HELLO)

    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[sc.ERROR_TYPE] == "APITimeoutError"


def test_async_error_reaches_the_application_unchanged(
    aclient_options: dict[str, Any], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    fake_provider.inject(Fault(status=500))

    async def main() -> None:
        async with anthropic.AsyncAnthropic(**aclient_options) as aclient:
            await aclient.messages.create(model=MODEL, max_tokens=256, messages=HELLO)

    with pytest.raises(anthropic.InternalServerError):
        asyncio.run(main())
    assert only_span(span_exporter).status.status_code is StatusCode.ERROR


# --- the SDK's own spans --------------------------------------------------------------------------
@needs_sdk_spans
@pytest.mark.parametrize("stream", [False, True])
def test_the_sdk_own_span_is_a_child_of_ours_and_carries_the_same_usage(
    client: anthropic.Anthropic, span_exporter: InMemorySpanExporter, stream: bool
) -> None:
    """The collector counts an SDK span whose parent is an otel_tokens span as the same call."""
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=256, system=CACHED_SYSTEM, messages=HELLO) as s:
            s.until_done()
    else:
        client.messages.create(model=MODEL, max_tokens=256, system=CACHED_SYSTEM, messages=HELLO)

    ours_span = only_span(span_exporter)
    (sdk_span,) = [s for s in span_exporter.get_finished_spans() if scope_of(s) == SDK_SCOPE]
    assert sdk_span.name == "anthropic.messages.create"
    assert sdk_span.kind is SpanKind.CLIENT
    assert sdk_span.parent is not None and sdk_span.parent.span_id == ours_span.context.span_id
    assert sdk_span.context.trace_id == ours_span.context.trace_id
    sdk, mine = sdk_span.attributes or {}, ours_span.attributes or {}
    assert sdk[sc.GEN_AI_PROVIDER_NAME] == "anthropic" and sdk[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert sdk[sc.GEN_AI_USAGE_INPUT_TOKENS] == mine[sc.GEN_AI_USAGE_INPUT_TOKENS]  # both include cache
    assert sdk[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == mine[sc.GEN_AI_USAGE_OUTPUT_TOKENS]
    assert sdk[sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS] == mine[sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS]
    assert sdk[sc.GEN_AI_RESPONSE_ID] == mine[sc.GEN_AI_RESPONSE_ID]
    assert sc.OTEL_TOKENS_MARKER not in sdk


@needs_sdk_spans
def test_the_sdk_own_spans_can_be_turned_off_per_client(
    fake_provider: FakeProvider, instrumented: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    with anthropic.Anthropic(**client_options(fake_provider, instrumented, open_telemetry=False)) as quiet:
        quiet.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
    assert [scope_of(s) for s in span_exporter.get_finished_spans()] == [sc.INSTRUMENTATION_SCOPE]


# --- .with_raw_response and .with_streaming_response ---------------------------------------------
def assert_estimated_prompt_only(span: ReadableSpan, *, stream: bool = False) -> None:
    """The span of a call whose body the application read without the SDK: the prompt, estimated."""
    attrs = span.attributes or {}
    assert span.status.status_code is StatusCode.UNSET
    assert attrs[sc.OTEL_TOKENS_ESTIMATED] is True
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == count_message_tokens(HELLO, MODEL)
    assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
    assert attrs.get(sc.GEN_AI_REQUEST_STREAM, False) is stream


def wire_tokens(body: bytes) -> TokenCounts:
    """The usage in a non-stream JSON body, in semconv meaning: the body is whole and readable."""
    usage = json.loads(body)["usage"]
    return TokenCounts.from_anthropic(usage["input_tokens"], usage["output_tokens"])


def test_with_raw_response_is_counted_exactly_at_once_and_the_response_is_untouched(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=HELLO)

    # The SDK read the body before returning; the span ends now, whether or not the app parses.
    span = only_span(span_exporter)
    assert_ok_call_span(span, fake_provider)
    assert type(raw).__module__.startswith("anthropic."), "the SDK's own wrapper, not a proxy"
    assert raw.status_code == 200
    body = raw.http_response.content
    assert wire_tokens(body) == fake_provider.reported[0].tokens
    message = raw.parse()
    assert type(message) is anthropic.types.Message and raw.parse() is message
    assert message.id == json.loads(body)["id"] == (span.attributes or {})[sc.GEN_AI_RESPONSE_ID]
    assert text_of(message).startswith("Fake reply:")
    assert len(ours(span_exporter)) == 1


def test_async_with_raw_response_is_counted_exactly(
    aclient_options: dict[str, Any], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def main() -> anthropic.types.Message:
        async with anthropic.AsyncAnthropic(**aclient_options) as aclient:
            raw = await aclient.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=HELLO)
            assert_ok_call_span(only_span(span_exporter), fake_provider)
            assert wire_tokens(raw.http_response.content) == fake_provider.reported[0].tokens
            return await parse_async(raw)  # type: ignore[no-any-return]

    assert type(asyncio.run(main())) is anthropic.types.Message
    assert len(ours(span_exporter)) == 1


def test_with_raw_response_stream_is_counted_exactly_from_the_stream_the_application_parses(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=HELLO, stream=True)
    assert ours(span_exporter) == [], "the body is the stream, still unread"
    stream = raw.parse()
    assert type(stream) is anthropic.Stream and raw.parse() is stream
    kinds = [event.type for event in stream]

    assert sorted(set(kinds), key=EVENT_TYPES.index) == EVENT_TYPES
    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=True)


def test_async_with_raw_response_stream_is_counted_exactly(
    aclient_options: dict[str, Any], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def main() -> list[str]:
        async with anthropic.AsyncAnthropic(**aclient_options) as aclient:
            raw = await aclient.messages.with_raw_response.create(
                model=MODEL, max_tokens=256, messages=HELLO, stream=True
            )
            stream = await parse_async(raw)
            assert type(stream) is anthropic.AsyncStream
            return [event.type async for event in stream]

    assert asyncio.run(main())[-1] == "message_stop"
    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=True)


def test_a_dropped_raw_response_ends_its_span_but_not_the_stream_parsed_from_it(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    # The wrapper is a temporary: only the stream lives on, and it alone ends the span.
    stream = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=256, messages=HELLO, stream=True
    ).parse()
    gc.collect()
    assert ours(span_exporter) == []
    list(stream)
    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=True)
    span_exporter.clear()

    # Neither parsed nor closed (the application read `http_response` itself, or nothing at all).
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=HELLO, stream=True)
    raw.http_response.close()
    del raw
    gc.collect()
    assert_estimated_prompt_only(only_span(span_exporter), stream=True)


@pytest.mark.parametrize("stream", [False, True])
def test_with_streaming_response_parsed_by_the_application_is_counted_exactly(
    client: anthropic.Anthropic,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
    stream: bool,
) -> None:
    with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=256, messages=HELLO, stream=stream
    ) as response:
        assert ours(span_exporter) == [], "the body is not read until the application reads it"
        parsed = response.parse()
        if stream:
            assert type(parsed) is anthropic.Stream and response.parse() is parsed
            assert [event.type for event in parsed][-1] == "message_stop"
        else:
            assert type(parsed) is anthropic.types.Message and text_of(parsed).startswith("Fake reply:")

    assert_ok_call_span(only_span(span_exporter), fake_provider, stream=stream)


@pytest.mark.parametrize("how", BODY_READS)
def test_with_streaming_response_body_read_by_the_application(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter, how: str
) -> None:
    """A body the application read whole is parsed from those bytes when the response closes; one
    it iterated itself was never kept, so the prompt is estimated, and the span says so."""
    with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=256, messages=HELLO
    ) as response:
        body = read_body(response, how)
        assert ours(span_exporter) == [], "the span ends when the response is closed"

    assert wire_tokens(body) == fake_provider.reported[0].tokens  # the application got it all
    span = only_span(span_exporter)
    if how.startswith("iter_"):
        assert_estimated_prompt_only(span)
    else:
        assert_ok_call_span(span, fake_provider)


def test_with_streaming_response_stream_read_as_lines_is_estimated_when_the_response_closes(
    client: anthropic.Anthropic, span_exporter: InMemorySpanExporter
) -> None:
    with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=256, messages=HELLO, stream=True
    ) as response:
        lines = list(response.iter_lines())
        assert ours(span_exporter) == []

    assert "event: message_stop" in lines  # every event reached the application
    assert_estimated_prompt_only(only_span(span_exporter), stream=True)


def test_with_streaming_response_stream_left_early_keeps_what_was_consumed(
    client: anthropic.Anthropic, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=256, messages=HELLO, stream=True
    ) as response:
        for event in response.parse():
            if event.type == "content_block_delta":
                break

    span = only_span(span_exporter)
    attrs = span.attributes or {}
    assert span.status.status_code is StatusCode.UNSET
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == fake_provider.reported[0].tokens.input  # message_start
    assert 1 <= int_attr(span, sc.GEN_AI_USAGE_OUTPUT_TOKENS) < fake_provider.reported[0].tokens.output
    assert attrs[sc.OTEL_TOKENS_ESTIMATED] is True


@pytest.mark.parametrize(
    ("stream", "how"), [(False, "parse"), (True, "parse"), (False, "read"), (True, "lines")]
)
def test_async_with_streaming_response(
    aclient_options: dict[str, Any],
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
    stream: bool,
    how: str,
) -> None:
    async def main() -> None:
        async with (
            anthropic.AsyncAnthropic(**aclient_options) as aclient,
            aclient.messages.with_streaming_response.create(
                model=MODEL, max_tokens=256, messages=HELLO, stream=stream
            ) as response,
        ):
            assert ours(span_exporter) == []
            if how == "lines":
                assert "event: message_stop" in [line async for line in response.iter_lines()]
            elif how == "read":
                assert wire_tokens(await response.read()) == fake_provider.reported[0].tokens
            elif stream:
                parsed = await response.parse()
                assert type(parsed) is anthropic.AsyncStream
                assert [event.type async for event in parsed][-1] == "message_stop"
            else:
                assert type(await response.parse()) is anthropic.types.Message

    asyncio.run(main())
    span = only_span(span_exporter)
    if how == "lines":
        assert_estimated_prompt_only(span, stream=True)
    else:
        assert_ok_call_span(span, fake_provider, stream=stream)


# --- content, transparency, totals ----------------------------------------------------------------
def test_content_is_captured_only_when_asked(
    fake_provider: FakeProvider, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    otel_tokens.instrument(tracer_provider=tracer_provider, capture_content=True)
    try:
        with anthropic.Anthropic(**client_options(fake_provider, tracer_provider)) as c:
            reply = c.messages.create(model=MODEL, max_tokens=256, system="Be brief.", messages=HELLO)
    finally:
        otel_tokens.uninstrument()

    attrs = only_span(span_exporter).attributes or {}
    prompt = json.loads(str(attrs[sc.GEN_AI_INPUT_MESSAGES]))
    assert prompt[0] == {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]}
    assert prompt[1]["parts"][0]["content"] == HELLO[0]["content"]
    completion = json.loads(str(attrs[sc.GEN_AI_OUTPUT_MESSAGES]))
    assert completion[0]["parts"][0]["content"] == text_of(reply)


def test_uninstrument_removes_every_patch(
    client: anthropic.Anthropic, span_exporter: InMemorySpanExporter
) -> None:
    otel_tokens.uninstrument()
    client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
    with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream:
        stream.until_done()
    assert ours(span_exporter) == []


def test_span_totals_equal_what_the_provider_reported_for_a_mixed_workload(
    client: anthropic.Anthropic,
    aclient_options: dict[str, Any],
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
    for _ in range(2):  # a cache write, then a cache read
        client.messages.create(model=MODEL, max_tokens=256, system=CACHED_SYSTEM, messages=HELLO)
    for _ in client.messages.create(
        model=MODEL, max_tokens=8, system=CACHED_SYSTEM, messages=HELLO, stream=True
    ):
        pass
    with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream:
        stream.get_final_message()
    client.messages.with_raw_response.create(
        model=MODEL, max_tokens=256, system=CACHED_SYSTEM, messages=HELLO
    )
    with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=64, messages=HELLO, stream=True
    ) as response:
        list(response.parse())

    async def async_calls() -> None:
        async with anthropic.AsyncAnthropic(**aclient_options) as aclient:
            await aclient.messages.create(model=MODEL, max_tokens=256, system=CACHED_SYSTEM, messages=HELLO)

    asyncio.run(async_calls())

    spans = ours(span_exporter)
    assert len(spans) == len(fake_provider.reported) == 8
    total = TokenCounts()
    for span in spans:
        total = total + span_tokens(span)
    assert total == fake_provider.reported_totals("anthropic")
    assert total.cache_read > 0 and total.cache_write > 0
