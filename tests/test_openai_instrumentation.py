"""The real `openai` SDK, instrumented, against the local fake provider over real HTTP.

What a user checks: one span per call, named and typed per the GenAI conventions, carrying exactly
the usage the provider reported (or a tokenizer estimate, flagged, when none was sent), priced, and
attributed; the SDK's results, streams and exceptions reach the caller unchanged.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from typing import Any

import genai_prices
import openai
import pydantic
import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import otel_tokens
from otel_tokens import semconv as sc
from otel_tokens.demo.fake_provider import FakeProvider, Fault
from otel_tokens.demo.fake_provider.openai_api import (
    REASONING_TOKENS,
    REPLY_PIECES,
    REPLY_TEXT,
    RESPONSE_MODELS,
)
from otel_tokens.record import TokenCounts
from otel_tokens.tokencount import count_message_tokens, count_text_tokens
from tests.sdk_responses import BODY_READS, parse_async, read_body

MODEL = "gpt-4o-mini"
SNAPSHOT = RESPONSE_MODELS[MODEL]
PROMPT = "What is the capital of the fake provider's country?"
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]
pytestmark = pytest.mark.usefixtures("instrumented")


# --- helpers ------------------------------------------------------------------------------------
@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=fake_provider.openai_base_url, api_key="test", max_retries=0, timeout=10
    ) as c:
        yield c


@pytest.fixture
def aclient(fake_provider: FakeProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=fake_provider.openai_base_url, api_key="test", max_retries=0, timeout=10
    )


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def span_tokens(span: ReadableSpan) -> TokenCounts:
    a = attrs(span)
    return TokenCounts(
        input=a[sc.GEN_AI_USAGE_INPUT_TOKENS],
        output=a[sc.GEN_AI_USAGE_OUTPUT_TOKENS],
        cache_read=a.get(sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 0),
        cache_write=a.get(sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, 0),
        reasoning=a.get(sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, 0),
    )


def last_reported(fake: FakeProvider) -> TokenCounts:
    assert fake.reported, "the fake provider answered no call"
    return fake.reported[-1].tokens


def genai_prices_cost(model: str, tokens: TokenCounts) -> float:
    """What genai-prices charges for this usage (input includes cache reads, as in semconv)."""
    usage = genai_prices.Usage(
        input_tokens=tokens.input, cache_read_tokens=tokens.cache_read, output_tokens=tokens.output
    )
    return float(genai_prices.calc_price(usage, model, provider_id="openai").total_price)


def assert_reported_usage(span: ReadableSpan, fake: FakeProvider) -> None:
    """The span carries exactly what the provider reported, priced, and not flagged as estimated."""
    reported = last_reported(fake)
    assert span_tokens(span) == reported
    a = attrs(span)
    assert sc.OTEL_TOKENS_ESTIMATED not in a
    model = a.get(sc.GEN_AI_RESPONSE_MODEL) or a[sc.GEN_AI_REQUEST_MODEL]
    assert a[sc.OTEL_TOKENS_COST_USD] == pytest.approx(genai_prices_cost(model, reported), rel=1e-9)


def estimated_usage(model: str, output_text: str, prompt: Any = MESSAGES) -> TokenCounts:
    return TokenCounts(
        input=count_message_tokens(prompt, model), output=count_text_tokens(output_text, model)
    )


def chat_wire_tokens(body: bytes) -> TokenCounts:
    """The usage in a Chat Completions JSON body: the body is whole and readable."""
    usage = json.loads(body)["usage"]
    return TokenCounts(
        input=usage["prompt_tokens"],
        output=usage["completion_tokens"],
        cache_read=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        reasoning=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
    )


def stream_text(api: str, stream: Any) -> str:
    if api == "chat":
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    return "".join(e.delta for e in stream if e.type == "response.output_text.delta")


# --- chat completions ---------------------------------------------------------------------------
def test_chat_completion_span_is_complete_and_carries_no_content(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    with otel_tokens.attribute(agent="planner", task="research", user="u-1"):
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=50)

    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content == REPLY_TEXT
    span = only_span(span_exporter)
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    a = attrs(span)
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[sc.GEN_AI_REQUEST_MODEL] == MODEL
    assert a[sc.GEN_AI_RESPONSE_MODEL] == SNAPSHOT
    assert a[sc.GEN_AI_RESPONSE_ID] == completion.id
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert a[sc.GEN_AI_REQUEST_MAX_TOKENS] == 50
    assert a[sc.SERVER_ADDRESS] == "127.0.0.1"
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == completion.usage.prompt_tokens  # type: ignore[union-attr]
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == len(REPLY_PIECES)
    assert_reported_usage(span, fake_provider)
    assert a[sc.GEN_AI_AGENT_NAME] == "planner"
    assert a[sc.OTEL_TOKENS_TASK] == "research"
    assert a[sc.OTEL_TOKENS_USER] == "u-1"
    assert sc.GEN_AI_INPUT_MESSAGES not in a and sc.GEN_AI_OUTPUT_MESSAGES not in a
    assert not [v for v in a.values() if isinstance(v, str) and (PROMPT in v or REPLY_TEXT in v)]


def _replaying_client(body: dict[str, Any]) -> openai.OpenAI:
    """The real SDK over its own HTTP library's `MockTransport`, answering every request with
    `body`: shapes the fake provider never sends (several choices, usage without its details)."""
    import importlib

    http = next(
        importlib.import_module(top)
        for cls in openai.DefaultHttpxClient.__mro__
        if (top := cls.__module__.split(".")[0]).startswith("httpx")
    )
    content = json.dumps(body).encode()

    def answer(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "application/json"}, content=content)

    transport = http.MockTransport(answer)
    return openai.OpenAI(
        base_url="http://mock.invalid/v1", api_key="k", http_client=http.Client(transport=transport)
    )


@pytest.mark.parametrize(
    ("choices", "usage", "reasons", "tokens"),
    [
        # two choices: both finish reasons, the general (duck-typed) reading
        (
            [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"},
             {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": "length"}],
            {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            ("stop", "length"),
            TokenCounts(input=11, output=7),
        ),
        # one choice, usage with no details objects and a cached count: the attribute reading
        (
            [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"}],
            {"prompt_tokens": 90, "completion_tokens": 5, "total_tokens": 95,
             "prompt_tokens_details": {"cached_tokens": 64}},
            ("stop",),
            TokenCounts(input=90, output=5, cache_read=64),
        ),
    ],
)  # fmt: skip
def test_chat_completion_shapes_beyond_the_common_one_are_read_exactly(
    span_exporter: InMemorySpanExporter,
    choices: list[Any],
    usage: dict[str, Any],
    reasons: tuple[str, ...],
    tokens: TokenCounts,
) -> None:
    body = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": SNAPSHOT}
    with _replaying_client({**body, "choices": choices, "usage": usage}) as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(completion.choices) == len(choices)
    a = attrs(only_span(span_exporter))
    assert span_tokens(only_span(span_exporter)) == tokens
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == reasons
    assert (a[sc.GEN_AI_RESPONSE_ID], a[sc.GEN_AI_RESPONSE_MODEL]) == ("chatcmpl-x", SNAPSHOT)
    assert a[sc.OTEL_TOKENS_COST_USD] == pytest.approx(genai_prices_cost(SNAPSHOT, tokens), rel=1e-9)
    assert sc.OPENAI_RESPONSE_SERVICE_TIER not in a and sc.OTEL_TOKENS_ESTIMATED not in a


def test_each_call_sees_the_attribution_and_server_in_force_at_that_call(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    """Attribution and server address are remembered between calls (hot-path caches); a change of
    scope, of incoming baggage or of the client's base URL must still show on the next span."""

    def call() -> dict[str, Any]:
        span_exporter.clear()
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        return attrs(only_span(span_exporter))

    with otel_tokens.attribute(agent="planner", user="u-1"):
        first, second = call(), call()
        token = context.attach(baggage.set_baggage("otel_tokens.task", "from-baggage"))
        try:
            with_baggage = call()
        finally:
            context.detach(token)
        after_baggage = call()
    with otel_tokens.attribute(agent="coder", user="u-1"):
        other_scope = call()
    unscoped = call()
    client.base_url = fake_provider.openai_base_url.replace("127.0.0.1", "localhost")
    moved = call()

    assert first[sc.GEN_AI_AGENT_NAME] == second[sc.GEN_AI_AGENT_NAME] == "planner"
    assert with_baggage[sc.OTEL_TOKENS_TASK] == "from-baggage"
    assert with_baggage[sc.GEN_AI_AGENT_NAME] == "planner" and with_baggage[sc.OTEL_TOKENS_USER] == "u-1"
    assert sc.OTEL_TOKENS_TASK not in after_baggage and after_baggage[sc.GEN_AI_AGENT_NAME] == "planner"
    assert other_scope[sc.GEN_AI_AGENT_NAME] == "coder"
    assert sc.GEN_AI_AGENT_NAME not in unscoped and sc.OTEL_TOKENS_USER not in unscoped
    assert first[sc.SERVER_ADDRESS] == unscoped[sc.SERVER_ADDRESS] == "127.0.0.1"
    assert moved[sc.SERVER_ADDRESS] == "localhost"


