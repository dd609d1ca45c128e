"""The read-only budget source for a fleet of collectors: a real Prometheus, scraping a real
collector and evaluating the rendered rules, is what a guard in another process reads — every
collector's use (`sum by (budget) (llm_budget_used)`) and the alerts that act that are firing."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import otel_tokens
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.budgets.render_prometheus import render_rules
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.guard import Guard, PrometheusBudgetState
from otel_tokens.record import Attribution, TokenCounts, UsageRecord
from otel_tokens.tokencount import count_message_tokens
from tests.services import poll, run_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the ticket."}]
ESTIMATE = count_message_tokens(MESSAGES, MODEL) + 20
BUDGETS = textwrap.dedent(
    """
    version: 1
    alert_for: {budget_warning: 0s, budget_exceeded: 0s, runaway_task: 0s, token_spike: 0s,
                budget_forecast: 0s, context_growth: 0s, prompt_cache_miss: 0s}
    guard: {collector: {sync_interval_seconds: 0.05}}
    budgets:
      - name: support-daily
        scope: {agent: support}
        limit: {tokens: 1000}
        window: day
        action: block
        per_task_instance: {tokens: 100000, runaway_factor: 3}
        spike: {enabled: false}
        forecast: {enabled: false}
      - name: research-daily
        scope: {agent: research}
        limit: {tokens: 1000000}
        window: day
        action: warn
        per_task_instance: {tokens: 100, runaway_factor: 3}
        spike: {enabled: false}
        forecast: {enabled: false}
      - name: batch-daily
        scope: {agent: batch}
        limit: {tokens: 1000}
        window: day
        action: warn
        pause_noncritical: true
        spike: {enabled: false}
        forecast: {enabled: false}
    """
)


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0, timeout=10) as c:
        yield c


def used_elsewhere(agent: str, tokens: int, task_id: str | None = None) -> UsageRecord:
    """A call another agent process made, as its span reached the collector."""
    attribution = Attribution(agent=agent, task="t", task_id=task_id)
    return UsageRecord("openai", MODEL, tokens=TokenCounts(input=tokens), attribution=attribution)


def test_a_guard_reads_the_fleets_use_and_firing_alerts_from_prometheus(
    client: openai.OpenAI, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    spec = load_budget_file(budgets)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(spec, "budgets.yaml", interval="200ms"))
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    with (
        CollectorService(config) as collector,
        run_prometheus(tmp_path, [f"127.0.0.1:{collector.metrics_port}"], [rules]) as prom,
    ):
        # other processes used 1000 - ESTIMATE + 1 of support's 1000, and one research task looped
        collector.pipeline.ingest_records(
            [
                used_elsewhere("support", 1000 - ESTIMATE + 1),
                used_elsewhere("research", 301, task_id="loop-1"),
                used_elsewhere("batch", 1000),  # exceeded: its alert pauses non-critical agents
            ]
        )
        state = PrometheusBudgetState(spec, prom.url)
        guard = Guard(spec, state)
        otel_tokens.instrument(budgets=guard)
        try:
            poll(lambda: state.standing("support-daily").used, lambda used: used > 0, what="the fleet's use")
            with otel_tokens.attribute(agent="support"), pytest.raises(otel_tokens.BudgetExceeded) as caught:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=20)
            assert caught.value.used == 1000 - ESTIMATE + 1
            poll(
                lambda: len(state.stop_orders()),
                lambda n: n == 2,
                what="the firing RunawayTask and BudgetExceeded",
            )
            with otel_tokens.attribute(agent="batch"), pytest.raises(otel_tokens.TaskStopped) as paused:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=20)
            loop = otel_tokens.attribute(agent="research", task="t", task_id="loop-1")
            with loop, pytest.raises(otel_tokens.TaskStopped) as stopped:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=20)
            with otel_tokens.attribute(agent="research", task="t", task_id="loop-2"):
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=20)
        finally:
            otel_tokens.uninstrument()
            guard.close()
    assert (stopped.value.kind, stopped.value.task_id) == ("kill_agent_task", "loop-1")
    # the rendered `action: pause_all_noncritical_agents` is read as a pause
    assert (paused.value.kind, paused.value.agent, paused.value.budget) == (
        "pause_noncritical", "batch", "batch-daily",
    )  # fmt: skip
    assert len(fake_provider.requests) == 1  # only loop-2's call left the process
