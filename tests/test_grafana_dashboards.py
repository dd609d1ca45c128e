"""The generated Grafana dashboards, checked offline by the tools that would read them.

No Grafana server can run here, so each property is checked by its own real consumer:
- the JSON model against Grafana's TypeScript schema (`@grafana/schema`, `tsc --noEmit`);
- every panel query by Prometheus' own parser (`promtool check rules`, as recording rules);
- every metric a query names against what the collector's real Prometheus collectors export.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_tokens.aggregate import Aggregator
from otel_tokens.budgets import load_budget_file, parse_budget_text
from otel_tokens.budgets.budget_queries import FORECAST_RECORD
from otel_tokens.budgets.ledger import BudgetLedger, BudgetLedgerCollector
from otel_tokens.budgets.render_grafana import (
    DASHBOARDS_DIR,
    DATASOURCE_UID,
    agent_dashboard,
    budget_gauges,
    dashboard_json,
    dashboard_provider_yaml,
    datasource_yaml,
    overview_dashboard,
)
from otel_tokens.budgets.render_prometheus import render_rules, rule_groups
from otel_tokens.budgets.rulefmt import RecordingRule
from otel_tokens.budgets.spec import BudgetFile
from otel_tokens.exposition import TokenMetricsCollector

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "budgets.yaml"
HARNESS = ROOT / "tests" / "grafana_check"
PROMTOOL = shutil.which("promtool")

# What Grafana substitutes before a query reaches Prometheus; any valid value parses the same.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$agent": "support",
    "$budget": ".*",
    "$task": ".*",
    "$model": ".*",
}
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}


@pytest.fixture(scope="module")
def spec() -> BudgetFile:
    return load_budget_file(EXAMPLE)


@pytest.fixture(scope="module")
def dashboards(spec: BudgetFile) -> dict[str, dict[str, Any]]:
    return {
        "otel-tokens-overview": overview_dashboard(
            budget_gauges(spec), description="test", timezone=spec.timezone
        ),
        "otel-tokens-agent": agent_dashboard(description="test", timezone=spec.timezone),
    }


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]


def substitute(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value).replace("${" + variable[1:] + "}", value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric identifiers in a PromQL expression: what remains once strings, label matchers, ranges,
    grouping clauses and function calls are set aside."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", text)
    return {name for name in found if name.lower() not in PROMQL_WORDS}


def exported_metric_names(spec: BudgetFile) -> set[str]:
    """Series names the collector's own Prometheus collectors expose, as Prometheus stores them."""
    families = [
        *TokenMetricsCollector(Aggregator()).describe(),
        *BudgetLedgerCollector(BudgetLedger(spec)).describe(),
    ]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {family.name + suffix for family in families for suffix in suffixes.get(family.type, [""])}


def recorded_metric_names(spec: BudgetFile) -> set[str]:
    """Series the rendered rules record (the forecast panel reads what the forecast alert reads)."""
    return {r.record for g in rule_groups(spec) for r in g.rules if isinstance(r, RecordingRule)}


# --- structure ------------------------------------------------------------------------------------


