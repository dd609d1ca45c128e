"""Runaway detection in the agent, through the real SDKs and the fake provider: each detector fires
on its pattern (and, under `on_runaway: stop`, stops that task with `TaskStopped` while another task
goes on) and stays silent on a healthy workload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_tokens
from otel_tokens import semconv as sc
from otel_tokens.budgets.spec import RunawaySettings
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.guard import Guard
from otel_tokens.guard.runaway import RunawayDetector
from otel_tokens.record import TokenCounts, UsageRecord
from tests.guard_helpers import budget, events, guard_on

__all__ = ["guard_on"]

MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
AGENT = {"agent": "looper"}


@pytest.fixture
def client(fake_provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)


def ask(client: openai.OpenAI, text: str) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=20
    )


def findings(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    return [f for span in spans for f in events(span, sc.OTEL_TOKENS_GUARD_RUNAWAY_EVENT)]


def watch(action: str = "stop", **extra: Any) -> dict[str, Any]:
    return budget("looper-daily", {"tokens": 10_000_000}, scope=AGENT, on_runaway=action, **extra)


# --- a task instance past runaway_factor x its limit --------------------------------------------
def test_task_instance_is_stopped_before_it_passes_runaway_factor_x_its_limit(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    instance = {"tokens": 100, "runaway_factor": 2}
    guard_on(watch(per_task_instance=instance))
    sent = 0
    with (
        otel_tokens.attribute(**AGENT, task="fix", task_id="loop-1"),
        pytest.raises(otel_tokens.TaskStopped) as caught,
    ):
        for i in range(50):
            ask(client, f"attempt {i}: fix the failing test")
            sent += 1
    assert 1 < sent < 50
    spent = fake_provider.reported_totals().total
    assert spent <= 2 * 100  # stopped before the collector's RunawayTask would fire
    assert caught.value.task_id == "loop-1" and caught.value.reason == sc.RUNAWAY_INSTANCE_OVER_LIMIT
    assert caught.value.budget == "looper-daily"
    with otel_tokens.attribute(**AGENT, task="fix", task_id="loop-1"), pytest.raises(otel_tokens.TaskStopped):
        ask(client, "one more")  # stays stopped
    with otel_tokens.attribute(**AGENT, task="fix", task_id="other-1"):
        ask(client, "another instance of the same task goes on")
    assert len(fake_provider.requests) == sent + 1
    stopped = [
        f for f in findings(span_exporter.get_finished_spans()) if f[sc.OTEL_TOKENS_GUARD_RUNAWAY_STOPPED]
    ]
    assert [f[sc.OTEL_TOKENS_GUARD_RUNAWAY_KIND] for f in stopped] == [
        sc.RUNAWAY_INSTANCE_OVER_LIMIT,
        sc.RUNAWAY_STOPPED,
    ]


def test_under_warn_a_runaway_instance_is_reported_and_goes_on(
    guard_on: Callable[..., Guard], client: openai.OpenAI, span_exporter: InMemorySpanExporter,
):  # fmt: skip
    guard_on(watch("warn", per_task_instance={"tokens": 100, "runaway_factor": 2}))
    with otel_tokens.attribute(**AGENT, task_id="loop-2"):
        for i in range(30):
            ask(client, f"attempt {i}")
    found = findings(span_exporter.get_finished_spans())
    assert found and {f[sc.OTEL_TOKENS_GUARD_RUNAWAY_KIND] for f in found} == {sc.RUNAWAY_INSTANCE_OVER_LIMIT}
    assert not any(f[sc.OTEL_TOKENS_GUARD_RUNAWAY_STOPPED] for f in found)


# --- the same request repeated -----------------------------------------------------------------
def test_the_same_request_repeated_n_times_stops_the_session(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    guard_on(watch(), guard={"runaway": {"repeated_requests": 3}})
    with otel_tokens.attribute(**AGENT, session="s-1"):
        ask(client, "retry the deploy")
        ask(client, "retry the deploy")
        with pytest.raises(otel_tokens.TaskStopped) as caught:
            ask(client, "retry the deploy")
    assert caught.value.key == "session=s-1" and caught.value.reason == sc.RUNAWAY_REPEATED_REQUEST
    assert len(fake_provider.requests) == 2
    with otel_tokens.attribute(**AGENT, session="s-2"):
        ask(client, "retry the deploy")  # another session with the same request goes on
    (finding,) = findings(span_exporter.get_finished_spans())
    assert finding[sc.OTEL_TOKENS_GUARD_RUNAWAY_VALUE] == 3


# --- input rising call after call ----------------------------------------------------------------
def test_input_rising_over_k_calls_is_reported_and_stops_the_next_call(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    guard_on(watch(), guard={"runaway": {"rising_input_calls": 4}})
    history: list[dict[str, str]] = []
    with otel_tokens.attribute(**AGENT, session="grow"):
        for i in range(4):
            history.append({"role": "user", "content": f"step {i}: " + "more context " * (10 * (i + 1))})
            client.chat.completions.create(model=MODEL, messages=history, max_tokens=20)
        with pytest.raises(otel_tokens.TaskStopped) as caught:
            client.chat.completions.create(model=MODEL, messages=history, max_tokens=20)
    assert caught.value.reason == sc.RUNAWAY_RISING_INPUT
    spans = span_exporter.get_finished_spans()
    assert findings(list(spans[:3])) == []  # silent until the 4th rising call
    assert events(spans[3], sc.OTEL_TOKENS_GUARD_RUNAWAY_EVENT)[0][sc.OTEL_TOKENS_GUARD_RUNAWAY_KIND] == (
        sc.RUNAWAY_RISING_INPUT
    )
    assert len(fake_provider.requests) == 4


# --- the prompt cache expired between calls -----------------------------------------------------
def cached_request(text: str) -> dict[str, Any]:
    system = [
        {
            "type": "text",
            "text": "Repository map: " + "module " * 2000,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    return {
        "model": CLAUDE,
        "max_tokens": 20,
        "system": system,
        "messages": [{"role": "user", "content": text}],
    }


def test_a_big_prompt_with_no_cache_read_right_after_cached_calls_is_a_cache_expiry(
    guard_on: Callable[..., Guard], fake_provider: FakeProvider, span_exporter: InMemorySpanExporter,
):  # fmt: skip
    guard_on(watch("warn"), guard={"runaway": {"cache_expiry_min_input_tokens": 1000}})
    claude = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    with otel_tokens.attribute(**AGENT, session="slow-loop"):
        claude.messages.create(**cached_request("step 1"))  # writes the cache
        claude.messages.create(**cached_request("step 2"))  # reads it
        with FakeProvider() as restarted:  # the provider's cache has expired: a cold cache
            cold = anthropic.Anthropic(base_url=restarted.anthropic_base_url, api_key="k", max_retries=0)
            cold.messages.create(**cached_request("step 3"))
            assert restarted.reported[0].tokens.cache_read == 0
    spans = span_exporter.get_finished_spans()
    assert fake_provider.reported[1].tokens.cache_read > 0
    assert findings(list(spans[:2])) == []
    (finding,) = events(spans[2], sc.OTEL_TOKENS_GUARD_RUNAWAY_EVENT)
    assert finding[sc.OTEL_TOKENS_GUARD_RUNAWAY_KIND] == sc.RUNAWAY_CACHE_EXPIRED
    assert finding[sc.OTEL_TOKENS_GUARD_RUNAWAY_KEY] == "session=slow-loop"


# --- a healthy workload ----------------------------------------------------------------------------
def test_a_healthy_workload_fires_nothing(
    guard_on: Callable[..., Guard], client: openai.OpenAI, fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
):  # fmt: skip
    guard_on(watch(per_task_instance={"tokens": 100_000, "runaway_factor": 3}))
    claude = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    with otel_tokens.attribute(**AGENT, session="healthy", task_id="t-1"):
        for i in range(12):  # distinct requests, sizes up and down, the prompt cache read every time
            ask(client, f"question {i}: " + "detail " * (5 + (i % 3) * 7))
            claude.messages.create(**cached_request(f"step {i}"))
    assert findings(span_exporter.get_finished_spans()) == []
    assert len(fake_provider.requests) == 24


def test_detector_memory_is_bounded_least_recently_used_first():
    detector = RunawayDetector(RunawaySettings(repeated_requests=2), max_keys=3)
    for key in ("session=a", "session=b", "session=c"):
        detector.before([key], "same")
    detector.before(["session=a"], "other")  # `a` used again: `b` is now the oldest
    detector.before(["session=d"], "same")
    assert len(detector) == 3
    assert detector.before(["session=b"], "same") == []  # forgotten: counts from one again
    record = UsageRecord(provider="openai", request_model=MODEL, tokens=TokenCounts(input=10))
    assert detector.after(["session=a"], record) == []
