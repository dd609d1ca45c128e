"""Alerts that act, and the guard's decisions on the collector's /metrics.

Alertmanager's webhook JSON is posted to the real collector as Alertmanager posts it (the end-to-end
test with real Prometheus and Alertmanager is `test_e2e_alerts_act.py`); guards sharing budgets
through that collector read the stop orders with the budget status. The real openai SDK talks to
the fake provider, which counts what reaches it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otel_tokens
from otel_tokens import metric_names as mn
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.guard import CollectorBudgetState, Guard, LocalBudgetState
from otel_tokens.pricing import default_price_book
from otel_tokens.record import TokenCounts
from otel_tokens.tokencount import count_message_tokens
from tests.prom_text import scrape, series
from tests.services import poll

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of the fake provider's country?"}]
MAX_TOKENS = 20
BUDGETS = {
    "budgets": [
        {"name": "support-daily", "scope": {"agent": "support"}, "limit": {"tokens": 10**9}, "window": "day",
         "per_task_instance": {"tokens": 10**6, "runaway_factor": 3}},
        {"name": "all-daily", "limit": {"tokens": 10**9}, "window": "day", "pause_noncritical": True},
    ],
    "guard": {"critical_agents": ["ops"], "collector": {"sync_interval_seconds": 0.05}},
}  # fmt: skip


def chat(client: openai.OpenAI, model: str = MODEL) -> Any:
    return client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=MAX_TOKENS)


def alert(status: str, **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager's webhook carries it."""
    return {
        "status": status, "labels": labels, "annotations": {"summary": f"{labels['alertname']} summary"},
        "startsAt": "2026-12-01T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
        "fingerprint": "f-" + "-".join(sorted(labels.values())),
    }  # fmt: skip


def post_alerts(port: int, *alerts: dict[str, Any]) -> Any:
    body = {
        "version": "4", "groupKey": "{}", "status": alerts[0]["status"], "receiver": "otel-tokens-collector",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": list(alerts),
    }  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/alerts", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


RUNAWAY = {
    "alertname": "RunawayTask", "action": "kill_agent_task", "severity": "P1", "budget": "support-daily",
    "agent": "support", "task": "answer-ticket", "task_id": "ticket-7",
}  # fmt: skip
PAUSE = {
    "alertname": "BudgetExceeded",
    "action": "pause_all_noncritical_agents",  # as the rendered rules carry it
    "severity": "P2",
    "budget": "all-daily",
}


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorService]:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(yaml.safe_dump(BUDGETS))
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    with CollectorService(config) as service:
        yield service


@pytest.fixture
def guard(collector: CollectorService, tracer_provider: TracerProvider, tmp_path: Path) -> Iterator[Guard]:
    budget_file = load_budget_file(tmp_path / "budgets.yaml")
    state = CollectorBudgetState(budget_file, f"http://127.0.0.1:{collector.metrics_port}")
    guard = Guard(budget_file, state)
    otel_tokens.instrument(tracer_provider=tracer_provider, budgets=guard)
    yield guard
    otel_tokens.uninstrument()
    guard.close()


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0, timeout=10) as c:
        yield c


def orders_seen(guard: Guard, count: int) -> None:
    poll(
        lambda: len(guard.state.stop_orders()), lambda n: n == count, what=f"{count} stop orders at the guard"
    )


