"""`action: compress` through the real SDKs: a long conversation reaches the fake provider shrunk
under its target, with the system prompt and the last turns as the application wrote them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_tokens import semconv as sc
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.guard import Guard
from otel_tokens.tokencount import count_message_tokens
from tests.guard_helpers import budget, events, guard_on, tool_pairs

__all__ = ["guard_on"]  # the fixture, imported for pytest

MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
SYSTEM = "You are the release agent. Never push to main without a green build."
MAX_TOKENS = 50


def long_conversation(turns: int = 12) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for i in range(turns):
        messages.append(
            {"role": "user", "content": f"step {i}: " + " ".join(f"detail{i}_{j}" for j in range(60))}
        )
        messages.append(
            {"role": "assistant", "content": f"done {i}: " + " ".join(f"note{i}_{j}" for j in range(60))}
        )
        messages.append({"role": "user", "content": "ok"})
        messages.append({"role": "assistant", "content": "Sure!"})
    messages.append({"role": "user", "content": "Ship the release now?"})
    return messages


def input_tokens(messages: Any, system: Any = None) -> int:
    return count_message_tokens(messages, MODEL, system=system)


def compress_budget(limit: int, **extra: Any) -> dict[str, Any]:
    return budget("release-daily", {"tokens": limit}, "compress", scope={"agent": "release"}, **extra)


@pytest.fixture
def client(fake_provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)


def sent_messages(fake_provider: FakeProvider) -> Any:
    return fake_provider.requests[-1].body


def test_chat_call_at_90_percent_is_compressed_aggressively_before_it_is_sent(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    import otel_tokens

    messages = [{"role": "system", "content": SYSTEM}, *long_conversation()]
    before = input_tokens(messages)
    guard_on(compress_budget(int((before + MAX_TOKENS) / 0.95)))  # this call alone is at 95%
    with otel_tokens.attribute(agent="release"):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS)
    sent = sent_messages(fake_provider)["messages"]
    target = int(before * 0.3)  # the default aggressive target_ratio
    assert input_tokens(sent) <= target
    assert sent[0] == {"role": "system", "content": SYSTEM}
    assert sent[-2:] == messages[-2:]  # aggressive keeps the last 2 turns verbatim
    assert len(messages) == 1 + 12 * 4 + 1  # the application's list is untouched
    (span,) = span_exporter.get_finished_spans()
    (decision,) = events(span, sc.OTEL_TOKENS_GUARD_DECISION_EVENT)
    assert decision[sc.OTEL_TOKENS_GUARD_ACTION] == "compress"
    assert decision[sc.OTEL_TOKENS_GUARD_OUTCOME] == "compressed"
    assert decision[sc.OTEL_TOKENS_GUARD_COMPRESS_LEVEL] == "aggressive"
    assert decision[sc.OTEL_TOKENS_GUARD_COMPRESS_TOKENS_BEFORE] == before
    assert decision[sc.OTEL_TOKENS_GUARD_COMPRESS_TOKENS_AFTER] == input_tokens(sent)
    (saved,) = events(span, sc.OTEL_TOKENS_GUARD_SAVED_EVENT)
    assert saved[sc.OTEL_TOKENS_GUARD_SAVED_REASON] == sc.SAVED_COMPRESSED
    assert saved[sc.OTEL_TOKENS_GUARD_SAVED_TOKENS] == before - input_tokens(sent)
    # the provider billed the shrunk prompt, and the span says what it billed
    assert span.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] == fake_provider.reported[-1].tokens.input


def test_moderate_pressure_uses_the_budgets_own_targets_and_a_summarizer(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
):  # fmt: skip
    import otel_tokens

    messages = [{"role": "system", "content": SYSTEM}, *long_conversation()]
    before = input_tokens(messages)
    summarized: list[Any] = []

    def summarizer(items: list[Any]) -> str:
        summarized.extend(items)
        return f"{len(items)} earlier messages: build steps 0-11 done."

    levels = {"moderate": {"at": 0.5, "target_ratio": 0.5, "keep_last": 3},
              "aggressive": {"at": 0.99, "target_ratio": 0.1, "keep_last": 1}}  # fmt: skip
    guard_on(compress_budget(int((before + MAX_TOKENS) / 0.6), compress=levels), summarizer=summarizer)
    with otel_tokens.attribute(agent="release"):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS)
    sent = sent_messages(fake_provider)["messages"]
    assert input_tokens(sent) <= before * 0.5
    assert sent[0]["content"] == SYSTEM
    assert sent[1]["content"].endswith(f"{len(summarized)} earlier messages: build steps 0-11 done.")
    assert sent[2:] == messages[-3:]


def test_below_the_first_pressure_point_the_request_goes_as_written(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    import otel_tokens

    messages = [{"role": "system", "content": SYSTEM}, *long_conversation()]
    guard_on(compress_budget((input_tokens(messages) + MAX_TOKENS) * 2))  # at 50%
    with otel_tokens.attribute(agent="release"):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS)
    assert sent_messages(fake_provider)["messages"] == messages
    assert not span_exporter.get_finished_spans()[0].events


def test_responses_input_is_compressed_and_instructions_kept(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
):  # fmt: skip
    import otel_tokens

    items = long_conversation()
    before = input_tokens(items, SYSTEM)
    guard_on(compress_budget(int((before + MAX_TOKENS) / 0.95)))
    with (
        otel_tokens.attribute(agent="release"),
        client.responses.stream(
            model=MODEL, input=items, instructions=SYSTEM, max_output_tokens=MAX_TOKENS
        ) as stream,
    ):
        stream.get_final_response()
    body = sent_messages(fake_provider)
    assert body["instructions"] == SYSTEM
    assert input_tokens(body["input"], SYSTEM) <= before * 0.3
    assert body["input"][-2:] == items[-2:]


def anthropic_conversation() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for i in range(8):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"check {i} " + "x " * 150}]})
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"toolu_{i}", "name": "run", "input": {"cmd": f"check {i}"}}]})  # fmt: skip  # noqa: E501
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"output {i} " + "y " * 150}]})  # fmt: skip  # noqa: E501
        messages.append({"role": "assistant", "content": f"check {i} passed"})
    messages.append({"role": "user", "content": "Summarise the checks."})
    return messages


@pytest.mark.parametrize("how", ["create", "stream", "async"])
def test_anthropic_messages_are_compressed_with_tool_pairs_intact_and_system_untouched(
    guard_on: Callable[..., Guard], fake_provider: FakeProvider, how: str,
):  # fmt: skip
    import asyncio

    import otel_tokens

    messages = anthropic_conversation()
    before = count_message_tokens(messages, CLAUDE, system=SYSTEM)
    guard_on(compress_budget(int((before + MAX_TOKENS) / 0.95)))
    request = {"model": CLAUDE, "messages": messages, "system": SYSTEM, "max_tokens": MAX_TOKENS}
    with otel_tokens.attribute(agent="release"):
        if how == "create":
            anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k").messages.create(
                **request
            )
        elif how == "stream":
            claude = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k")
            with claude.messages.stream(**request) as stream:
                stream.get_final_message()
        else:
            aclaude = anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="k")
            asyncio.run(aclaude.messages.create(**request))
    body = sent_messages(fake_provider)
    sent = body["messages"]
    assert body["system"] == SYSTEM
    assert count_message_tokens(sent, CLAUDE, system=SYSTEM) <= before * 0.3
    assert sent[-2:] == messages[-2:]
    assert sent[0]["role"] == "user"
    uses, results = tool_pairs(sent)
    assert uses == results  # every tool call kept with its result, in order
    assert fake_provider.reported[-1].tokens.input < before * 0.5  # what the provider billed shrank too
