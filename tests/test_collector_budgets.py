"""The collector with a budget file: exact standing at /api/v1/budgets, and a broken budget file
stops start-up with every error listed (file:line) before any port is opened."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_tokens.budgets.loader import BudgetFileError
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.record import Attribution, TokenCounts, UsageRecord
from tests.services import http_get_json

pytestmark = pytest.mark.integration

GOOD = textwrap.dedent(
    """
    version: 1
    budgets:
      - {name: support-daily, scope: {agent: support}, limit: {tokens: 1000}, window: 1d}
      - {name: everything-usd, limit: {usd: 5}, window: month}
    """
)
BROKEN = textwrap.dedent(
    """
    version: 1
    budgets:
      - name: support-daily
        limit: {tokens: -5}
        window: 1d
      - name: support-daily
        limit: {tokens: 10}
        window: fortnight
    """
)


def test_budget_status_endpoint_reports_exact_use(tmp_path: Path):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(GOOD)
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    with CollectorService(config) as collector:
        tokens = TokenCounts(input=700, output=150, cache_read=200)
        collector.pipeline.ingest_records(
            [
                UsageRecord(
                    provider="openai",
                    request_model="gpt-4o-mini",
                    tokens=tokens,
                    cost_usd=0.5,
                    attribution=Attribution(agent="support"),
                    span_id=1,
                    trace_id=1,
                )
            ]
        )
        status = http_get_json(f"http://127.0.0.1:{collector.metrics_port}/api/v1/budgets")["budgets"]
    by_name = {s["name"]: s for s in status}
    assert by_name["support-daily"]["used"] == tokens.total == 850
    assert by_name["support-daily"]["state"] == "warning"  # 85% ≥ the default 80% warn threshold
    assert by_name["everything-usd"]["used"] == pytest.approx(0.5)
    assert by_name["everything-usd"]["state"] == "ok"


def test_broken_budget_file_stops_startup_with_every_error(tmp_path: Path):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BROKEN)
    with pytest.raises(BudgetFileError) as err:
        CollectorService(CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets)))
    text = str(err.value)
    assert "budgets.yaml:5:" in text and "-5" in text
    assert "budgets.yaml:9:" in text and "fortnight" in text
    assert "support-daily" in text  # the duplicate name


def test_collector_command_exits_with_the_budget_errors(tmp_path: Path):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BROKEN)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_tokens.cli",
            "collector",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--budgets-file",
            str(budgets),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode != 0
    assert "budgets.yaml:5:" in run.stderr
    assert "Traceback" not in run.stderr


def test_status_command_prints_the_standing_and_explains_a_missing_ledger(tmp_path: Path):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(GOOD)
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    with CollectorService(config) as collector:
        collector.pipeline.ingest_records(
            [
                UsageRecord(
                    provider="openai",
                    request_model="gpt-4o-mini",
                    tokens=TokenCounts(input=900),
                    attribution=Attribution(agent="support"),
                    span_id=2,
                    trace_id=2,
                )
            ]
        )
        url = f"http://127.0.0.1:{collector.metrics_port}"
        run = subprocess.run(
            [sys.executable, "-m", "otel_tokens.cli", "status", "--collector", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert run.returncode == 1, run.stderr  # exit 1: a budget is at its warning threshold
    line = next(x for x in run.stdout.splitlines() if x.startswith("support-daily"))
    assert "900" in line and "90.0%" in line and "warning" in line

    with CollectorService(CollectorConfig(http_port=0, grpc_port=0, metrics_port=0)) as plain:
        url = f"http://127.0.0.1:{plain.metrics_port}"
        run = subprocess.run(
            [sys.executable, "-m", "otel_tokens.cli", "status", "--collector", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert run.returncode == 3  # the standing could not be read
    assert "--budgets-file" in run.stderr
