"""Rendered Prometheus rules, checked by Prometheus' own `promtool`.

Every generated alert kind is pinned with `promtool test rules` over synthetic series: it fires just
above its boundary with the promised labels and annotations, stays silent just below, and waits
for its `for:` (rendered once with `for: 30m`, which has elapsed at the evaluation time, and once
with `for: 3h`, which has not).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_tokens.budgets import BudgetFile, load_budget_file, parse_budget_text
from otel_tokens.budgets.render_prometheus import (
    ALERT_NAMES,
    render_prometheus_config,
    render_rules,
    rule_groups,
)
from otel_tokens.humanize import format_tokens, format_usd, short_number

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "budgets.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt install prometheus)"
)

EVAL = "120m"  # every synthetic series runs 130 minutes at 1-minute steps
DASH = "http://grafana.test/d/overview"

BUDGETS = f"""
timezone: Europe/Berlin
dashboard_url: {DASH}
budgets:
  - name: b
    description: "Support bot; {{{{ not a template }}}}"
    scope: {{agent: a, task: t}}
    limit: {{tokens: 24000}}
    window: 1d
    pause_noncritical: true
    per_task_instance: {{tokens: 1000, runaway_factor: 3}}
    context_growth: {{factor: 1.5, window: 10m, baseline_offset: 1h}}
    prompt_cache_miss: {{min_input_tokens: 10000, window: 30m}}
  - name: m
    limit: {{usd: 100}}
    window: month
    spike: {{enabled: false}}
    forecast: {{lookback: 1h}}
"""


def budgets_with_for(duration: str) -> BudgetFile:
    kinds = [
        "budget_warning",
        "budget_exceeded",
        "runaway_task",
        "token_spike",
        "budget_forecast",
        "context_growth",
        "prompt_cache_miss",
    ]
    return parse_budget_text(BUDGETS + "alert_for: {" + ", ".join(f"{k}: {duration}" for k in kinds) + "}\n")


def const(value: float) -> str:
    return f"{value}x130"


def ramp(step: float) -> str:
    return f"0+{step}x130"


B_LIMIT = 'llm_budget_limit{budget="b",window="1d",unit="tokens"}'
B_LEDGER = {
    'llm_budget_used{budget="b",window="1d",unit="tokens"}': const(600),
    B_LIMIT: const(24000),
}
M_LEDGER = {
    'llm_budget_used{budget="m",window="month",unit="usd"}': const(50),
    'llm_budget_limit{budget="m",window="month",unit="usd"}': const(100),
    'llm_budget_window_remaining_seconds{budget="m",window="month"}': const(36000),
}
HIST = '{agent="a",task="t",model="gpt-4o",provider="openai"}'


DESCRIPTION = "Support bot; {{ not a template }}"  # the budget's description, shown as written


def annotations_b(
    summary: str, percent: str = "2.5%", used: str = "600 tokens", **figures: str
) -> dict[str, str]:
    """The budget-wide standing, unless `figures` replace it with the alert's own figures."""
    return {
        "summary": summary,
        "used": used,
        "limit": "24k tokens per 1d",
        "percent": percent,
        "window": "rolling 1d",
        **figures,
        "description": DESCRIPTION,
        # Only a variable the overview dashboard defines: Grafana ignores any other.
        "dashboard": f"{DASH}?var-budget=b",
    }


@dataclass
class Case:
    """One alert kind: series that cross its boundary, series that stay just below, what fires."""

    alert: str
    above: dict[str, str]
    below: list[dict[str, str]]
    labels: dict[str, str]
    annotations: dict[str, str]
    ledger: dict[str, str] = field(default_factory=lambda: dict(B_LEDGER))


def ratio(value: float) -> dict[str, str]:
    """The ledger of budget b at `value` of its 24k limit."""
    return {
        'llm_budget_used{budget="b",window="1d",unit="tokens"}': const(round(value * 24000, 6)),
        B_LIMIT: const(24000),
    }


