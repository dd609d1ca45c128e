"""The rendered Alertmanager config, checked by Alertmanager's own tools.

`amtool check-config` parses it (templates included) the way Alertmanager will; `amtool config
routes test` says which receiver an alert of each severity reaches; a real Alertmanager shows the
exceeded alert silencing the same budget's warning — and only that budget's.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_tokens.budgets import load_budget_file, parse_budget_text
from otel_tokens.budgets.render_alertmanager import (
    COLLECTOR_RECEIVER,
    DEFAULT_RECEIVER,
    AlertmanagerOverrides,
    alertmanager_yaml,
    notification_template,
)
from otel_tokens.budgets.spec import BudgetFile

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "budgets.yaml"
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool missing: apt-get install prometheus-alertmanager"
)

# Every integration the budget file can express, so each is checked by amtool, not only webhooks.
ALL_RECEIVERS = """
dashboard_url: http://grafana.example:3000/d/otel-tokens-overview
budgets:
  - {name: support-daily, scope: {agent: support}, limit: {tokens: 500000}, window: 1d, severity: P1}
alerting:
  default_receiver: tickets
  group_wait: 10s
  receivers:
    - name: pager
      pagerduty_configs: [{routing_key_file: /etc/alertmanager/pagerduty.key}]
      webhook_configs: [{url: "http://hooks.example:8080/page", max_alerts: 5}]
    - name: chat
      slack_configs: [{api_url_file: /etc/alertmanager/slack.url, channel: "#llm-budgets"}]
    - name: tickets
      email_configs: [{to: oncall@example.com, from: am@example.com, smarthost: "smtp.example:587"}]
  routes:
    - {severity: P3, receiver: tickets, repeat_interval: 24h}
    - {severity: P1, receiver: pager, repeat_interval: 1h, group_wait: 0s}
    - {severity: P2, receiver: chat}
