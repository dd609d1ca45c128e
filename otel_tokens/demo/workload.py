"""The demo's agents: three agents on two models (streaming and not, one cached Anthropic prompt),
written as plain agent code against the real OpenAI and Anthropic SDKs. Only the clients' base URLs
point at the fake provider; everything else is what a user's agent would do.
"""

from __future__ import annotations

import uuid
from typing import Any

from otel_tokens.attribution import attribute
from otel_tokens.demo.fake_provider import FakeProvider

SUPPORT_MODEL = "gpt-4o-mini"
RESEARCH_MODEL = "claude-sonnet-4-6"
_CACHED_SYSTEM = "You are a careful research assistant. " * 200  # long enough to be worth caching


def run_workload(openai_client: Any, anthropic_client: Any, rounds: int = 1) -> None:
    """Three agents, two models, streaming and not, one cached Anthropic prompt per round."""
    for _ in range(rounds):
        with attribute(agent="support", task="answer-ticket", task_id=_new_id(), user="customer-42"):
            _openai_chat(openai_client, "My invoice is wrong, what do I do?")
            _openai_stream(openai_client, "Summarise the ticket in one line.", include_usage=True)
        with attribute(agent="research", task="literature-review", task_id=_new_id()):
            _anthropic_cached(anthropic_client, "List three papers on token budgets.")
            _anthropic_stream(anthropic_client, "Which one matters most?")
        with attribute(agent="codegen", task="write-code", task_id=_new_id()):
            # No include_usage: the provider sends no usage, otel-tokens estimates with tiktoken.
            _openai_stream(openai_client, "Write a function that adds two numbers.", include_usage=False)
            _anthropic_cached(anthropic_client, "Review the function for bugs.")


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _openai_chat(client: Any, prompt: str) -> None:
    client.chat.completions.create(model=SUPPORT_MODEL, messages=[{"role": "user", "content": prompt}])


def _openai_stream(client: Any, prompt: str, *, include_usage: bool) -> None:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.chat.completions.create(
        model=SUPPORT_MODEL, messages=[{"role": "user", "content": prompt}], stream=True, **extra
    )
    for _ in stream:
        pass


def _anthropic_cached(client: Any, prompt: str) -> None:
    client.messages.create(
        model=RESEARCH_MODEL,
        max_tokens=256,
        system=[{"type": "text", "text": _CACHED_SYSTEM, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": prompt}],
    )


def _anthropic_stream(client: Any, prompt: str) -> None:
    with client.messages.stream(
        model=RESEARCH_MODEL, max_tokens=256, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        for _ in stream.text_stream:
            pass


def make_clients(fake: FakeProvider) -> tuple[Any, Any]:
    """Real SDK clients pointed at the fake provider (the SDKs need some key; any string will do)."""
    import anthropic
    import openai

    return (
        openai.OpenAI(base_url=fake.openai_base_url, api_key="demo", max_retries=0),
        anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0),
    )
