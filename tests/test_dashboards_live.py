"""Every panel of every generated dashboard shows something after the demo workload.

The demo's agents (real SDKs against the fake provider, spans over real OTLP/HTTP) feed a real
collector with the example budgets; a real Prometheus scrapes it and evaluates the rendered rules;
then every panel query runs against that Prometheus, for each agent the agent dashboard can select.
An empty result is what Grafana draws as "No data" — wrong wherever the answer is simply zero (no
request failed yet, no series overflowed, every model is priced).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_tokens.budgets import load_budget_file
from otel_tokens.budgets.render_grafana import agent_dashboard, budget_gauges, overview_dashboard
from otel_tokens.budgets.render_prometheus import render_rules
from otel_tokens.collector import CollectorConfig, CollectorService
from tests.services import poll, run_prometheus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "budgets.yaml"
DEMO_AGENTS = ("support", "research", "codegen")
#: What Grafana would substitute; 1m holds plenty of 200 ms scrapes, 1h covers the whole test.
GRAFANA = {"$__rate_interval": "1m", "$__range": "1h", "$task": ".*", "$model": ".*", "$budget": ".*"}


def _panel_queries(dashboard: dict[str, Any], variables: dict[str, str]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unsubstituted variable in {expr!r}"
            yield f"{dashboard['uid']} {panel['title']!r} {target['refId']}", expr


def _all_queries() -> list[tuple[str, str]]:
    spec = load_budget_file(EXAMPLE)
    overview = overview_dashboard(budget_gauges(spec), description="live")
    queries = list(_panel_queries(overview, GRAFANA))
    for agent in DEMO_AGENTS:
        queries += [
            (f"{where} agent={agent}", expr)
            for where, expr in _panel_queries(
                agent_dashboard(description="live"), {**GRAFANA, "$agent": agent}
            )
        ]
    return queries


def _run_demo_workload(otlp_http_url: str, rounds: int) -> int:
    """The demo's own workload, exporting to `otlp_http_url`; returns the number of LLM calls."""
    # Imported here: the demo modules are a package of their own, not the pipeline's.
    from otel_tokens.demo.runtime import DemoRuntime
    from otel_tokens.demo.workload import make_clients, run_workload

    with DemoRuntime(collector_url=otlp_http_url) as runtime:
        openai_client, anthropic_client = make_clients(runtime.fake)
        run_workload(openai_client, anthropic_client, rounds)
        runtime.flush()
        return len(runtime.fake.reported)


def test_no_panel_is_empty_after_the_demo_workload(tmp_path: Path):
    spec = load_budget_file(EXAMPLE)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(spec, "examples/budgets.yaml", interval="200ms"), encoding="utf-8")
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(EXAMPLE))
    with (
        CollectorService(config) as collector,
        run_prometheus(tmp_path, [f"127.0.0.1:{collector.metrics_port}"], [rules]) as prom,
    ):
        # Two bursts a few scrapes apart, so rates over the last minute are those of real traffic.
        calls = 0
        for rounds in (1, 2):
            calls += _run_demo_workload(f"http://127.0.0.1:{collector.http_port}", rounds=rounds)
            poll(
                lambda: prom.scalar("sum(llm_requests_total)"),
                lambda n, calls=calls: n == calls,
                timeout=30,
                what=f"{calls} demo calls counted in Prometheus",
            )
        queries = _all_queries()
        assert len(queries) > 30

        def empty() -> list[str]:
            """Queries Grafana would draw as "No data" (no series) or "NaN" (0/0)."""
            return [
                f"{where}: {expr}"
                for where, expr in queries
                if not (result := prom.query(expr)) or any(r["value"][1] == "NaN" for r in result)
            ]

        # Rates need two scrapes after the workload, the forecast one rule evaluation: poll.
        still_empty = poll(empty, lambda left: not left, timeout=30, what="every panel query to return data")
        assert still_empty == []
        # Every template variable offers values to choose from (Grafana's label_values, as PromQL).
        for dashboard in (
            overview_dashboard(budget_gauges(spec), description="live"),
            agent_dashboard(description="live"),
        ):
            for variable in dashboard["templating"]["list"]:
                metric, label = re.fullmatch(
                    r"label_values\((.+), (\w+)\)", variable["query"]["query"]
                ).groups()
                values = prom.by_label(
                    f"count by ({label}) ({metric.replace('$agent', 'support').replace('$task', '.*')})",
                    label,
                )
                assert values, f"variable {variable['name']} of {dashboard['uid']} offers nothing"
        # The zero answers read as zero, not as missing.
        assert prom.scalar(dict(queries)["otel-tokens-overview 'Error ratio' A"]) == 0
