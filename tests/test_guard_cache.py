"""The response cache through the real SDKs: an exact repeat of a deterministic request is answered
with zero provider calls, as the SDK's own types (streams included), is counted as saved on the
span, respects its TTL and size bound, and is shared by two processes on one machine."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_tokens
from otel_tokens import semconv as sc
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.guard import Guard
from otel_tokens.guard.cache import SQLiteStore, is_deterministic, request_key
from tests.guard_helpers import budget, events, guard_on

__all__ = ["guard_on"]

MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def cache_on(guard_on: Callable[..., Guard], tmp_path: Path) -> Callable[..., Guard]:
    """The guard with the response cache on for the `cached` agent's budget, in a test's own file."""

    def turn_on(**cache: Any) -> Guard:
        settings = {"path": str(tmp_path / "responses.sqlite3"), **cache}
        return guard_on(
            budget("cached-daily", {"tokens": 10_000_000}, scope={"agent": "cached"}, cache_responses=True),
            guard={"cache": settings},
        )

    return turn_on


def saved(span: ReadableSpan) -> list[dict[str, Any]]:
    return events(span, sc.OTEL_TOKENS_GUARD_SAVED_EVENT)


def assert_second_span_is_a_hit(spans: list[ReadableSpan], fake_provider: FakeProvider) -> None:
    first, second = spans
    assert sc.OTEL_TOKENS_CACHE_HIT not in (first.attributes or {})
    assert second.attributes[sc.OTEL_TOKENS_CACHE_HIT] is True
    assert second.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] == 0  # nothing billed
    assert second.attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
    (event,) = saved(second)
    assert event[sc.OTEL_TOKENS_GUARD_SAVED_REASON] == sc.SAVED_CACHED
    assert event[sc.OTEL_TOKENS_GUARD_SAVED_TOKENS] == fake_provider.reported[0].tokens.total
    assert event[sc.OTEL_TOKENS_GUARD_BUDGET] == "cached-daily"


# --- openai ------------------------------------------------------------------------------------------
def test_openai_chat_repeat_is_answered_from_the_cache_as_a_chat_completion(
    cache_on: Callable[..., Guard], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter,
):  # fmt: skip
    cache_on()
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    with otel_tokens.attribute(agent="cached"):
        first = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=30)
        second = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=30)
    assert len(fake_provider.requests) == 1
    assert type(second) is type(first)
    assert isinstance(second, openai.types.chat.ChatCompletion)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage == first.usage  # the response as the provider sent it
    assert_second_span_is_a_hit(list(span_exporter.get_finished_spans()), fake_provider)


def test_openai_stream_repeat_is_replayed_as_the_sdks_stream(
    cache_on: Callable[..., Guard], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter,
):  # fmt: skip
    cache_on()
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)

    def streamed() -> tuple[Any, str]:
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, seed=7, stream=True, stream_options={"include_usage": True}
        )
        return stream, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with otel_tokens.attribute(agent="cached"):
        _, first_text = streamed()
        stream, second_text = streamed()
    assert len(fake_provider.requests) == 1
    assert isinstance(stream, openai.Stream)
    assert second_text == first_text and first_text
    assert_second_span_is_a_hit(list(span_exporter.get_finished_spans()), fake_provider)


def test_openai_async_json_and_stream_and_responses_are_cached(
    cache_on: Callable[..., Guard], fake_provider: FakeProvider,
):  # fmt: skip
    cache_on()

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
        got = []
        with otel_tokens.attribute(agent="cached"):
            for _ in range(2):
                got.append(
                    await client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0)
                )
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, temperature=0, stream=True
                )
                got.append([c async for c in stream])
                got.append(
                    await client.responses.create(model=MODEL, input="Capital of France?", temperature=0)
                )
                stream = await client.responses.create(
                    model=MODEL, input="Capital of France?", temperature=0, stream=True
                )
                got.append([e async for e in stream])
        return got

    got = asyncio.run(run())
    assert len(fake_provider.requests) == 4  # each of the four requests reached the provider once
    first, second = got[:4], got[4:]
    assert isinstance(second[0], openai.types.chat.ChatCompletion)
    assert isinstance(second[2], openai.types.responses.Response)
    assert second[2].output_text == first[2].output_text
    assert [type(c) for c in second[1]] == [type(c) for c in first[1]]
    assert [e.type for e in second[3]] == [e.type for e in first[3]]


def test_a_non_deterministic_request_is_not_cached_by_default(
    cache_on: Callable[..., Guard], fake_provider: FakeProvider,
):  # fmt: skip
    cache_on()
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    with otel_tokens.attribute(agent="cached"):
        for _ in range(2):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)  # default temperature
    assert len(fake_provider.requests) == 2


def test_calls_no_caching_budget_covers_go_to_the_provider(
    cache_on: Callable[..., Guard], fake_provider: FakeProvider,
):  # fmt: skip
    cache_on()
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    with otel_tokens.attribute(agent="someone-else"):
        for _ in range(2):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0)
    assert len(fake_provider.requests) == 2


# --- anthropic --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_repeat_is_answered_from_the_cache_sync_and_async(
    cache_on: Callable[..., Guard], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter,
    stream: bool,
):  # fmt: skip
    cache_on(deterministic_only=False)  # anthropic 2.x has no `temperature` argument
    request: dict[str, Any] = {"model": CLAUDE, "max_tokens": 30, "messages": MESSAGES}
    claude = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    aclaude = anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)

    async def async_call() -> Any:
        result = await aclaude.messages.create(**request, stream=stream)
        return [e async for e in result] if stream else result

    with otel_tokens.attribute(agent="cached"):
        first = claude.messages.create(**request, stream=stream)
        first = list(first) if stream else first
        second = asyncio.run(async_call())
        third = claude.messages.create(**request, stream=stream)
    assert len(fake_provider.requests) == 1
    if stream:
        assert isinstance(third, anthropic.Stream)
        assert [e.type for e in third] == [e.type for e in first] == [e.type for e in second]
    else:
        assert isinstance(second, anthropic.types.Message) and isinstance(third, anthropic.types.Message)
        assert second.content == first.content == third.content
    spans = span_exporter.get_finished_spans()
    assert [bool((s.attributes or {}).get(sc.OTEL_TOKENS_CACHE_HIT)) for s in spans] == [False, True, True]


# --- the store: TTL, size bound, processes -------------------------------------------------------------
def test_entries_expire_after_their_ttl(tmp_path: Path):
    now = [1000.0]
    store = SQLiteStore(tmp_path / "c.sqlite3", 1_000_000, clock=lambda: now[0])
    store.put("k", b"response", ttl_s=60)
    now[0] += 59
    assert store.get("k") == b"response"
    now[0] += 2
    assert store.get("k") is None


def test_the_size_bound_evicts_the_least_recently_used_first(tmp_path: Path):
    now = [0.0]
    store = SQLiteStore(tmp_path / "c.sqlite3", 1000, clock=lambda: now[0])
    for key in ("a", "b", "c"):
        now[0] += 1
        store.put(key, b"x" * 240, ttl_s=3600)
    now[0] += 1
    assert store.get("a") is not None  # `a` used again: `b` is now the least recently used
    now[0] += 1
    store.put("d", b"y" * 240, ttl_s=3600)
    now[0] += 1
    store.put("e", b"z" * 240, ttl_s=3600)
    assert store.total_bytes() <= 1000
    assert store.get("b") is None
    assert [store.get(k) is not None for k in ("a", "c", "d", "e")] == [True, True, True, True]
    store.put("huge", b"h" * 600, ttl_s=3600)  # larger than a quarter of the bound: never stored
    assert store.get("huge") is None and store.get("e") is not None


def test_request_keys_cover_every_argument_but_transport_and_refuse_classes():
    base = {"model": MODEL, "messages": MESSAGES, "temperature": 0}
    key = request_key("openai", "chat.completions", base)
    assert key == request_key("openai", "chat.completions", {**base, "timeout": 5})
    assert key == request_key("openai", "chat.completions", dict(reversed(list(base.items()))))
    assert key != request_key("openai", "chat.completions", {**base, "tools": [{"type": "function"}]})
    assert key != request_key("openai", "chat.completions", {**base, "max_tokens": 5})
    assert key != request_key("openai", "responses", base)
    assert request_key("openai", "chat.completions", {**base, "response_format": dict}) is None


def test_deterministic_means_temperature_zero_or_a_seed_also_through_extra_body():
    assert is_deterministic({"temperature": 0}) and is_deterministic({"seed": 3})
    assert is_deterministic({"extra_body": {"temperature": 0}})
    assert not is_deterministic({"temperature": 0.7}) and not is_deterministic({})


def test_two_processes_share_one_cache(
    cache_on: Callable[..., Guard], fake_provider: FakeProvider, tmp_path: Path
):
    guard = cache_on()
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    with otel_tokens.attribute(agent="cached"):
        first = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0)
    (tmp_path / "budgets.yaml").write_text((tmp_path / "budgets.yaml").read_text())
    script = textwrap.dedent(
        f"""
        import openai, otel_tokens
        otel_tokens.instrument(budgets={str(tmp_path / "budgets.yaml")!r})
        client = openai.OpenAI(base_url={fake_provider.openai_base_url!r}, api_key="k", max_retries=0)
        with otel_tokens.attribute(agent="cached"):
            reply = client.chat.completions.create(model={MODEL!r}, messages={MESSAGES!r}, temperature=0)
        print(type(reply).__name__, reply.choices[0].message.content)
        """
    )
    env = {"OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ChatCompletion {first.choices[0].message.content}"
    assert len(fake_provider.requests) == 1  # the second process was answered from the shared file
    assert guard.response_cache is not None
