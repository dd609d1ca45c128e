"""The in-process budget guard, driven through the real openai and anthropic SDKs against the fake
provider, which counts what reaches it.

What a user checks: a blocked call never leaves the process and says why, with the numbers; 50
concurrent calls against a budget that admits 10 send 10; a downgraded call is sent (and priced)
as the cheaper model; a deferred call says when to come back, or waits for room; a stream holds
its reservation until it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import otel_tokens
from otel_tokens import semconv as sc
from otel_tokens.budgets.loader import BudgetFileError, load_budget_file
from otel_tokens.demo.fake_provider import FakeProvider, Fault
from otel_tokens.demo.fake_provider.openai_api import REPLY_PIECES, RESPONSE_MODELS
from otel_tokens.guard import Guard, LocalBudgetState
from otel_tokens.pricing import default_price_book
from otel_tokens.tokencount import count_message_tokens

MODEL = "gpt-4o-mini"
PROMPT = "What is the capital of the fake provider's country?"
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 20
#: What the guard reserves for one chat call of MESSAGES with MAX_TOKENS.
ESTIMATE = count_message_tokens(MESSAGES, MODEL) + MAX_TOKENS
REPLY_TOKENS = len(REPLY_PIECES)  # the fake's OpenAI reply, in output tokens


class ObservedState(LocalBudgetState):
    """The real in-process state, telling the test when a deferred call starts waiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = threading.Event()

    def wait_for_change(self, timeout: float) -> None:
        self.waiting.set()
        super().wait_for_change(timeout)


@pytest.fixture
def guard_on(tracer_provider: TracerProvider, tmp_path: Path) -> Iterator[Callable[..., Guard]]:
    """Turn the guard on with the given budgets (YAML mappings) and top-level keys."""

    def turn_on(*budgets: dict[str, Any], **top: Any) -> Guard:
        path = tmp_path / "budgets.yaml"
        path.write_text(yaml.safe_dump({"budgets": list(budgets), **top}))
        budget_file = load_budget_file(path)
        guard = Guard(budget_file, ObservedState(budget_file))
        otel_tokens.instrument(tracer_provider=tracer_provider, budgets=guard)
        return guard

    yield turn_on
    otel_tokens.uninstrument()


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
def aclient(fake_provider: FakeProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0, timeout=10)


@pytest.fixture
def claude(fake_provider: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        **{"model": MODEL, "messages": MESSAGES, "max_completion_tokens": MAX_TOKENS, **kwargs}
    )


def budget(name: str, limit: dict[str, Any], action: str = "block", **extra: Any) -> dict[str, Any]:
    return {"name": name, "limit": limit, "window": "day", "action": action, **extra}


def decisions(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == sc.OTEL_TOKENS_GUARD_DECISION_EVENT]


def next_utc_midnight() -> datetime:
    today = datetime.now(timezone.utc).date()
    return datetime(today.year, today.month, today.day, tzinfo=timezone.utc) + timedelta(days=1)


# --- block ------------------------------------------------------------------------------------
def test_blocked_call_never_reaches_the_provider_and_says_why(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    limit = ESTIMATE + 5  # room for one call's estimate, not for a second one after it
    guard_on(budget("coder-daily", {"tokens": limit}, scope={"agent": "coder"}))
    with otel_tokens.attribute(agent="coder"):
        chat(client)
        used = fake_provider.reported[0].tokens.total
        with pytest.raises(otel_tokens.BudgetExceeded) as caught:
            chat(client)
    assert len(fake_provider.requests) == 1
    err = caught.value
    assert type(err) is otel_tokens.BudgetExceeded
    assert (err.budget, err.scope, err.window, err.unit) == ("coder-daily", "agent=coder", "day", "tokens")
    assert (err.used, err.reserved, err.limit, err.estimate) == (used, 0, limit, ESTIMATE)
    assert err.resets_at == next_utc_midnight()

    blocked = span_exporter.get_finished_spans()[-1]
    assert blocked.status.status_code is StatusCode.ERROR
    assert blocked.attributes[sc.ERROR_TYPE] == "BudgetExceeded"
    [event] = decisions(blocked)
    assert event[sc.OTEL_TOKENS_GUARD_ACTION] == "block" and event[sc.OTEL_TOKENS_GUARD_OUTCOME] == "blocked"
    assert event[sc.OTEL_TOKENS_GUARD_BUDGET] == "coder-daily"
    assert (event[sc.OTEL_TOKENS_GUARD_USED], event[sc.OTEL_TOKENS_GUARD_LIMIT]) == (used, limit)
    assert (event[sc.OTEL_TOKENS_GUARD_RESERVED], event[sc.OTEL_TOKENS_GUARD_ESTIMATE]) == (0, ESTIMATE)


def test_budgets_of_other_scopes_do_not_apply(guard_on: Callable[..., Guard], client: openai.OpenAI):
    guard_on(budget("coder-daily", {"tokens": 1}, scope={"agent": "coder"}))
    with otel_tokens.attribute(agent="writer"):
        assert chat(client).choices[0].message.content


def test_anthropic_call_blocked_before_sending(
    guard_on: Callable[..., Guard], claude: anthropic.Anthropic, fake_provider: FakeProvider
):
    guard_on(budget("claude", {"tokens": 10}, scope={"provider": "anthropic"}))
    with pytest.raises(otel_tokens.BudgetExceeded) as caught:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES)
    assert fake_provider.requests == []
    assert caught.value.estimate == count_message_tokens(MESSAGES, "claude-sonnet-4-5") + 64