B_LABELS = {"budget": "b", "agent": "a", "task": "t"}
CASES = [
    Case(
        "BudgetWarning",
        above=ratio(0.8),  # warn_at is inclusive
        below=[ratio(0.7999), ratio(1.0)],  # at the limit it is BudgetExceeded instead
        labels={**B_LABELS, "severity": "P3", "window": "1d"},
        annotations=annotations_b(
            "Budget b at 80% of 24k tokens per 1d", percent="80%", used="19,200 tokens"
        ),
        ledger={},
    ),
    Case(
        "BudgetExceeded",
        above=ratio(1.0),
        below=[ratio(0.9999)],
        # `pause_noncritical: true`: the collector pauses non-critical agents (issue 6's action name)
        labels={**B_LABELS, "severity": "P2", "window": "1d", "action": "pause_all_noncritical_agents"},
        annotations=annotations_b(
            "Budget b exceeded: 100% of 24k tokens per 1d (action: warn)",
            percent="100%",
            used="24,000 tokens",
        ),
        ledger={},
    ),
    Case(
        # 2x the hourly share of 24k/day is 2000 tokens in an hour: 34/min crosses it, 33/min does not.
        "TokenSpike",
        above={'llm_budget_consumed_total{budget="b",unit="tokens"}': ramp(34)},
        below=[{'llm_budget_consumed_total{budget="b",unit="tokens"}': ramp(33)}],
        labels={**B_LABELS, "severity": "P2"},
        annotations=annotations_b(
            "Budget b: 8.5% of its 1d limit used in the last hour, over 2x the hourly share"
        ),
    ),
    Case(
        "RunawayTask",
        above={'llm_task_instance_tokens{budget="b",agent="a",task="t",task_id="run-7"}': const(3001)},
        below=[{'llm_task_instance_tokens{budget="b",agent="a",task="t",task_id="run-7"}': const(3000)}],
        # `action` makes the collector stop that task instance (Alertmanager → /api/v1/alerts).
        labels={**B_LABELS, "severity": "P1", "task_id": "run-7", "action": "kill_agent_task"},
        # The task instance's own tokens against its own limit, not the budget's standing.
        annotations=annotations_b(
            "Task instance run-7 (a/t) used 3,001 tokens, over 3x its limit of 1k: it is probably looping",
            used="3,001 tokens (task instance run-7)",
            limit="1,000 tokens per task instance",
            percent="300.1%",
            window="one task instance, all its calls so far",
        ),
    ),
    Case(
        # Rolling 1d: 16/min is 23 040 a day, 96% of 24k (> 90%); 14/min is 84%.
        "BudgetForecast",
        above={'llm_budget_consumed_total{budget="b",unit="tokens"}': ramp(16)},
        below=[{'llm_budget_consumed_total{budget="b",unit="tokens"}': ramp(14)}],
        labels={**B_LABELS, "severity": "P2"},
        annotations=annotations_b(
            "Budget b is projected at 96% of 24k tokens per 1d by the end of the window"
        ),
    ),
    Case(
        # Calendar month: $50 used + rate x 10 h left. $0.12/min → $122 (122%); $0.06/min → $86.
        "BudgetForecast",
        above={'llm_budget_consumed_total{budget="m",unit="usd"}': ramp(0.12)},
        below=[{'llm_budget_consumed_total{budget="m",unit="usd"}': ramp(0.06)}],
        labels={"budget": "m", "severity": "P2"},
        annotations={
            "summary": "Budget m is projected at 122% of $100.00 per month by the end of the period",
            "used": "$50.00",
            "limit": "$100.00 per month",
            "percent": "50%",
            "window": "calendar month (Europe/Berlin)",
            "dashboard": f"{DASH}?var-budget=m",
        },
        ledger=dict(M_LEDGER),
    ),
    Case(
        # One request a minute; 1000 input tokens each until minute 70, then 2000 (or 1400: below 1.5x).
        "ContextGrowth",
        above={
            f"llm_request_input_tokens_sum{HIST}": "0+1000x69 71000+2000x60",
            f"llm_request_input_tokens_count{HIST}": ramp(1),
        },
        below=[
            {
                f"llm_request_input_tokens_sum{HIST}": "0+1000x69 70400+1400x60",
                f"llm_request_input_tokens_count{HIST}": ramp(1),
            }
        ],
        labels={**B_LABELS, "severity": "P3"},
        # The growth factor against its threshold, not the budget's standing.
        annotations=annotations_b(
            "Agent a (task t): input tokens per request grew 2.00x against 1h ago"
            " — the context keeps growing",
            used="2.00x the input tokens per request of 1h ago",
            limit="1.5x",
            percent="133.3%",
            window="average over 10m, against the same 1h earlier",
        ),
    ),
    Case(
        "PromptCacheMiss",
        above={
            f"llm_request_input_tokens_sum{HIST}": ramp(12000),
            f"llm_request_input_tokens_count{HIST}": ramp(1),
            f'llm_tokens_total{HIST[:-1]},token_type="cache_read"}}': const(0),
            f'llm_tokens_total{HIST[:-1]},token_type="input"}}': ramp(12000),
        },
        below=[
            {
                f"llm_request_input_tokens_sum{HIST}": ramp(9000),
                f"llm_request_input_tokens_count{HIST}": ramp(1),
            },
            {
                f"llm_request_input_tokens_sum{HIST}": ramp(12000),
                f"llm_request_input_tokens_count{HIST}": ramp(1),
                f'llm_tokens_total{HIST[:-1]},token_type="cache_read"}}': ramp(100),
            },
        ],
        labels={**B_LABELS, "severity": "P3"},
        # This agent/task's prompt-cache hit ratio, not the budget's standing.
        annotations=annotations_b(
            "Agent a (task t) sends 12,000 input tokens per request with no prompt-cache reads in 30m",
            used="12,000 input tokens per request, prompt-cache hit ratio 0%",
            limit="prompts of 10,000+ input tokens should hit the cache",
            percent="0%",
            window="30m",
        ),
    ),
]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def unit_test(case: Case, series: dict[str, str], fires: bool) -> dict[str, Any]:
    inputs = {**case.ledger, **series}
    expected = [{"exp_labels": case.labels, "exp_annotations": case.annotations}] if fires else []
    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in inputs.items()],
        "alert_rule_test": [{"eval_time": EVAL, "alertname": case.alert, "exp_alerts": expected}],
    }


