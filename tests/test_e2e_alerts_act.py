"""Alerts that act, end to end: a looping task makes a real Prometheus fire `RunawayTask`, a real
Alertmanager posts it to the collector's webhook, and the loop's next call raises `TaskStopped`
while another task of the same agent goes on; an exceeded `pause_noncritical` budget pauses a
non-critical agent and spares a critical one.

  real SDK calls → guard (shared through the collector) → spans over OTLP/HTTP → collector ledger
  → real Prometheus evaluating the rendered rules → real Alertmanager with the rendered routing
  → collector /api/v1/alerts (stop orders) → guard → TaskStopped
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otel_tokens
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.budgets.render_alertmanager import AlertmanagerOverrides, alertmanager_yaml
from otel_tokens.budgets.render_prometheus import render_rules
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.guard import CollectorBudgetState, Guard
from tests.services import Webhook, poll, run_alertmanager, run_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ALERT_FOR = """
    alert_for: {budget_warning: 0s, budget_exceeded: 0s, runaway_task: 0s, token_spike: 0s,
                budget_forecast: 0s, context_growth: 0s, prompt_cache_miss: 0s}
    guard: {collector: {sync_interval_seconds: 0.05}}
    alerting:
      default_receiver: team
      receivers:
        - {name: team, webhook_configs: [{url: "http://127.0.0.1:1/unused"}]}
      routes:
        - {severity: P1, receiver: team}
        - {severity: P2, receiver: team}
"""
# `warn`: the guard lets the loop run past its per-instance limit, so only the alert can stop it.
RUNAWAY_BUDGETS = textwrap.dedent(
    """
    version: 1
    budgets:
      - name: support-daily
        scope: {agent: support}
        limit: {tokens: 1000000}
        window: 1d
        action: warn
        per_task_instance: {tokens: 100, runaway_factor: 3}
        spike: {enabled: false}
        forecast: {enabled: false}
    """
) + textwrap.dedent(ALERT_FOR)
PAUSE_BUDGETS = textwrap.dedent(
    """
    version: 1
    budgets:
      - name: all-daily
        limit: {tokens: 300}
        window: 1d
        action: warn
        pause_noncritical: true
        spike: {enabled: false}
        forecast: {enabled: false}
    """
) + textwrap.dedent(ALERT_FOR)
MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the ticket, again."}]


@contextmanager
def stack(tmp_path: Path, budgets_text: str, webhook: Webhook) -> Iterator[tuple[CollectorService, Guard]]:
    """Collector, Alertmanager (routing alerts that act to the collector), Prometheus, and a guard
    sharing the budgets through the collector, with spans exported to it."""
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(budgets_text)
    spec = load_budget_file(budgets)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(spec, "budgets.yaml", interval="200ms"))
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    with CollectorService(config) as collector:
        overrides = AlertmanagerOverrides(
            webhook_url=webhook.url, collector_url=f"http://127.0.0.1:{collector.metrics_port}",
            group_wait="0s", group_interval="1s",
        )  # fmt: skip
        with (
            run_alertmanager(tmp_path, alertmanager_yaml(spec, "test", overrides)) as am,
            run_prometheus(tmp_path, [f"127.0.0.1:{collector.metrics_port}"], [rules], am),
        ):
            provider = TracerProvider()
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{collector.http_port}/v1/traces")
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            guard = Guard(spec, CollectorBudgetState(spec, f"http://127.0.0.1:{collector.metrics_port}"))
            otel_tokens.instrument(tracer_provider=provider, budgets=guard)
            try:
                yield collector, guard
            finally:
                otel_tokens.uninstrument()
                guard.close()
                provider.shutdown()


def loop_until_stopped(
    client: openai.OpenAI, deadline_s: float = 60.0
) -> tuple[int, otel_tokens.TaskStopped]:
    """Call again and again, as a looping agent does; returns the calls sent and the stop."""
    sent, deadline = 0, time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=20)
        except otel_tokens.TaskStopped as stopped:
            return sent, stopped
        sent += 1
        time.sleep(0.02)  # an agent's think time between calls
    raise AssertionError(f"the loop was never stopped after {sent} calls")


def paged(alertname: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda alerts: any(a["labels"]["alertname"] == alertname for a in alerts)


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0, timeout=10) as c:
        yield c


def test_runaway_alert_stops_the_looping_task_and_not_its_sibling(
    client: openai.OpenAI, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    webhook = Webhook()
    with stack(tmp_path, RUNAWAY_BUDGETS, webhook):
        with otel_tokens.attribute(agent="support", task="answer-ticket", task_id="ticket-7"):
            sent, stopped = loop_until_stopped(client)
        with otel_tokens.attribute(agent="support", task="answer-ticket", task_id="ticket-8"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=20)
        pages = poll(
            webhook.alerts, paged("RunawayTask"), what="the RunawayTask page at the people's webhook"
        )
    assert (stopped.kind, stopped.alert, stopped.task_id, stopped.budget) == (
        "kill_agent_task", "RunawayTask", "ticket-7", "support-daily",
    )  # fmt: skip
    assert sent * 20 > 3 * 100  # it ran past 3x its instance limit before the alert stopped it
    assert len(fake_provider.requests) == sent + 1  # the stopped call never left; ticket-8's did
    # people are paged too: the collector's route `continue`s to the severity routes
    assert any(a["labels"].get("task_id") == "ticket-7" for a in pages)


def test_exceeded_budget_pauses_noncritical_agents_and_spares_critical_ones(
    client: openai.OpenAI, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    webhook = Webhook()
    with stack(tmp_path, PAUSE_BUDGETS, webhook):
        with otel_tokens.attribute(agent="batch", task="reindex"):
            sent, stopped = loop_until_stopped(client)
        with otel_tokens.attribute(agent="pager", task="triage", critical=True):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=20)
    assert (stopped.kind, stopped.alert, stopped.agent, stopped.budget) == (
        "pause_noncritical", "BudgetExceeded", "batch", "all-daily",
    )  # fmt: skip
    assert len(fake_provider.requests) == sent + 1
