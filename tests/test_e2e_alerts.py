"""Budgets end to end: a runaway agent, driven through the real SDKs, makes a P1 page arrive from a
real Alertmanager at a local webhook, naming the agent, the task and the budget; an agent under its
budget makes none.

  real SDK calls → our spans → OTLP/HTTP → collector (budget ledger) → real Prometheus evaluating
  the rendered rules → real Alertmanager with the rendered routing → webhook
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

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
from tests.services import Webhook, poll, run_alertmanager, run_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

BUDGETS = textwrap.dedent(
    """
    version: 1
    alert_for: {budget_warning: 0s, budget_exceeded: 0s, runaway_task: 0s, token_spike: 0s,
                budget_forecast: 0s, context_growth: 0s, prompt_cache_miss: 0s}
    budgets:
      - name: support-daily
        scope: {agent: support}
        limit: {tokens: 1000000}
        window: 1d
        severity: P2
        action: defer
        per_task_instance: {tokens: 400, runaway_factor: 3}
        spike: {enabled: false}
        forecast: {enabled: false}
      - name: research-daily
        scope: {agent: research}
        limit: {tokens: 1000000}
        window: 1d
        severity: P2
        action: defer
        per_task_instance: {tokens: 100000, runaway_factor: 3}
        spike: {enabled: false}
        forecast: {enabled: false}
    alerting:
      default_receiver: team
      receivers:
        - {name: team, webhook_configs: [{url: "http://127.0.0.1:1/unused"}]}
        - {name: oncall, webhook_configs: [{url: "http://127.0.0.1:1/unused"}]}
      routes:
        - {severity: P1, receiver: oncall}
        - {severity: P2, receiver: team}
    """
)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def _runaway_loop(client: openai.OpenAI, until_tokens: int, fake: FakeProvider) -> None:
    """The failure mode this product exists for: one task re-sending an ever-growing context."""
    context = "Check the ticket queue again."
    while fake.reported_totals("openai").total < until_tokens:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": context}])
        context += " Still nothing new; check again."


def test_runaway_agent_pages_oncall_and_agent_under_budget_does_not(
    fake_provider: FakeProvider, webhook: Webhook, tmp_path: Path
) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    spec = load_budget_file(budgets)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(spec, "budgets.yaml", interval="200ms"))
    am_config = alertmanager_yaml(
        spec, "test", AlertmanagerOverrides(webhook_url=webhook.url, group_wait="0s", group_interval="1s")
    )
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    provider = TracerProvider()
    with (
        CollectorService(config) as collector,
        run_alertmanager(tmp_path, am_config) as am,
        run_prometheus(tmp_path, [f"127.0.0.1:{collector.metrics_port}"], [rules], am) as prom,
    ):
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{collector.http_port}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        otel_tokens.instrument(tracer_provider=provider)
        try:
            client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
            with otel_tokens.attribute(agent="research", task="lookup", task_id="r-1"):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
            with otel_tokens.attribute(agent="support", task="answer-ticket", task_id="ticket-7"):
                _runaway_loop(client, until_tokens=3 * 400 + 1, fake=fake_provider)
        finally:
            otel_tokens.uninstrument()
            provider.shutdown()

        pages = poll(
            webhook.alerts,
            lambda alerts: any(a["labels"].get("alertname") == "RunawayTask" for a in alerts),
            timeout=30,
            what="the RunawayTask page at the webhook",
        )
        runaway = next(a for a in pages if a["labels"]["alertname"] == "RunawayTask")
        assert runaway["status"] == "firing"
        assert runaway["labels"]["severity"] == "P1"
        assert runaway["labels"]["budget"] == "support-daily"
        assert runaway["labels"]["agent"] == "support"
        assert runaway["labels"]["task"] == "answer-ticket"
        assert runaway["labels"]["task_id"] == "ticket-7"
        receivers = {
            n["receiver"]
            for n in webhook.notifications
            if any(a["labels"].get("alertname") == "RunawayTask" for a in n["alerts"])
        }
        assert receivers == {"oncall"}, "P1 routes to the on-call receiver"

        # The agent under budget: Prometheus has evaluated the same rules over its series, and nothing
        # fires for it — not in Prometheus, not at the webhook.
        assert prom.query('llm_budget_used{budget="research-daily"}'), "its ledger is exported"
        assert prom.query('ALERTS{budget="research-daily"}') == []
        assert not [a for a in webhook.alerts() if a["labels"].get("budget") == "research-daily"]