def run_promtool_tests(tmp_path: Path, budgets: BudgetFile, tests: list[dict[str, Any]]) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "rules.yml").write_text(render_rules(budgets, "test-budgets.yaml"))
    spec = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_kind_has_a_case():
    assert {c.alert for c in CASES} == set(ALERT_NAMES)


@needs_promtool
@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=[f"{c.alert}-{c.labels['budget']}" for c in CASES])
def test_alert_fires_above_boundary_silent_below_and_respects_for(case: Case, tmp_path: Path):
    elapsed = [unit_test(case, case.above, fires=True)] + [
        unit_test(case, s, fires=False) for s in case.below
    ]
    run_promtool_tests(tmp_path / "for-30m", budgets_with_for("30m"), elapsed)
    # Same series, but `for: 3h` has not elapsed at the evaluation time: the alert is only pending.
    run_promtool_tests(
        tmp_path / "for-3h", budgets_with_for("3h"), [unit_test(case, case.above, fires=False)]
    )


@needs_promtool
@pytest.mark.integration
def test_rendered_example_passes_promtool_check_rules(tmp_path: Path):
    (tmp_path / "rules.yml").write_text(render_rules(load_budget_file(EXAMPLE), "examples/budgets.yaml"))
    result = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_renders_the_seed_alert_rules():
    """The seed's table: warning at 80% (P3), runaway at 3x (P1), spike at 2x (P2), forecast 90% (P2)."""
    groups = rule_groups(load_budget_file(EXAMPLE))
    support = next(g for g in groups if g.name == "otel-tokens-budget-support-daily")
    alerts = support.alerts()
    # Summed over collector instances: used adds up, the limit is the same on each (max).
    assert alerts["BudgetWarning"].expr == (
        'sum by (budget, window) (llm_budget_used{budget="support-daily"})'
        ' / max by (budget, window) (llm_budget_limit{budget="support-daily"}) >= 0.8 < 1'
    )
    assert alerts["BudgetWarning"].labels["severity"] == "P3"
    assert alerts["RunawayTask"].expr == (
        'sum by (budget, agent, task, task_id) (llm_task_instance_tokens{budget="support-daily"}) > 60000'
    )
    assert alerts["RunawayTask"].labels["severity"] == "P1"
    assert alerts["TokenSpike"].labels["severity"] == "P2"
    assert "> 0.08333333333" in alerts["TokenSpike"].expr  # 2 x (1h / 24h)
    assert alerts["BudgetForecast"].expr.endswith("> 0.9")
    assert alerts["BudgetForecast"].labels["severity"] == "P2"
    assert set(alerts) == set(ALERT_NAMES)
    for rule in alerts.values():
        assert rule.labels["budget"] == "support-daily" and rule.labels["agent"] == "support"
        assert {"summary", "used", "limit", "percent", "window", "dashboard"} <= set(rule.annotations)
        assert rule.annotations["description"] == "Customer-support agent"


def test_exact_budget_alerts_read_the_ledger_not_increase():
    for group in rule_groups(load_budget_file(EXAMPLE))[1:]:
        for rule in group.alerts().values():
            if rule.alert in ("BudgetWarning", "BudgetExceeded", "RunawayTask"):
                assert "increase(" not in rule.expr and "rate(" not in rule.expr


