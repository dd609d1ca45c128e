"""`otel-tokens usage`, `top`, `status` and `report` against a real collector fed by real SDK calls
(and, for `--prometheus`, a real Prometheus scraping it): the numbers a user reads are the ones the
provider reported, tables fit 80 columns, every command has --json."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from otel_tokens import metric_names as mn
from otel_tokens.budgets.cli import status_exit_code
from otel_tokens.cli import main
from tests import prom_text
from tests.ops_live import Live, live_collector
from tests.services import poll, run_prometheus

ROOT = Path(__file__).resolve().parent.parent
#: What a float printed raw looks like: 0.009011999999999997, 1.1999999999999999e-05 (humanize keeps two
#: significant digits below a dollar: $0.0000054 is money, not a raw float).
RAW_FLOAT = re.compile(r"\d\.0*[1-9]\d{3,}|\de-\d")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_collector(tmp_path_factory.mktemp("ops")) as running:
        running.support_call("t-1")
        running.research_call("r-1")
        running.support_call("t-2")
        running.wait_counted()
        yield running


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_tokens.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def cost_of(live: Live, **labels: str) -> float:
    return prom_text.total(prom_text.scrape(live.collector.metrics_port), mn.COST, **labels)


# --- usage ----------------------------------------------------------------------------------------
def test_usage_shows_the_tokens_the_provider_reported_by_agent_and_type(live: Live, capsys):
    code, doc = run_json(capsys, "usage", "--collector", live.url)
    assert code == 0
    rows = {r["key"]: r for r in doc["rows"]}
    assert {agent: rows[agent]["tokens"] for agent in live.expected} == live.expected
    assert rows["research"]["tokens"]["cache_write"] > 0  # the cached Anthropic prompt
    assert doc["total"]["total_tokens"] == sum(sum(t.values()) for t in live.expected.values())
    assert doc["total"]["requests"] == live.calls
    assert doc["total"]["cost_usd"] == pytest.approx(cost_of(live)) and doc["total"]["cost_usd"] > 0
    assert doc["rows"][0]["cost_usd"] >= doc["rows"][-1]["cost_usd"]  # most expensive first
    assert "since the collector" in doc["source"]


def test_usage_table_fits_80_columns_with_separators_and_money_as_money(live: Live):
    run = cli("usage", "--collector", live.url)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, run.stdout
    assert lines[0].split() == [
        "agent",
        "input",
        "output",
        "cache",
        "rd",
        "cache",
        "wr",
        "reason",
        "total",
        "cost",
    ]
    total = next(line for line in lines if line.startswith("total"))
    all_tokens = sum(sum(t.values()) for t in live.expected.values())
    assert f"{all_tokens:,}" in total and "$" in total
    assert not RAW_FLOAT.search(run.stdout)
    assert run.stderr == ""  # no progress without a terminal


def test_usage_by_model_with_a_filter_keeps_only_matching_series(live: Live, capsys):
    code, doc = run_json(
        capsys, "usage", "--collector", live.url, "--by", "model", "--filter", "agent=research"
    )
    assert code == 0
    assert [r["key"] for r in doc["rows"]] == ["claude-sonnet-4-6"]
    assert doc["rows"][0]["tokens"] == live.expected["research"]
    assert doc["filters"] == {"agent": "research"}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--by", "user"], "--dimensions agent,task,model,provider,user"),
        (["--since", "24h"], "--since needs history, which only Prometheus keeps: add --prometheus URL"),
        (["--filter", "agent"], "--filter wants KEY=VALUE"),
        (["--filter", "colour=red"], "KEY must be one of agent, task, model, user, provider"),
    ],
)
def test_usage_says_what_it_cannot_answer_and_why(live: Live, args: list[str], said: str):
    run = cli("usage", "--collector", live.url, *args)
    assert run.returncode == 1
    assert said in run.stderr and "Traceback" not in run.stderr


def test_usage_of_an_unreachable_collector_is_one_clear_line(capsys):
    assert main(["usage", "--collector", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("otel-tokens usage: cannot read http://127.0.0.1:9/metrics")


# --- top ------------------------------------------------------------------------------------------
def test_top_ranks_by_cost_with_each_rows_share(live: Live, capsys):
    code, doc = run_json(capsys, "top", "--collector", live.url, "--by", "agent")
    assert code == 0
    whole = cost_of(live)
    costs = {agent: cost_of(live, agent=agent) for agent in live.expected}
    assert [r["key"] for r in doc["rows"]] == sorted(costs, key=lambda a: -costs[a])
    for row in doc["rows"]:
        assert row["share"] == pytest.approx(costs[row["key"]] / whole)
    assert sum(r["share"] for r in doc["rows"]) == pytest.approx(1.0)
    code, one = run_json(capsys, "top", "--collector", live.url, "-n", "1")
    assert [r["key"] for r in one["rows"]] == [doc["rows"][0]["key"]]


def test_top_table_shows_shares_in_80_columns(live: Live):
    run = cli("top", "--collector", live.url, "--by", "model")
    assert run.returncode == 0, run.stderr
    assert max(len(line) for line in run.stdout.splitlines()) <= 80
    assert re.search(r"^1\s+claude-sonnet-4-6\s+[\d,]+\s+\d+\s+\$[\d.]+\s+\d+\.\d%", run.stdout, re.M), (
        run.stdout
    )


# --- status ---------------------------------------------------------------------------------------
def test_status_shows_every_budget_with_burn_rate_projection_and_time_left(
    live: Live, capsys, monkeypatch: pytest.MonkeyPatch
):
    code, doc = run_json(capsys, "status", "--collector", live.url)
    budgets = {b["name"]: b for b in doc["budgets"]}
    assert set(budgets) == {"support-daily", "research-daily", "everyone-monthly-usd"}
    assert code == doc["exit_code"] == status_exit_code(b["state"] for b in doc["budgets"])
    support = budgets["support-daily"]
    assert support["used"] == sum(live.expected["support"].values())
    # the collector started seconds ago: too little data for a burn rate, so none is made up
    assert (support["rate_per_hour"], support["projected"], support["seconds_left"]) == (None, None, None)
    assert main(["status", "--collector", live.url]) == code
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("support-daily "))
    assert row.count("—") == 3, row  # at end, burn/h, left
    # ten minutes on, the rate is the use of the minutes counted (over 10, under 60), per hour
    monkeypatch.setattr(live.collector.pipeline.clock, "base", lambda: time.time() + 600)
    code, doc = run_json(capsys, "status", "--collector", live.url)
    support = next(b for b in doc["budgets"] if b["name"] == "support-daily")
    used = sum(live.expected["support"].values())
    assert used <= support["rate_per_hour"] <= used * 6
    assert support["projected"] == pytest.approx(support["rate_per_hour"] * 24)  # rolling 1d
    assert support["seconds_left"] is not None
    monthly = budgets["everyone-monthly-usd"]
    assert monthly["unit"] == "usd" and monthly["resets_at"] > monthly["remaining_seconds"]
    assert main(["status", "--collector", live.url]) == code
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["budget", "window", "used", "limit", "%", "at", "end", "burn/h",
                                             "left", "state"]  # fmt: skip
    assert "everyone-monthly-usd resets " in table
    assert max(len(line) for line in table.splitlines()) <= 80


# --- report ---------------------------------------------------------------------------------------
def test_report_writes_markdown_json_and_an_html_page_that_needs_no_network(
    live: Live, tmp_path: Path, capsys
):
    assert main(["report", "--collector", live.url, "--out", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    stem = tmp_path / "otel-tokens-report-day"
    for suffix in (".md", ".json", ".html"):
        assert f"wrote {stem}{suffix}" in said
    doc = json.loads(stem.with_suffix(".json").read_text())
    assert doc["totals"]["total_tokens"] == sum(sum(t.values()) for t in live.expected.values())
    assert {t["task"] for t in doc["tasks"]} == {"answer-ticket", "literature-review"}
    answer = next(t for t in doc["tasks"] if t["task"] == "answer-ticket")
    assert answer["completed"] == 2 and answer["cost_per_task_usd"] == pytest.approx(answer["cost_usd"] / 2)
    assert doc["cost_over_time"] is None and "--prometheus" in doc["history_note"]
    page = stem.with_suffix(".html").read_text()
    assert page.count("<svg") >= 3  # cost by model, cache-hit ratio, cost per task
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "an external resource"
    assert not re.search(r"<script[^>]*\ssrc|<link|@import|url\(", page), "a resource to fetch"
    assert "support-daily" in page and 'class="mark"' in page  # budget bars with threshold marks
    code, printed = run_json(capsys, "report", "--collector", live.url, "--out", str(tmp_path))
    assert code == 0 and printed["totals"] == doc["totals"]  # --json prints the same document
    markdown = stem.with_suffix(".md").read_text()
    assert "## Budgets" in markdown and "| support-daily | 1d |" in markdown
    assert not RAW_FLOAT.search(markdown)


# --- a fleet: the same commands over a Prometheus that scrapes the collector ----------------------
@pytest.mark.e2e
def test_commands_read_a_prometheus_that_scrapes_the_collector(live: Live, tmp_path: Path, capsys):
    target = f"127.0.0.1:{live.collector.metrics_port}"
    with run_prometheus(tmp_path, [target]) as prom:
        poll(lambda: prom.scalar(f"sum({mn.REQUESTS})"), lambda n: n == live.calls, what="the first scrape")
        live.research_call("r-2")  # use Prometheus sees happen: what --since counts
        live.wait_counted()
        poll(lambda: prom.scalar(f"sum({mn.REQUESTS})"), lambda n: n == live.calls, what="the new call")
        url = prom.url
        code, doc = run_json(capsys, "usage", "--prometheus", url)
        assert code == 0 and "--prometheus" not in doc["source"]
        assert {r["key"]: r["tokens"] for r in doc["rows"]} == live.expected
        code, recent = run_json(
            capsys, "usage", "--prometheus", url, "--since", "1h", "--filter", "agent=research"
        )
        assert code == 0 and recent["since"] == "1h" and recent["total"]["total_tokens"] > 0
        code, status = run_json(capsys, "status", "--prometheus", url, "--budgets", str(live.budgets))
        ledger = {s.name: s.used for s in live.collector.ledger.status()}
        assert {b["name"]: b["used"] for b in status["budgets"]} == ledger
        assert all(b["rate_per_hour"] is not None for b in status["budgets"])
        assert main(["report", "--prometheus", url, "--out", str(tmp_path)]) == 0
        report = json.loads((tmp_path / "otel-tokens-report-day.json").read_text())
    timeline = report["cost_over_time"]
    assert set(timeline["series"]) == {"support", "research"} and len(timeline["times"]) == 25  # hourly
    assert sum(timeline["series"]["research"]) > 0
    assert sum(report["hourly_tokens"]) > 0
    this_hour = datetime.now(timezone.utc).hour  # the calls were just made (or the hour just turned)
    assert report["peak_hours_utc"][0] in (this_hour, (this_hour - 1) % 24)
    page = (tmp_path / "otel-tokens-report-day.html").read_text()
    assert "Tokens by hour of day" in page and "Cost over time by agent" in page


def test_progress_goes_to_a_terminals_stderr_and_never_into_the_output(live: Live):
    """On a terminal the fetch shows a spinner on stderr; stdout (here --json) stays parseable."""
    leader, follower = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "otel_tokens.cli", "usage", "--collector", live.url, "--json"],
            stdout=subprocess.PIPE, stderr=follower, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert run.returncode == 0
    assert f"reading metrics from {live.url}/metrics" in shown.decode(errors="replace")
    assert json.loads(run.stdout)["total"]["requests"] == live.calls