def test_runaway_alert_stops_that_task_instance_only_until_it_resolves(
    collector: CollectorService, guard: Guard, client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    assert post_alerts(collector.metrics_port, alert("firing", **RUNAWAY)) == {
        "placed": 1,
        "lifted": 0,
        "ignored": 0,
    }
    orders_seen(guard, 1)
    ticket_7 = otel_tokens.attribute(agent="support", task="answer-ticket", task_id="ticket-7")
    with ticket_7, pytest.raises(otel_tokens.TaskStopped) as caught:
        chat(client)
    assert fake_provider.requests == []
    stopped = caught.value
    assert (stopped.kind, stopped.alert, stopped.task_id, stopped.budget) == (
        "kill_agent_task", "RunawayTask", "ticket-7", "support-daily",
    )  # fmt: skip
    assert "RunawayTask summary" in str(stopped) and "not sent" in str(stopped)
    with otel_tokens.attribute(agent="support", task="answer-ticket", task_id="ticket-8"):
        chat(client)  # another instance of the same task goes on
    assert len(fake_provider.requests) == 1

    assert post_alerts(collector.metrics_port, alert("resolved", **RUNAWAY))["lifted"] == 1
    orders_seen(guard, 0)
    with otel_tokens.attribute(agent="support", task="answer-ticket", task_id="ticket-7"):
        chat(client)
    assert len(fake_provider.requests) == 2


@pytest.mark.parametrize("action", mn.PAUSE_ACTIONS)
def test_pause_noncritical_spares_agents_marked_critical(
    collector: CollectorService, guard: Guard, client: openai.OpenAI, fake_provider: FakeProvider, action: str
) -> None:
    """Both spellings pause: the rendered `pause_all_noncritical_agents` and the older
    `pause_noncritical` of rules rendered before it."""
    post_alerts(collector.metrics_port, alert("firing", **{**PAUSE, "action": action}))
    orders_seen(guard, 1)
    with otel_tokens.attribute(agent="batch"), pytest.raises(otel_tokens.TaskStopped) as caught:
        chat(client)
    assert (caught.value.kind, caught.value.agent) == ("pause_noncritical", "batch")
    with otel_tokens.attribute(agent="pager", critical=True):
        chat(client)  # marked critical in code
    with otel_tokens.attribute(agent="ops"):
        chat(client)  # listed in guard.critical_agents
    assert len(fake_provider.requests) == 2
    post_alerts(collector.metrics_port, alert("resolved", **{**PAUSE, "action": action}))
    orders_seen(guard, 0)
    with otel_tokens.attribute(agent="batch"):
        chat(client)
    assert len(fake_provider.requests) == 3


def test_webhook_rejects_what_is_not_alertmanagers_json(collector: CollectorService) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{collector.metrics_port}/api/v1/alerts",
        data=b'{"alerts": [{"status": "burning"}]}', method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert "not an Alertmanager webhook body" in caught.value.read().decode()
    # alerts without an action place no order
    other = alert("firing", alertname="TokenSpike", severity="P2", budget="all-daily")
    assert post_alerts(collector.metrics_port, other) == {"placed": 0, "lifted": 0, "ignored": 1}


# --- the guard's decisions on /metrics ---------------------------------------------------------------
def test_blocked_and_downgraded_calls_appear_on_metrics_with_exact_values(
    collector: CollectorService, client: openai.OpenAI, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    estimate_mini = count_message_tokens(MESSAGES, MODEL) + MAX_TOKENS
    estimate_4o = count_message_tokens(MESSAGES, "gpt-4o") + MAX_TOKENS
    prices = default_price_book()
    cost_4o, cost_mini = (
        prices.cost_usd("openai", m, TokenCounts(input=estimate_4o - MAX_TOKENS, output=MAX_TOKENS))
        for m in ("gpt-4o", MODEL)
    )
    assert cost_4o and cost_mini and cost_mini < cost_4o
    budgets = tmp_path / "local.yaml"
    budgets.write_text(yaml.safe_dump({"budgets": [
        {"name": "coder-daily", "scope": {"agent": "coder"}, "limit": {"tokens": estimate_mini + 5},
         "window": "day", "action": "block"},
        # room for the cheaper model's call, not for gpt-4o's
        {"name": "writer-usd", "scope": {"agent": "writer"}, "limit": {"usd": (cost_4o + cost_mini) / 2},
         "window": "day", "action": "downgrade", "downgrade_to": MODEL},
    ]}))  # fmt: skip
    budget_file = load_budget_file(budgets)
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{collector.http_port}/v1/traces"))
    )
    otel_tokens.instrument(
        tracer_provider=provider, budgets=Guard(budget_file, LocalBudgetState(budget_file))
    )
    try:
        with otel_tokens.attribute(agent="coder"):
            chat(client)
            with pytest.raises(otel_tokens.BudgetExceeded):
                chat(client)
        with otel_tokens.attribute(agent="writer"):
            chat(client, model="gpt-4o")
    finally:
        otel_tokens.uninstrument()
        provider.shutdown()
    assert [r.body["model"] for r in fake_provider.requests] == [MODEL, MODEL]

    text = scrape(collector.metrics_port)
    actions = {dict(k)[mn.ACTION]: (dict(k)[mn.AGENT], dict(k)[mn.BUDGET], v)
               for k, v in series(text, mn.GUARD_ACTIONS).items()}  # fmt: skip
    assert actions == {"blocked": ("coder", "coder-daily", 1.0), "downgraded": ("writer", "writer-usd", 1.0)}
    saved = {dict(k)[mn.REASON]: (dict(k)[mn.AGENT], dict(k)[mn.BUDGET], v)
             for k, v in series(text, mn.TOKENS_SAVED).items()}  # fmt: skip
    # blocked: the whole estimate; downgraded: the estimate times the share of the price saved
    assert saved == {
        "blocked": ("coder", "coder-daily", float(estimate_mini)),
        "downgraded": (
            "writer",
            "writer-usd",
            pytest.approx(estimate_4o * (1 - cost_mini / cost_4o), rel=1e-12),
        ),
    }


def test_stop_orders_survive_a_collector_restart_with_a_data_dir(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(yaml.safe_dump(BUDGETS))
    config = CollectorConfig(
        http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets), data_dir=str(tmp_path / "data")
    )

    def orders(service: CollectorService) -> list[dict[str, Any]]:
        status = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/api/v1/budgets").read()
        )
        return list(status["stop_orders"])

    with CollectorService(config) as first:
        post_alerts(first.metrics_port, alert("firing", **RUNAWAY), alert("firing", **PAUSE))
        before = orders(first)
    with CollectorService(config) as second:
        assert orders(second) == before and len(before) == 2
        assert "2 stop orders in force" in second.state_note
        post_alerts(second.metrics_port, alert("resolved", **RUNAWAY))
    with CollectorService(config) as third:
        assert [o["kind"] for o in orders(third)] == ["pause_noncritical"]
