"""Attribution scopes as a user writes them: nesting, decorators, concurrency, baggage fallback."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import baggage, context

from otel_tokens import attribute, current_attribution


def test_nested_scopes_merge_and_the_inner_one_wins():
    with attribute(agent="planner", task="research", user="alice"):
        with attribute(task="search", step=2):
            inner = current_attribution()
        outer = current_attribution()
    assert (inner.agent, inner.task, inner.user, inner.step) == ("planner", "search", "alice", "2")
    assert (outer.agent, outer.task, outer.step) == ("planner", "research", None)
    assert current_attribution().agent is None


def test_decorator_on_sync_and_async_functions():
    @attribute(agent="coder", task="write-code")
    def sync_work() -> tuple[str | None, str | None]:
        a = current_attribution()
        return a.agent, a.task

    @attribute(agent="reviewer")
    async def async_work() -> str | None:
        await asyncio.sleep(0)
        return current_attribution().agent

    assert sync_work() == ("coder", "write-code")
    assert asyncio.run(async_work()) == "reviewer"
    assert current_attribution().agent is None


def test_concurrent_asyncio_tasks_keep_their_own_scopes():
    @attribute(task="shared")
    async def agent(name: str) -> tuple[str | None, str | None]:
        with attribute(agent=name):
            await asyncio.sleep(0.01)
            a = current_attribution()
            return a.agent, a.task

    async def main() -> list[tuple[str | None, str | None]]:
        return list(await asyncio.gather(*(agent(f"a{i}") for i in range(20))))

    assert asyncio.run(main()) == [(f"a{i}", "shared") for i in range(20)]


def test_scope_is_mirrored_into_baggage_for_propagation():
    with attribute(agent="planner", task="research"):
        assert baggage.get_baggage("otel_tokens.agent") == "planner"
        assert baggage.get_baggage("otel_tokens.task") == "research"
    assert baggage.get_baggage("otel_tokens.agent") is None


def test_incoming_baggage_fills_what_the_context_lacks():
    ctx = baggage.set_baggage("otel_tokens.user", "bob", baggage.set_baggage("otel_tokens.agent", "remote"))
    token = context.attach(ctx)
    try:
        with attribute(agent="local"):
            a = current_attribution()
    finally:
        context.detach(token)
    assert (a.agent, a.user) == ("local", "bob")


def test_unknown_field_is_a_clear_error():
    with pytest.raises(TypeError, match="agnet"):
        attribute(agnet="typo")  # type: ignore[call-arg]


def test_values_are_bounded():
    with attribute(agent="x" * 10_000):
        assert len(current_attribution().agent or "") == 256