def test_rendering_is_deterministic_and_marked_generated():
    budgets = load_budget_file(EXAMPLE)
    text = render_rules(budgets, "examples/budgets.yaml")
    assert text == render_rules(load_budget_file(EXAMPLE), "examples/budgets.yaml")
    assert text.startswith("# generated by otel-tokens render examples/budgets.yaml — do not edit\n")
    assert "interval: 200ms" in render_rules(budgets, interval="200ms")


@needs_promtool
@pytest.mark.integration
def test_prometheus_config_renders_and_passes_promtool(tmp_path: Path):
    (tmp_path / "rules.yml").write_text(render_rules(load_budget_file(EXAMPLE)))
    config = render_prometheus_config(
        collector="127.0.0.1:19464",
        alertmanager="127.0.0.1:19093",
        rule_files=["rules.yml"],
        scrape_interval="200ms",
        evaluation_interval="200ms",
    )
    (tmp_path / "prometheus.yml").write_text(config)
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = yaml.safe_load(config)
    assert data["global"] == {"scrape_interval": "200ms", "evaluation_interval": "200ms"}
    assert data["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19464"]
    assert data["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    # Several collectors: several targets of one job, each its own `instance` that the rules sum over.
    fleet = yaml.safe_load(render_prometheus_config(collector=["c1:9464", "c2:9464"]))
    assert fleet["scrape_configs"][0]["static_configs"][0]["targets"] == ["c1:9464", "c2:9464"]
    default = yaml.safe_load(render_prometheus_config())
    assert default["scrape_configs"][0]["static_configs"][0]["targets"] == ["collector:9464"]
    assert default["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


# --- figures as people read them, at every magnitude ------------------------------------------------

#: (limit, used) in dollars, from a tenth of a cent to thousands: `humanize` would print $0.0017 as
#: `1.7m` and `%.2f` a $0.002 limit as `$0.00`.
USD_MAGNITUDES = [(0.002, 0.0021), (0.01, 0.0123), (1.5, 1.7), (2000, 2222.225), (1_000_000, 1_234_567.891)]
TOKEN_MAGNITUDES = [(500, 503), (2_000_000, 2_000_001)]


@needs_promtool
@pytest.mark.integration
def test_money_and_tokens_in_annotations_read_right_at_every_magnitude(tmp_path: Path):
    """The `used` annotation (a Go template Prometheus expands) prints money and token counts the
    way `otel_tokens.humanize` prints them for static text, and so does the limit text."""
    figures = [(f"usd{i}", "usd", limit, used) for i, (limit, used) in enumerate(USD_MAGNITUDES)]
    figures += [(f"tok{i}", "tokens", limit, used) for i, (limit, used) in enumerate(TOKEN_MAGNITUDES)]
    lines = [f"  - {{name: {n}, limit: {{{u}: {limit}}}, window: 1d}}" for n, u, limit, _ in figures]
    spec = parse_budget_text("alert_for: {budget_exceeded: 0s}\nbudgets:\n" + "\n".join(lines) + "\n")
    series: dict[str, str] = {}
    expected = []
    for name, unit, limit, used in figures:
        series[f'llm_budget_used{{budget="{name}",window="1d",unit="{unit}"}}'] = f"{used!r}x20"
        series[f'llm_budget_limit{{budget="{name}",window="1d",unit="{unit}"}}'] = f"{limit!r}x20"
        money = unit == "usd"
        notes = {
            "used": format_usd(used) if money else f"{format_tokens(used)} tokens",
            "limit": (format_usd(limit) if money else f"{short_number(limit)} tokens") + " per 1d",
        }
        expected.append(
            {"exp_labels": {"budget": name, "severity": "P2", "window": "1d"}, "exp_annotations": notes}
        )
    # Summaries and percentages are pinned by the per-alert cases above; here only the figures.
    rules = yaml.safe_load(render_rules(spec))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "BudgetExceeded":
                rule["annotations"] = {k: rule["annotations"][k] for k in ("used", "limit")}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    test = {
        "interval": "1m",
        "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "alert_rule_test": [{"eval_time": "10m", "alertname": "BudgetExceeded", "exp_alerts": expected}],
    }
    spec_file = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [test]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec_file, sort_keys=False))
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # What "as people read them" means here, spelled out once.
    assert [n["exp_annotations"]["used"] for n in expected][:3] == ["$0.0021", "$0.012", "$1.70"]
    assert expected[0]["exp_annotations"]["limit"] == "$0.0020 per 1d"
    assert expected[4]["exp_annotations"]["used"] == "$1,234,567.89"
    assert expected[6]["exp_annotations"]["used"] == "2,000,001 tokens"