def test_per_task_instance_limit_stops_one_instance_only(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    per_instance = {"tokens": ESTIMATE + 5}
    guard_on(budget("tasks", {"tokens": 10**9}, scope={"agent": "coder"}, per_task_instance=per_instance))
    with otel_tokens.attribute(agent="coder", task="fix", task_id="run-1"):
        chat(client)
        with pytest.raises(otel_tokens.BudgetExceeded) as caught:
            chat(client)
    with otel_tokens.attribute(agent="coder", task="fix", task_id="run-2"):
        chat(client)
    assert len(fake_provider.requests) == 2
    assert caught.value.scope == "task_id=run-1" and caught.value.limit == ESTIMATE + 5


# --- concurrency ------------------------------------------------------------------------------
#: Output tokens only, 7 per call, and the fake always answers 7: the budget admits exactly 10.
TEN_CALLS = budget("ten-calls", {"tokens": 10 * REPLY_TOKENS, "token_types": ["output"]})


def test_fifty_threads_against_a_budget_of_ten_send_ten(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    guard_on(TEN_CALLS)
    start = threading.Barrier(50)

    def one_call(_: int) -> str:
        start.wait()
        try:
            chat(client, max_completion_tokens=REPLY_TOKENS)
        except otel_tokens.BudgetExceeded:
            return "blocked"
        return "sent"

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(one_call, range(50)))
    assert (outcomes.count("sent"), outcomes.count("blocked")) == (10, 40)
    assert len(fake_provider.requests) == 10
    assert fake_provider.reported_totals().output == 10 * REPLY_TOKENS


def test_fifty_asyncio_tasks_against_a_budget_of_ten_send_ten(
    guard_on: Callable[..., Guard], aclient: openai.AsyncOpenAI, fake_provider: FakeProvider
):
    guard_on(TEN_CALLS)

    async def one_call() -> None:
        await aclient.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_completion_tokens=REPLY_TOKENS
        )

    async def main() -> list[Any]:
        return await asyncio.gather(*(one_call() for _ in range(50)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert sum(o is None for o in outcomes) == 10
    assert sum(isinstance(o, otel_tokens.BudgetExceeded) for o in outcomes) == 40
    assert len(fake_provider.requests) == 10


def test_concurrent_anthropic_calls_never_pass_a_total_token_cap(
    guard_on: Callable[..., Guard], claude: anthropic.Anthropic, fake_provider: FakeProvider
):
    """Estimates above actual use (tokenizer count + max_tokens): the overshoot bound is 0."""
    estimate = count_message_tokens(MESSAGES, "claude-haiku-4-5") + 8
    limit = 10 * estimate
    guard_on(budget("claude-total", {"tokens": limit}))
    start = threading.Barrier(30)

    def one_call(_: int) -> bool:
        start.wait()
        try:
            claude.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MESSAGES)
        except otel_tokens.BudgetExceeded:
            return False
        return True

    with ThreadPoolExecutor(max_workers=30) as pool:
        sent = sum(pool.map(one_call, range(30)))
    assert sent == len(fake_provider.requests) >= 10
    assert fake_provider.reported_totals().total <= limit


# --- downgrade --------------------------------------------------------------------------------
def test_downgraded_call_is_sent_and_priced_as_the_cheaper_model(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    pricey = budget("gpt-4o-usd", {"usd": 0.000001}, "downgrade", scope={"model": "gpt-4o"})
    guard_on({**pricey, "downgrade_to": "gpt-4o-mini"})
    reply = chat(client, model="gpt-4o")
    assert reply.model == RESPONSE_MODELS["gpt-4o-mini"]
    assert [r.body["model"] for r in fake_provider.requests] == ["gpt-4o-mini"]
    [span] = span_exporter.get_finished_spans()
    assert span.name == "chat gpt-4o-mini"
    assert span.attributes[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert span.attributes[sc.OTEL_TOKENS_GUARD_DOWNGRADED_FROM] == "gpt-4o"
    tokens = fake_provider.reported[0].tokens
    expected = default_price_book().cost_usd("openai", RESPONSE_MODELS["gpt-4o-mini"], tokens)
    assert span.attributes[sc.OTEL_TOKENS_COST_USD] == pytest.approx(expected)
    [event] = decisions(span)
    assert (
        event[sc.OTEL_TOKENS_GUARD_OUTCOME] == "downgraded"
        and event[sc.OTEL_TOKENS_GUARD_MODEL] == "gpt-4o-mini"
    )


@pytest.mark.parametrize("helper", ["sync", "async"])
def test_tiers_downgrade_anthropic_stream_helper(
    guard_on: Callable[..., Guard], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter,
    helper: str,
):  # fmt: skip
    """`tiers` names the cheaper model of the same provider and wins over `downgrade_to`."""
    tiers = {"claude-sonnet-4-5": "claude-haiku-4-5"}
    claude_budget = budget("claude", {"tokens": 1}, "downgrade", downgrade_to="gpt-4o-mini")
    guard_on({**claude_budget, "scope": {"provider": "anthropic"}}, tiers=tiers)
    request: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": MESSAGES}
    if helper == "sync":
        sdk = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
        with sdk.messages.stream(**request) as stream:
            message = stream.get_final_message()
    else:

        async def run() -> Any:
            sdk = anthropic.AsyncAnthropic(
                base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0
            )
            async with sdk.messages.stream(**request) as stream:
                return await stream.get_final_message()

        message = asyncio.run(run())
    assert message.model == "claude-haiku-4-5"
    assert [r.body["model"] for r in fake_provider.requests] == ["claude-haiku-4-5"]
    [span] = span_exporter.get_finished_spans()
    assert span.attributes[sc.OTEL_TOKENS_GUARD_DOWNGRADED_FROM] == "claude-sonnet-4-5"
    assert span.attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == fake_provider.reported[0].tokens.output
    outcomes = [e[sc.OTEL_TOKENS_GUARD_OUTCOME] for e in decisions(span)]
    assert outcomes == ["downgraded", "over_limit_after_downgrade"]  # still over: sent cheaper, not stopped


# --- defer ------------------------------------------------------------------------------------
def test_deferred_call_says_when_the_window_frees(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    guard_on(budget("daily", {"tokens": ESTIMATE + 5}, "defer"))
    chat(client)
    before = datetime.now(timezone.utc)
    with pytest.raises(otel_tokens.BudgetDeferred) as caught:
        chat(client)
    after = datetime.now(timezone.utc)
    midnight = next_utc_midnight()
    assert (
        (midnight - after).total_seconds() <= caught.value.retry_after <= (midnight - before).total_seconds()
    )
    assert caught.value.resets_at == midnight
    assert isinstance(caught.value, otel_tokens.BudgetExceeded)
    assert len(fake_provider.requests) == 1


def test_deferred_call_waits_for_room_then_proceeds(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    """A stream in flight holds its reservation; the deferred call goes once it has settled."""
    limit = 2 * 15 - 1  # room for one 15-token reservation, or one settled 7-token reply and one more
    guard = guard_on(budget("out", {"tokens": limit, "token_types": ["output"]}, "defer", defer_wait="30s"))
    state = guard.state
    assert isinstance(state, ObservedState)
    stream = chat(client, max_completion_tokens=15, stream=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(chat, client, max_completion_tokens=15)
        assert state.waiting.wait(timeout=10)
        assert len(fake_provider.requests) == 1
        list(stream)  # the first call ends: 7 tokens used, its 15 reserved released
        assert second.result(timeout=10).choices
    assert len(fake_provider.requests) == 2
    waited = span_exporter.get_finished_spans()[-1]
    assert [e[sc.OTEL_TOKENS_GUARD_OUTCOME] for e in decisions(waited)] == ["waited"]


def test_deferred_call_raises_after_its_wait_bound(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    guard = guard_on(budget("daily", {"tokens": ESTIMATE + 5}, "defer", defer_wait="200ms"))
    chat(client)
    with pytest.raises(otel_tokens.BudgetDeferred):
        chat(client)
    assert isinstance(guard.state, ObservedState) and guard.state.waiting.is_set()
    assert len(fake_provider.requests) == 1


def test_async_deferred_call_waits_without_blocking_the_loop(
    guard_on: Callable[..., Guard], aclient: openai.AsyncOpenAI, fake_provider: FakeProvider
):
    limit = 2 * 15 - 1
    guard_on(budget("out", {"tokens": limit, "token_types": ["output"]}, "defer", defer_wait="30s"))

    async def main() -> Any:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_completion_tokens=15, stream=True
        )
        second = asyncio.ensure_future(
            aclient.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=15)
        )
        await asyncio.sleep(0)  # the second call runs up to its first wait: it has been deferred
        assert not second.done() and len(fake_provider.requests) == 1
        async for _ in stream:  # the loop is free: the first call streams to its end
            pass
        return await asyncio.wait_for(second, timeout=10)

    assert asyncio.run(main()).choices
    assert len(fake_provider.requests) == 2


# --- warn -------------------------------------------------------------------------------------
def test_warn_records_an_event_and_goes_on(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    guard_on(budget("soft", {"tokens": 1}, "warn"))
    chat(client)
    assert len(fake_provider.requests) == 1
    [span] = span_exporter.get_finished_spans()
    [event] = decisions(span)
    assert (event[sc.OTEL_TOKENS_GUARD_ACTION], event[sc.OTEL_TOKENS_GUARD_OUTCOME]) == ("warn", "warned")
    assert (event[sc.OTEL_TOKENS_GUARD_LIMIT], event[sc.OTEL_TOKENS_GUARD_ESTIMATE]) == (1, ESTIMATE)


# --- streams: reserved while open, reconciled however they end ---------------------------------
def test_openai_stream_holds_its_reservation_until_it_ends(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    guard = guard_on(budget("b", {"tokens": 2 * ESTIMATE - 1}))
    stream = chat(client, stream=True, stream_options={"include_usage": True})
    assert guard.state.standing("b").reserved == ESTIMATE  # type: ignore[attr-defined]
    with pytest.raises(otel_tokens.BudgetExceeded):
        chat(client)  # the open stream's estimate leaves no room for a second
    list(stream)
    used = fake_provider.reported[0].tokens.total
    assert guard.state.standing("b") == type(guard.state.standing("b"))(used=used, reserved=0)  # type: ignore[attr-defined]
    chat(client)  # settled at its real use: room again
    assert len(fake_provider.requests) == 2


@pytest.mark.parametrize("ending", ["closed early", "connection broken"])
def test_openai_stream_that_ends_badly_releases_its_reservation(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider, ending: str
):
    guard = guard_on(budget("b", {"tokens": 10 * ESTIMATE}))
    if ending == "connection broken":
        fake_provider.inject(Fault(break_after_events=2))
    stream = chat(client, stream=True)
    if ending == "closed early":
        next(iter(stream))
        stream.close()
    else:
        list(stream)  # the SDK ends the iteration quietly; our span ends as an error
    standing = guard.state.standing("b")  # type: ignore[attr-defined]
    assert standing.reserved == 0
    assert 0 < standing.used < ESTIMATE  # what was sent and received, counted by the tokenizer


def test_failed_call_releases_its_reservation(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    guard = guard_on(budget("b", {"tokens": 10 * ESTIMATE}))
    fake_provider.inject(Fault(status=500))
    with pytest.raises(openai.InternalServerError):
        chat(client)
    assert guard.state.standing("b") == type(guard.state.standing("b"))(used=0, reserved=0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_anthropic_stream_reserved_then_reconciled(
    guard_on: Callable[..., Guard], fake_provider: FakeProvider, mode: str
):
    estimate = count_message_tokens(MESSAGES, "claude-haiku-4-5") + 64
    guard = guard_on(budget("claude", {"tokens": 10 * estimate}))
    state: Any = guard.state
    request: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": MESSAGES,
        "stream": True,
    }
    if mode == "sync":
        sdk = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
        stream = sdk.messages.create(**request)
        assert state.standing("claude").reserved == estimate
        list(stream)
    else:

        async def run() -> None:
            sdk = anthropic.AsyncAnthropic(
                base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0
            )
            stream = await sdk.messages.create(**request)
            assert state.standing("claude").reserved == estimate
            async for _ in stream:
                pass

        asyncio.run(run())
    assert state.standing("claude").reserved == 0
    assert state.standing("claude").used == fake_provider.reported[0].tokens.total


# --- turning it on --------------------------------------------------------------------------------
def test_broken_budget_file_fails_instrument_with_every_error(
    tmp_path: Path, tracer_provider: TracerProvider
):
    path = tmp_path / "budgets.yaml"
    path.write_text(
        "budgets:\n"
        "  - name: a\n    limit: {tokens: -5}\n    window: 1d\n"
        "  - name: b\n    limit: {tokens: 5}\n    window: 1d\n    action: defer\n    defer_wait: 2h\n"
        "tiers: {gpt-4o: gpt-4o}\n"
    )
    with pytest.raises(BudgetFileError) as caught:
        otel_tokens.instrument(tracer_provider=tracer_provider, budgets=path)
    try:
        messages = [str(e) for e in caught.value.errors]
        assert len(messages) == 3, messages
        assert "budgets[0].limit.tokens: must be positive" in messages[0]
        assert "defer_wait" in messages[1] and "at most 1h" in messages[1]
        assert "maps to itself" in messages[2]
        assert not otel_tokens._instrumentor.is_instrumented_by_opentelemetry
    finally:
        otel_tokens.uninstrument()


def test_budget_file_from_the_environment(
    tmp_path: Path, tracer_provider: TracerProvider, client: openai.OpenAI, fake_provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    path = tmp_path / "budgets.yaml"
    path.write_text(yaml.safe_dump({"budgets": [budget("none-left", {"tokens": 1})]}))
    monkeypatch.setenv("OTEL_TOKENS_BUDGETS_FILE", str(path))
    otel_tokens.instrument(tracer_provider=tracer_provider)
    try:
        with pytest.raises(otel_tokens.BudgetExceeded):
            chat(client)
    finally:
        otel_tokens.uninstrument()
    assert fake_provider.requests == []


# --- every guarded endpoint -------------------------------------------------------------------------
def test_responses_and_embeddings_are_estimated_and_guarded(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    guard = guard_on(budget("b", {"tokens": 10**6}))
    state: Any = guard.state
    stream = client.responses.create(
        model=MODEL, input=PROMPT, instructions="Be brief.", max_output_tokens=50, stream=True
    )
    expected = count_message_tokens(PROMPT, MODEL, system="Be brief.") + 50
    assert state.standing("b").reserved == expected
    list(stream)
    client.embeddings.create(model="text-embedding-3-small", input=["one text", "another"])
    assert state.standing("b").reserved == 0
    assert state.standing("b").used == fake_provider.reported_totals().total


def test_embeddings_blocked_before_sending(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider
):
    guard_on(budget("embed", {"tokens": 1}, scope={"model": "text-embedding-3-small"}))
    with pytest.raises(otel_tokens.BudgetExceeded) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="a text to embed")
    assert fake_provider.requests == [] and caught.value.estimate > 0


def test_async_anthropic_call_blocked_before_sending(
    guard_on: Callable[..., Guard], fake_provider: FakeProvider
):
    guard_on(budget("claude", {"tokens": 10}, scope={"provider": "anthropic"}))

    async def run() -> None:
        sdk = anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
        await sdk.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)

    with pytest.raises(otel_tokens.BudgetExceeded):
        asyncio.run(run())
    assert fake_provider.requests == []