def test_rendering_is_canonical_and_deterministic(spec: BudgetFile, dashboards: dict[str, Any]):
    for dashboard in dashboards.values():
        text = dashboard_json(dashboard)
        assert dashboard_json(json.loads(text)) == text  # sorted keys, fixed indent: a fixed point
    again = overview_dashboard(budget_gauges(spec), description="test", timezone=spec.timezone)
    assert dashboard_json(again) == dashboard_json(dashboards["otel-tokens-overview"])


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboards: dict[str, Any]):
    for dashboard in dashboards.values():
        ids = [p["id"] for p in dashboard["panels"]]
        assert ids == list(range(1, len(ids) + 1))
        cells: set[tuple[int, int]] = set()
        for p in dashboard["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not area & cells, f"panel {p['id']} overlaps another"
            cells |= area


def test_every_panel_uses_the_provisioned_datasource(dashboards: dict[str, Any]):
    provisioned = yaml.safe_load(datasource_yaml("test"))["datasources"][0]
    assert provisioned["uid"] == DATASOURCE_UID
    for dashboard in dashboards.values():
        for panel in panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
            assert all(t["datasource"]["uid"] == DATASOURCE_UID for t in panel["targets"])


def test_provider_reads_the_dashboards_directory():
    provider = yaml.safe_load(dashboard_provider_yaml("test"))["providers"][0]
    assert provider["options"]["path"] == DASHBOARDS_DIR
    assert provider["allowUiUpdates"] is False  # generated files: edits belong in budgets.yaml


def test_one_gauge_per_budget_with_the_files_thresholds(spec: BudgetFile, dashboards: dict[str, Any]):
    gauges = {p["title"]: p for p in panels(dashboards["otel-tokens-overview"]) if p["type"] == "gauge"}
    assert list(gauges) == [b.name for b in spec.budgets]
    for budget in spec.budgets:
        defaults = gauges[budget.name]["fieldConfig"]["defaults"]
        steps = [s["value"] for s in defaults["thresholds"]["steps"]]
        assert steps == [None, pytest.approx(budget.limit.amount * budget.warn_at), budget.limit.amount]
        assert defaults["unit"] == ("currencyUSD" if budget.limit.unit == "usd" else "short")
        # Summed over collector instances: each collector counts only the spans it received.
        assert gauges[budget.name]["targets"][0]["expr"] == (
            f'sum by (budget, window) (llm_budget_used{{budget="{budget.name}"}})'
        )


def test_overview_shows_what_the_issue_promises(spec: BudgetFile, dashboards: dict[str, Any]):
    exprs = " ".join(expr for _, expr in queries(dashboards["otel-tokens-overview"]))
    assert "sum(rate(llm_tokens_total[$__rate_interval]))" in exprs  # burn rate
    assert (
        "sum by (agent) (rate(llm_cost_usd_total" in exprs
        and "sum by (model) (rate(llm_cost_usd_total" in exprs
    )
    assert "topk(10, sum by (agent, task)" in exprs  # top spenders
    # Forecast to the window's end: the series the rules record, from the one formula the alert uses.
    assert FORECAST_RECORD in exprs
    calendar = [r for g in rule_groups(spec) for r in g.rules if isinstance(r, RecordingRule)]
    assert any(
        "llm_budget_window_remaining_seconds" in r.expr for r in calendar if r.record == FORECAST_RECORD
    )
    assert 'token_type="cache_read"' in exprs and 'token_type=~"input|cache_read|cache_write"' in exprs
    assert "llm_request_input_tokens_sum" in exprs and "llm_request_input_tokens_count" in exprs
    assert "sum by (status) (rate(llm_requests_total" in exprs
    assert "otel_tokens_spans_rejected_total" in exprs and "otel_tokens_unpriced_records_total" in exprs


def test_agent_dashboard_is_driven_by_template_variables(dashboards: dict[str, Any]):
    dashboard = dashboards["otel-tokens-agent"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["agent", "task", "model"]
    assert variables["agent"]["query"]["query"] == "label_values(llm_tokens_total, agent)"
    assert "$agent" in variables["task"]["query"]["query"]
    for where, expr in queries(dashboard):
        assert '"$agent"' in expr, f"{where} ignores the selected agent: {expr}"
    exprs = " ".join(expr for _, expr in queries(dashboard))
    assert "llm_task_tokens_sum" in exprs and "llm_task_tokens_count" in exprs  # tokens per completed task


# --- checked by the real consumers ------------------------------------------------------------------


def test_every_query_reads_metrics_the_collector_exports(
    spec: BudgetFile, dashboards: dict[str, Any]
) -> None:
    exported = exported_metric_names(spec) | recorded_metric_names(spec)
    assert {"llm_tokens_total", "llm_request_input_tokens_bucket", "llm_budget_used"} <= exported
    for dashboard in dashboards.values():
        for where, expr in queries(dashboard):
            names = metric_names(substitute(expr))
            assert names, f"{where}: no metric found in {expr!r}"
            assert names <= exported, f"{where}: {sorted(names - exported)} not exported by the collector"
        for variable in dashboard["templating"]["list"]:
            metric = re.match(r"label_values\((\w+)", variable["query"]["query"])
            assert metric and metric.group(1) in exported


def test_metric_name_extraction_ignores_functions_labels_and_keywords():
    expr = 'sum by (le, task) (rate(a_total{x="y", task=~"b|c"}[5m])) / on (task) group_left b_sum offset 1h'
    assert metric_names(expr) == {"a_total", "b_sum"}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus")
def test_promtool_parses_every_panel_query(dashboards: dict[str, Any], tmp_path: Path):
    rules = [
        {"record": f"grafana_check:{uid.replace('-', '_')}:{i}", "expr": substitute(expr)}
        for uid, dashboard in dashboards.items()
        for i, (_, expr) in enumerate(queries(dashboard))
    ]
    path = tmp_path / "panel-queries.rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "grafana-panels", "rules": rules}]}), encoding="utf-8"
    )
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --- Grafana's TypeScript schema ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def tsc() -> Path:
    """The harness in tests/grafana_check with its pinned packages installed (`npm ci`)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm missing: the Grafana schema check needs Node.js 18+ and npm")
    binary = HARNESS / "node_modules" / ".bin" / "tsc"
    if not binary.exists():
        install = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        result = subprocess.run(install, cwd=HARNESS, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"npm ci in {HARNESS} failed:\n{result.stderr}"
    return binary


def type_check(tsc: Path, files: list[Path], out: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None
    wrap = [node, str(HARNESS / "wrap.mjs"), str(out), *map(str, files)]
    subprocess.run(wrap, check=True, capture_output=True, text=True, timeout=60)
    return subprocess.run(
        [str(tsc), "-p", str(out / "tsconfig.json")], capture_output=True, text=True, timeout=300
    )


@pytest.mark.integration  # first run installs the pinned npm packages
def test_dashboards_satisfy_grafanas_typescript_schema(
    tsc: Path, dashboards: dict[str, Any], tmp_path: Path
) -> None:
    files = []
    for uid, dashboard in dashboards.items():
        files.append(tmp_path / f"{uid}.json")
        files[-1].write_text(dashboard_json(dashboard), encoding="utf-8")
    result = type_check(tsc, files, tmp_path / "ts")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_schema_check_rejects_a_broken_dashboard(
    tsc: Path, dashboards: dict[str, Any], tmp_path: Path
) -> None:
    """The harness must be able to fail: a wrong enum value, a missing grid width, an unknown key."""
    broken = json.loads(dashboard_json(dashboards["otel-tokens-overview"]))
    gauge = next(p for p in broken["panels"] if p["type"] == "gauge")
    gauge["fieldConfig"]["defaults"]["thresholds"]["mode"] = "relative"
    del broken["panels"][1]["gridPos"]["w"]
    broken["panels"][2]["tilte"] = "typo"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    result = type_check(tsc, [path], tmp_path / "ts")
    assert result.returncode != 0
    for expected in ('"relative"', "Property 'w' is missing", "'\"tilte\"' does not exist"):
        assert expected in result.stdout, result.stdout


# --- what the alerts link to, and what the panels next to them show ----------------------------------


def test_alert_links_set_only_variables_their_target_dashboard_defines(
    spec: BudgetFile, dashboards: dict[str, Any]
) -> None:
    """Grafana silently ignores a `var-x` its target does not define: the link would open unfiltered."""
    links = [rule.annotations["dashboard"] for g in rule_groups(spec) for rule in g.alerts().values()]
    assert links
    for link in links:
        url = urllib.parse.urlsplit(link)
        uid = url.path.rstrip("/").split("/")[-1]
        defined = {v["name"] for v in dashboards[uid]["templating"]["list"]}
        used = {k.removeprefix("var-") for k in urllib.parse.parse_qs(url.query) if k.startswith("var-")}
        assert used and used <= defined, (
            f"{link}: sets {sorted(used - defined)}, {uid} defines {sorted(defined)}"
        )


FORECAST_BUDGETS = """
timezone: Europe/Berlin
budgets:
  - {name: b, limit: {tokens: 24000}, window: 1d, forecast: {lookback: 1h}}
  - {name: m, limit: {usd: 100}, window: month, forecast: {lookback: 1h}}
"""


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus")
def test_forecast_panel_shows_what_the_forecast_alert_checks(tmp_path: Path) -> None:
    """One formula: at a steady burn the panel and the alert give the same figure (the panel used to
    show a rolling window's use plus a whole window of burn: about twice what the alert checked)."""
    spec = parse_budget_text(FORECAST_BUDGETS + "alert_for: {budget_forecast: 0s}\n")
    overview = overview_dashboard(budget_gauges(spec), description="test")
    panel = next(p for p in panels(overview) if p["title"].startswith("Forecast"))
    [target] = panel["targets"]
    (tmp_path / "rules.yml").write_text(render_rules(spec), encoding="utf-8")
    series = {
        # Rolling 1d: 16 tokens/min is 23,040 a day, 96% of 24k; the ledger holds 12k right now.
        'llm_budget_consumed_total{budget="b",unit="tokens"}': "0+16x130",
        'llm_budget_used{budget="b",window="1d",unit="tokens"}': "12000x130",
        'llm_budget_window_remaining_seconds{budget="b",window="1d"}': "86400x130",
        # Calendar month: $50 used + $0.12/min for the 10 h left = $122 of $100.
        'llm_budget_consumed_total{budget="m",unit="usd"}': "0+0.12x130",
        'llm_budget_used{budget="m",window="month",unit="usd"}': "50x130",
        'llm_budget_window_remaining_seconds{budget="m",window="month"}': "36000x130",
    }
    projected = {"b": 0.96, "m": 1.22}
    test = {
        "interval": "1m",
        "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "promql_expr_test": [
            {
                # round(): the last digits of a float rate are noise, not the formula.
                "expr": f"round({substitute(target['expr'])}, 0.001)",
                "eval_time": "120m",
                "exp_samples": [{"labels": f'{{budget="{b}"}}', "value": v} for b, v in projected.items()],
            }
        ],
        "alert_rule_test": [
            {
                "eval_time": "120m",
                "alertname": "BudgetForecast",
                "exp_alerts": [
                    {
                        "exp_labels": {"budget": "b", "severity": "P2"},
                        "exp_annotations": {
                            "summary": "Budget b is projected at 96% of 24k tokens per 1d"
                            " by the end of the window",
                            "limit": "24k tokens per 1d",
                            "window": "rolling 1d",
                        },
                    },
                    {
                        "exp_labels": {"budget": "m", "severity": "P2"},
                        "exp_annotations": {
                            "summary": "Budget m is projected at 122% of $100.00 per month"
                            " by the end of the period",
                            "limit": "$100.00 per month",
                            "window": "calendar month (Europe/Berlin)",
                        },
                    },
                ],
            }
        ],
    }
    # The figures that need the ledger's used/limit series are pinned in test_prometheus_rules.py.
    rules = yaml.safe_load((tmp_path / "rules.yml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["annotations"] = {k: rule["annotations"][k] for k in ("summary", "limit", "window")}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    spec_file = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [test]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec_file, sort_keys=False), encoding="utf-8")
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