"""


def write_config(spec: BudgetFile, directory: Path, overrides: AlertmanagerOverrides | None = None) -> Path:
    """The two generated files, laid out as in the repository (the template path is relative)."""
    (directory / "templates").mkdir(parents=True, exist_ok=True)
    config = directory / "alertmanager.yml"
    config.write_text(alertmanager_yaml(spec, "test", overrides), encoding="utf-8")
    template = notification_template("test", spec.dashboard_url)
    (directory / "templates" / "otel-tokens.tmpl").write_text(template, encoding="utf-8")
    return config


def amtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def routed_receiver(config: Path, *labels: str) -> str:
    result = amtool("config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(params=["example", "all-receivers"])
def spec(request: pytest.FixtureRequest) -> BudgetFile:
    if request.param == "example":
        return load_budget_file(EXAMPLE)
    return parse_budget_text(ALL_RECEIVERS, "all-receivers.yaml")


@needs_amtool
def test_amtool_accepts_the_rendered_config_and_template(spec: BudgetFile, tmp_path: Path):
    config = write_config(spec, tmp_path)
    result = amtool("check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout  # the glob found and parsed our template file


@needs_amtool
def test_each_severity_reaches_its_receiver(spec: BudgetFile, tmp_path: Path):
    config = write_config(spec, tmp_path)
    assert spec.alerting is not None
    for route in spec.alerting.routes:
        labels = [f"severity={route.severity}", "budget=support-daily", "agent=support"]
        assert routed_receiver(config, "alertname=BudgetExceeded", *labels) == route.receiver
    # Anything without a known severity falls through to the default receiver, never nowhere.
    assert routed_receiver(config, "alertname=Other") == spec.alerting.default_receiver


def test_example_pages_p1_and_sends_p3_to_lower_urgency():
    config = yaml.safe_load(alertmanager_yaml(load_budget_file(EXAMPLE), "test"))
    # The example also posts alerts that act to the collector, on a first route that `continue`s.
    acting, *severity_routes = config["route"]["routes"]
    assert acting["receiver"] == COLLECTOR_RECEIVER and acting["continue"] is True
    routes = {r["matchers"][0]: r for r in severity_routes}
    assert routes['severity="P1"']["receiver"] == "oncall-webhook"
    assert routes['severity="P3"']["receiver"] != "oncall-webhook"
    assert [r["matchers"] for r in severity_routes] == [  # ordered by severity
        ['severity="P1"'],
        ['severity="P2"'],
        ['severity="P3"'],
    ]


def test_grouping_and_timers_come_from_the_budget_file():
    spec = parse_budget_text(ALL_RECEIVERS, "all-receivers.yaml")
    route = yaml.safe_load(alertmanager_yaml(spec, "test"))["route"]
    assert route["group_by"] == ["alertname", "budget", "agent"]
    assert route["group_wait"] == "10s"
    p1 = next(r for r in route["routes"] if r["matchers"] == ['severity="P1"'])
    assert (p1["group_wait"], p1["repeat_interval"]) == ("0s", "1h")


def test_exceeded_inhibits_warning_and_forecast_of_the_same_budget():
    config = yaml.safe_load(alertmanager_yaml(load_budget_file(EXAMPLE), "test"))
    assert config["inhibit_rules"] == [
        {
            "source_matchers": ['alertname="BudgetExceeded"'],
            "target_matchers": ['alertname=~"BudgetWarning|BudgetForecast"'],
            "equal": ["budget"],
        }
    ]


@needs_amtool
def test_overrides_send_everything_to_one_webhook_without_waiting(tmp_path: Path):
    spec = parse_budget_text(ALL_RECEIVERS, "all-receivers.yaml")
    overrides = AlertmanagerOverrides(
        webhook_url="http://127.0.0.1:9/hook", group_wait="0s", group_interval="1s"
    )
    config_path = write_config(spec, tmp_path, overrides)
    assert amtool("check-config", str(config_path)).returncode == 0
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        assert set(receiver) == {"name", "webhook_configs"}
        assert receiver["webhook_configs"][0]["url"] == "http://127.0.0.1:9/hook"
    for route in [config["route"], *config["route"]["routes"]]:
        assert route.get("group_wait", "0s") == "0s"
    # Routing is unchanged: the page still goes to the pager receiver, now a webhook.
    assert routed_receiver(config_path, "severity=P1", "budget=x") == "pager"


@needs_amtool
def test_a_file_without_alerting_renders_a_valid_null_route(tmp_path: Path):
    spec = parse_budget_text("budgets: [{name: b, limit: {tokens: 10}, window: 1d}]\n", "minimal.yaml")
    config = write_config(spec, tmp_path)
    assert amtool("check-config", str(config)).returncode == 0
    assert routed_receiver(config, "severity=P1") == DEFAULT_RECEIVER


@needs_amtool
def test_notification_template_renders_title_and_dashboard_link(tmp_path: Path):
    write_config(load_budget_file(EXAMPLE), tmp_path)
    text = '{{ template "otel_tokens.title" . }}|{{ template "otel_tokens.dashboard" . }}'
    result = amtool(
        "template", "render", "--template.glob=templates/*.tmpl", f"--template.text={text}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    title, link = result.stdout.strip().split("|")
    assert title.startswith("[")  # status in brackets, then severity and alert name
    assert link == "http://localhost:3000/d/otel-tokens-overview"  # the file's dashboard_url fallback


# --- a real Alertmanager: inhibition as it actually behaves ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if ALERTMANAGER is None:
        pytest.skip("Alertmanager missing: apt-get install prometheus-alertmanager")
    overrides = AlertmanagerOverrides(webhook_url="http://127.0.0.1:9/hook", group_wait="0s")
    config = write_config(load_budget_file(EXAMPLE), tmp_path, overrides)
    port = _free_port()
    args = [f"--config.file={config}", f"--storage.path={tmp_path / 'data'}"]
    args += [f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    process = subprocess.Popen([ALERTMANAGER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _status(f"{url}/-/ready") == 200)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.05)


@pytest.mark.integration
def test_real_alertmanager_suppresses_only_the_exceeded_budgets_warning(alertmanager: str):
    def alert(name: str, budget: str, severity: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "budget": budget, "agent": "support", "severity": severity}}

    _http(
        f"{alertmanager}/api/v2/alerts",
        [
            alert("BudgetExceeded", "support-daily", "P2"),
            alert("BudgetWarning", "support-daily", "P3"),
            alert("BudgetWarning", "research-daily", "P3"),
        ],
    )

    def states() -> dict[tuple[str, str], str] | None:
        alerts = _http(f"{alertmanager}/api/v2/alerts")
        found = {(a["labels"]["alertname"], a["labels"]["budget"]): a["status"]["state"] for a in alerts}
        return found if len(found) == 3 and "suppressed" in found.values() else None

    assert _wait_until(states) == {
        ("BudgetExceeded", "support-daily"): "active",
        ("BudgetWarning", "support-daily"): "suppressed",
        ("BudgetWarning", "research-daily"): "active",
    }


@needs_amtool
def test_alerts_that_act_reach_the_collector_and_still_page_people(tmp_path: Path):
    spec = load_budget_file(EXAMPLE)
    config = write_config(spec, tmp_path)
    runaway = [
        "alertname=RunawayTask",
        "action=kill_agent_task",
        "severity=P1",
        "task_id=t-1",
        "agent=support",
    ]
    assert routed_receiver(config, *runaway) == f"{COLLECTOR_RECEIVER},oncall-webhook"
    pause = [
        "alertname=BudgetExceeded",
        "action=pause_all_noncritical_agents",
        "severity=P3",
        "budget=internal-tools-daily",
    ]
    assert routed_receiver(config, *pause) == f"{COLLECTOR_RECEIVER},team-webhook"
    # rules rendered before the action had issue 6's name still reach the collector
    older = ["action=pause_noncritical" if a.startswith("action=") else a for a in pause]
    assert routed_receiver(config, *older) == f"{COLLECTOR_RECEIVER},team-webhook"
    # an alert without an action never reaches the collector
    assert routed_receiver(config, "alertname=BudgetExceeded", "severity=P1") == "oncall-webhook"
    receiver = next(
        r for r in yaml.safe_load(config.read_text())["receivers"] if r["name"] == COLLECTOR_RECEIVER
    )
    assert receiver["webhook_configs"] == [
        {"url": "http://collector:9464/api/v1/alerts", "send_resolved": True}
    ]


@needs_amtool
def test_the_collector_receiver_carries_its_bearer_token_file(tmp_path: Path):
    token = tmp_path / "collector.token"
    token.write_text("s3cret\n")
    spec = parse_budget_text(
        "budgets: [{name: b, limit: {tokens: 10}, window: day}]\n"
        "alerting: {default_receiver: team, receivers: [{name: team}], collector_url: 'https://collector:9464/',"
        f" collector_credentials_file: '{token}'}}\n",
        "budgets.yaml",
    )
    config = write_config(spec, tmp_path)
    assert amtool("check-config", str(config)).returncode == 0
    receiver = next(
        r for r in yaml.safe_load(config.read_text())["receivers"] if r["name"] == COLLECTOR_RECEIVER
    )
    assert receiver["webhook_configs"] == [{
        "url": "https://collector:9464/api/v1/alerts", "send_resolved": True,
        "http_config": {"authorization": {"credentials_file": str(token)}},
    }]  # fmt: skip