def test_cached_and_reasoning_tokens_are_normalised(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    client.chat.completions.create(model="o4-mini", messages=MESSAGES, prompt_cache_key="conversation-7")

    reported = last_reported(fake_provider)
    assert reported.cache_read > 0 and reported.reasoning == REASONING_TOKENS
    span = only_span(span_exporter)
    a = attrs(span)
    # OpenAI's prompt_tokens already include cached tokens, completion_tokens include reasoning.
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == reported.input
    assert a[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == reported.cache_read
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == len(REPLY_PIECES) + REASONING_TOKENS
    assert a[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
    assert_reported_usage(span, fake_provider)


def test_async_chat_completion(
    aclient: openai.AsyncOpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def run() -> Any:
        async with aclient:
            with otel_tokens.attribute(agent="async-agent"):
                return await aclient.chat.completions.create(model=MODEL, messages=MESSAGES)

    completion = asyncio.run(run())
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    span = only_span(span_exporter)
    assert span.name == f"chat {MODEL}"
    assert attrs(span)[sc.GEN_AI_AGENT_NAME] == "async-agent"
    assert_reported_usage(span, fake_provider)


def test_stream_with_usage_reports_exact_usage(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert isinstance(stream, openai.Stream)
    assert span_exporter.get_finished_spans() == ()  # the call is not over until the stream is
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert text == REPLY_TEXT
    span = only_span(span_exporter)
    assert attrs(span)[sc.GEN_AI_REQUEST_STREAM] is True
    assert attrs(span)[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert_reported_usage(span, fake_provider)


def test_stream_without_usage_is_estimated_with_the_tokenizer(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        assert isinstance(stream, openai.Stream)
        assert stream.response.status_code == 200
        chunks = list(stream)

    assert len(chunks) == len(REPLY_PIECES) + 2
    assert fake_provider.reported[-1].sent is False
    span = only_span(span_exporter)
    a = attrs(span)
    assert a[sc.OTEL_TOKENS_ESTIMATED] is True
    assert span_tokens(span) == estimated_usage(SNAPSHOT, REPLY_TEXT)
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("include_usage", [True, False])
def test_async_stream(
    include_usage: bool,
    aclient: openai.AsyncOpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    async def run() -> str:
        async with aclient:
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": include_usage}
            )
            assert isinstance(stream, openai.AsyncStream)
            async with stream:
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()) == REPLY_TEXT
    span = only_span(span_exporter)
    if include_usage:
        assert_reported_usage(span, fake_provider)
    else:
        assert attrs(span)[sc.OTEL_TOKENS_ESTIMATED] is True
        assert span_tokens(span) == estimated_usage(SNAPSHOT, REPLY_TEXT)


def test_stream_helper_makes_one_span(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
    final = stream.get_final_completion()

    assert "".join(deltas) == REPLY_TEXT == final.choices[0].message.content
    assert_reported_usage(only_span(span_exporter), fake_provider)


def test_async_stream_helper_makes_one_span(
    aclient: openai.AsyncOpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def run() -> Any:
        async with (
            aclient,
            aclient.chat.completions.stream(
                model=MODEL, messages=MESSAGES, stream_options={"include_usage": True}
            ) as stream,
        ):
            return await stream.get_final_completion()

    assert asyncio.run(run()).choices[0].message.content == REPLY_TEXT
    assert_reported_usage(only_span(span_exporter), fake_provider)


# --- responses API ------------------------------------------------------------------------------
def test_responses_create(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    response = client.responses.create(
        model="o4-mini", input=PROMPT, instructions="Be brief.", prompt_cache_key="k"
    )

    assert isinstance(response, openai.types.responses.Response)
    assert response.output_text == REPLY_TEXT
    span = only_span(span_exporter)
    a = attrs(span)
    assert span.name == "chat o4-mini"
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert a[sc.GEN_AI_RESPONSE_ID] == response.id
    assert a[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
    assert a[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == last_reported(fake_provider).cache_read > 0
    assert_reported_usage(span, fake_provider)


def test_responses_create_stream(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    stream = client.responses.create(model=MODEL, input=PROMPT, stream=True)
    events = [e.type for e in stream]

    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert "response.output_text.delta" in events
    span = only_span(span_exporter)
    assert attrs(span)[sc.GEN_AI_RESPONSE_MODEL] == SNAPSHOT
    assert_reported_usage(span, fake_provider)


def test_responses_stream_helper_sync_and_async(
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with client.responses.stream(model=MODEL, input=PROMPT) as stream:
        assert stream.get_final_response().output_text == REPLY_TEXT
    assert_reported_usage(only_span(span_exporter), fake_provider)
    span_exporter.clear()

    async def run() -> Any:
        async with (
            aclient,
            aclient.responses.stream(model=MODEL, input=[{"role": "user", "content": PROMPT}]) as s,
        ):
            return await s.get_final_response()

    assert asyncio.run(run()).output_text == REPLY_TEXT
    assert_reported_usage(only_span(span_exporter), fake_provider)


def test_parse_helpers_make_one_span(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    if not hasattr(client.chat.completions, "parse") or not hasattr(client.responses, "parse"):
        pytest.skip("this openai version has no chat.completions.parse / responses.parse")
    parsed = client.chat.completions.parse(model=MODEL, messages=MESSAGES)
    assert parsed.choices[0].message.content == REPLY_TEXT
    assert_reported_usage(only_span(span_exporter), fake_provider)
    span_exporter.clear()

    assert client.responses.parse(model=MODEL, input=PROMPT).output_text == REPLY_TEXT
    assert_reported_usage(only_span(span_exporter), fake_provider)


# --- embeddings ---------------------------------------------------------------------------------
def test_embeddings_sync_and_async(
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["first text", "second"])
    assert isinstance(result, openai.types.CreateEmbeddingResponse)
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    span = only_span(span_exporter)
    a = attrs(span)
    assert span.name == "embeddings text-embedding-3-small"
    assert a[sc.GEN_AI_OPERATION_NAME] == "embeddings"
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
    assert_reported_usage(span, fake_provider)
    span_exporter.clear()

    async def run() -> Any:
        async with aclient:
            return await aclient.embeddings.create(model="text-embedding-3-small", input="one text")

    asyncio.run(run())
    assert_reported_usage(only_span(span_exporter), fake_provider)


# --- transparency -------------------------------------------------------------------------------
def test_with_raw_response_still_works_and_is_counted(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)

    assert raw.status_code == 200
    completion = raw.parse()
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content == REPLY_TEXT
    assert_reported_usage(only_span(span_exporter), fake_provider)


def test_with_raw_response_is_counted_before_the_application_parses(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)

    assert_reported_usage(only_span(span_exporter), fake_provider)  # from the body the SDK read
    body = raw.http_response.content
    assert chat_wire_tokens(body) == last_reported(fake_provider)
    assert raw.parse() is raw.parse()
    assert raw.parse().id == json.loads(body)["id"] == attrs(only_span(span_exporter))[sc.GEN_AI_RESPONSE_ID]


def test_async_with_raw_response_is_counted_exactly(
    aclient: openai.AsyncOpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def run() -> Any:
        async with aclient:
            raw = await aclient.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            assert_reported_usage(only_span(span_exporter), fake_provider)
            return await parse_async(raw)

    assert asyncio.run(run()).choices[0].message.content == REPLY_TEXT


def test_with_raw_response_parse_helper_raises_only_where_the_sdk_does(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    """The structured-output post-parser runs in the application's `parse()`, not in the call:
    counting the call must not run it early (its error would surface from `create`)."""
    if not hasattr(client.chat.completions.with_raw_response, "parse"):
        pytest.skip("this openai version has no chat.completions.with_raw_response.parse")

    class Capital(pydantic.BaseModel):
        city: str

    raw = client.chat.completions.with_raw_response.parse(
        model=MODEL, messages=MESSAGES, response_format=Capital
    )
    assert_reported_usage(only_span(span_exporter), fake_provider)
    with pytest.raises(pydantic.ValidationError):  # the fake's reply is not a Capital
        raw.parse()


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_with_raw_response_stream_is_counted_exactly_from_the_stream_the_application_parses(
    api: str, client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    if api == "chat":
        raw: Any = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    else:
        raw = client.responses.with_raw_response.create(model=MODEL, input=PROMPT, stream=True)
    assert span_exporter.get_finished_spans() == (), "the body is the stream, still unread"
    stream = raw.parse()
    assert isinstance(stream, openai.Stream) and raw.parse() is stream
    assert stream_text(api, stream) == REPLY_TEXT

    span = only_span(span_exporter)
    assert attrs(span)[sc.GEN_AI_REQUEST_STREAM] is True
    assert_reported_usage(span, fake_provider)


def test_async_with_raw_response_stream_is_counted_exactly(
    aclient: openai.AsyncOpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    async def run() -> str:
        async with aclient:
            raw = await aclient.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            stream = await parse_async(raw)
            assert isinstance(stream, openai.AsyncStream)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()) == REPLY_TEXT
    assert_reported_usage(only_span(span_exporter), fake_provider)


@pytest.mark.parametrize(("api", "stream"), [("chat", False), ("chat", True), ("responses", True)])
def test_with_streaming_response_parsed_by_the_application_is_counted_exactly(
    api: str,
    stream: bool,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    if api == "chat":
        usage: Any = {"stream_options": {"include_usage": True}} if stream else {}
        manager: Any = client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=MESSAGES, stream=stream, **usage
        )
    else:
        manager = client.responses.with_streaming_response.create(model=MODEL, input=PROMPT, stream=stream)
    with manager as response:
        assert span_exporter.get_finished_spans() == (), "the body is not read until the application reads it"
        parsed = response.parse()
        if stream:
            assert isinstance(parsed, openai.Stream) and response.parse() is parsed
            assert stream_text(api, parsed) == REPLY_TEXT
        else:
            assert parsed.choices[0].message.content == REPLY_TEXT

    span = only_span(span_exporter)
    assert attrs(span).get(sc.GEN_AI_REQUEST_STREAM, False) is stream
    assert_reported_usage(span, fake_provider)


@pytest.mark.parametrize("how", BODY_READS)
def test_with_streaming_response_body_read_by_the_application(
    how: str, client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    """A body the application read whole is parsed from those bytes when the response closes; one
    it iterated itself was never kept, so the prompt is estimated, and the span says so."""
    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=MESSAGES) as response:
        body = read_body(response, how)
        assert span_exporter.get_finished_spans() == (), "the span ends when the response is closed"

    assert chat_wire_tokens(body) == last_reported(fake_provider)  # the application got it all
    span = only_span(span_exporter)
    if how.startswith("iter_"):
        assert attrs(span)[sc.OTEL_TOKENS_ESTIMATED] is True
        assert span_tokens(span) == TokenCounts(input=count_message_tokens(MESSAGES, MODEL))
    else:
        assert_reported_usage(span, fake_provider)


@pytest.mark.parametrize(
    ("stream", "how"), [(False, "parse"), (True, "parse"), (False, "read"), (True, "lines")]
)
def test_async_with_streaming_response(
    stream: bool,
    how: str,
    aclient: openai.AsyncOpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    async def run() -> None:
        async with (
            aclient,
            aclient.chat.completions.with_streaming_response.create(
                model=MODEL,
                messages=MESSAGES,
                stream=stream,
                stream_options={"include_usage": True} if stream else openai.NOT_GIVEN,
            ) as response,
        ):
            assert span_exporter.get_finished_spans() == ()
            if how == "lines":
                assert "data: [DONE]" in [line async for line in response.iter_lines()]
            elif how == "read":
                assert chat_wire_tokens(await response.read()) == last_reported(fake_provider)
            elif stream:
                parsed = await response.parse()
                assert isinstance(parsed, openai.AsyncStream)
                text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
                assert text == REPLY_TEXT
            else:
                assert (await response.parse()).choices[0].message.content == REPLY_TEXT

    asyncio.run(run())
    span = only_span(span_exporter)
    if how == "lines":
        assert attrs(span)[sc.OTEL_TOKENS_ESTIMATED] is True
        assert span_tokens(span) == TokenCounts(input=count_message_tokens(MESSAGES, MODEL))
    else:
        assert_reported_usage(span, fake_provider)


def test_generator_of_messages_reaches_the_provider_intact(
    client: openai.OpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    client.chat.completions.create(model=MODEL, messages=(m for m in MESSAGES))

    assert fake_provider.requests[-1].body["messages"] == MESSAGES
    assert_reported_usage(only_span(span_exporter), fake_provider)


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "exception"),
    [(500, openai.InternalServerError), (429, openai.RateLimitError), (400, openai.BadRequestError)],
)
def test_http_errors_are_reraised_unchanged_and_mark_the_span(
    status: int,
    exception: type[Exception],
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    fake_provider.inject(Fault(status=status))
    with pytest.raises(exception) as raised:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert type(raised.value) is exception
    assert raised.value.status_code == status  # type: ignore[attr-defined]
    assert raised.value.body["type"] in ("server_error", "rate_limit_exceeded", "invalid_request_error")  # type: ignore[attr-defined]
    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)[sc.ERROR_TYPE] == exception.__qualname__
    assert attrs(span)[sc.GEN_AI_USAGE_INPUT_TOKENS] == 0


def test_timeout_is_reraised_and_marks_the_span(
    fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    fake_provider.inject(Fault(delay_s=1.0))
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="t", max_retries=0, timeout=0.1)
    with client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)[sc.ERROR_TYPE] == "APITimeoutError"


def test_async_error_is_reraised(
    aclient: openai.AsyncOpenAI, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    fake_provider.inject(Fault(status=503))

    async def run() -> None:
        async with aclient:
            await aclient.responses.create(model=MODEL, input=PROMPT)

    with pytest.raises(openai.InternalServerError):
        asyncio.run(run())
    assert attrs(only_span(span_exporter))[sc.ERROR_TYPE] == "InternalServerError"


# --- streams that end early ---------------------------------------------------------------------
def test_stream_closed_early_records_what_was_consumed(
    client: openai.OpenAI, span_exporter: InMemorySpanExporter
) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received = ""
    for chunk in stream:
        received += chunk.choices[0].delta.content or ""
        if len(received) > 8:
            break
    stream.close()

    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert attrs(span)[sc.OTEL_TOKENS_ESTIMATED] is True
    assert span_tokens(span) == estimated_usage(SNAPSHOT, received)
    assert span_tokens(span).output < count_text_tokens(REPLY_TEXT, SNAPSHOT)


def test_stream_helper_left_early_ends_the_span(
    client: openai.OpenAI, span_exporter: InMemorySpanExporter
) -> None:
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        for event in stream:
            if event.type == "content.delta" and event.delta:
                break

    span = only_span(span_exporter)
    assert attrs(span)[sc.OTEL_TOKENS_ESTIMATED] is True
    assert span_tokens(span).output == count_text_tokens(REPLY_PIECES[0], SNAPSHOT)


def test_garbage_collected_stream_ends_the_span(
    client: openai.OpenAI, span_exporter: InMemorySpanExporter
) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(iter(stream))
    del stream
    gc.collect()

    span = only_span(span_exporter)
    assert attrs(span)[sc.OTEL_TOKENS_ESTIMATED] is True
    assert span_tokens(span).input == count_message_tokens(MESSAGES, SNAPSHOT)


@pytest.mark.parametrize(("api", "cut_after"), [("chat", 4), ("responses", 6)])
def test_broken_connection_mid_stream_is_an_error_with_partial_usage(
    api: str,
    cut_after: int,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    fake_provider.inject(Fault(break_after_events=cut_after))
    if api == "chat":
        stream: Any = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        received = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    else:
        stream = client.responses.create(model=MODEL, input=PROMPT, stream=True)
        received = "".join(e.delta for e in stream if e.type == "response.output_text.delta")

    assert 0 < len(received) < len(REPLY_TEXT)
    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)[sc.ERROR_TYPE] == "incomplete_stream"
    assert attrs(span)[sc.OTEL_TOKENS_ESTIMATED] is True
    assert span_tokens(span).output == count_text_tokens(received, SNAPSHOT)


# --- content capture, totals, patch lifecycle ---------------------------------------------------
def test_content_is_captured_only_when_asked(
    client: openai.OpenAI, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    otel_tokens.uninstrument()
    otel_tokens.instrument(tracer_provider=tracer_provider, capture_content=True)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        list(stream)

    for span in span_exporter.get_finished_spans():
        a = attrs(span)
        assert json.loads(a[sc.GEN_AI_INPUT_MESSAGES]) == [
            {"role": "user", "parts": [{"type": "text", "content": PROMPT}]}
        ]
        assert json.loads(a[sc.GEN_AI_OUTPUT_MESSAGES]) == [
            {"role": "assistant", "parts": [{"type": "text", "content": REPLY_TEXT}], "finish_reason": "stop"}
        ]
    assert len(span_exporter.get_finished_spans()) == 2


def test_span_totals_equal_what_the_provider_reported(
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    usage = {"include_usage": True}
    client.chat.completions.create(model=MODEL, messages=MESSAGES, prompt_cache_key="c")
    client.chat.completions.create(model="o3", messages=MESSAGES * 3)
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, stream_options=usage))
    client.responses.create(model="o4-mini", input=PROMPT * 5, prompt_cache_key="c")
    list(client.responses.create(model=MODEL, input=PROMPT, stream=True))
    client.embeddings.create(model="text-embedding-3-small", input=[PROMPT, PROMPT])
    client.chat.completions.with_raw_response.create(model="o4-mini", messages=MESSAGES).parse()
    with client.responses.with_streaming_response.create(
        model="o4-mini", input=PROMPT, stream=True
    ) as response:
        list(response.parse())

    async def run() -> None:
        async with aclient:
            await aclient.chat.completions.create(model=MODEL, messages=MESSAGES)
            async for _ in await aclient.responses.create(model="o4-mini", input=PROMPT, stream=True):
                pass

    asyncio.run(run())
    spans = span_exporter.get_finished_spans()
    assert len(spans) == len(fake_provider.reported) == 10
    assert all(r.sent for r in fake_provider.reported)
    total = TokenCounts()
    for span in spans:
        total = total + span_tokens(span)
    assert total == fake_provider.reported_totals("openai")
    assert total.cache_read > 0 and total.reasoning > 0


def test_uninstrument_removes_the_patches(client: openai.OpenAI, span_exporter: InMemorySpanExporter):
    otel_tokens.uninstrument()
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert span_exporter.get_finished_spans() == ()


def test_instrumenting_twice_makes_one_span_per_call(
    client: openai.OpenAI, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    otel_tokens.instrument(tracer_provider=tracer_provider)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(span_exporter.get_finished_spans()) == 1


# --- service tiers --------------------------------------------------------------------------------
TIER_MODEL = "gpt-5"


def tier_cost(tokens: TokenCounts, tier: str) -> float:
    """genai-prices' price of the call served in `tier` (its `price_context`)."""
    usage = genai_prices.Usage(
        input_tokens=tokens.input, cache_read_tokens=tokens.cache_read, output_tokens=tokens.output
    )
    calc = genai_prices.calc_price(
        usage, TIER_MODEL, provider_id="openai", price_context={"service_tier": tier}
    )
    return float(calc.total_price)


def tiered_call(client: openai.OpenAI, how: str, tier: str) -> str | None:
    """One call in `tier`, the way `how` says; returns the service tier the SDK's object reports."""
    if how == "chat":
        return client.chat.completions.create(
            model=TIER_MODEL, messages=MESSAGES, service_tier=tier
        ).service_tier  # type: ignore[arg-type]
    if how == "chat_stream":
        stream = client.chat.completions.create(
            model=TIER_MODEL,
            messages=MESSAGES,
            service_tier=tier,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk.service_tier for chunk in stream][-1]
    if how == "responses":
        return client.responses.create(model=TIER_MODEL, input=PROMPT, service_tier=tier).service_tier  # type: ignore[arg-type]
    events = list(client.responses.create(model=TIER_MODEL, input=PROMPT, service_tier=tier, stream=True))  # type: ignore[arg-type]
    return events[-1].response.service_tier  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["chat", "chat_stream", "responses", "responses_stream"])
@pytest.mark.parametrize("tier", ["flex", "priority", "default"])
def test_service_tier_is_recorded_and_prices_the_call(
    how: str,
    tier: str,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    """A flex call costs half, a priority call double: the span says which tier served the call
    (`openai.response.service_tier`) and its cost is genai-prices' for that tier."""
    assert tiered_call(client, how, tier) == tier
    span = only_span(span_exporter)
    a = attrs(span)
    reported = last_reported(fake_provider)
    assert span_tokens(span) == reported
    assert a[sc.OPENAI_RESPONSE_SERVICE_TIER] == tier
    assert a[sc.OTEL_TOKENS_COST_USD] == pytest.approx(tier_cost(reported, tier), rel=1e-12)
    standard = genai_prices_cost(TIER_MODEL, reported)
    expected_ratio = {"flex": 0.5, "priority": 2.0, "default": 1.0}[tier]
    assert a[sc.OTEL_TOKENS_COST_USD] == pytest.approx(standard * expected_ratio, rel=1e-9)
