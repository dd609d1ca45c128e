"""The collector's status page: the pure renderer (escaping, sections shown only when the data has
them) and the served page in a real headless Chromium — it loads with no console error, shows the
workload's numbers, and updates after more calls. The screenshot in the README is taken here."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from otel_tokens.humanize import format_tokens, format_usd
from otel_tokens.ops.page import render_page
from tests.chromium import chromium
from tests.ops_live import live_collector
from tests.services import http_get_json, poll

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "status-page.png"


def summary(**overrides: Any) -> dict[str, Any]:
    tokens = {"input": 1200, "output": 300, "cache_read": 0, "cache_write": 0, "reasoning": 0}
    doc: dict[str, Any] = {
        "generated_at": 1_800_000_000.0, "started_at": 1_799_996_400.0,
        "totals": {"key": "total", "tokens": tokens, "total_tokens": 1500, "cost_usd": 0.0021,
                   "requests": 3, "cache_hit_ratio": 0.0},
        "top_agents": [{"key": "<b>evil</b>", "cost_usd": 0.0021, "tokens": 1500, "share": 1.0}],
        "top_models": [{"key": "gpt-4o-mini", "cost_usd": 0.0021, "tokens": 1500, "share": 1.0}],
        "budgets": [{"name": "support-daily", "window": "1d", "unit": "tokens", "used": 1500.0,
                     "limit": 1000.0, "ratio": 1.5, "warn_at": 0.8, "state": "exceeded",
                     "remaining_seconds": 86400.0, "resets_at": None, "rate_per_hour": 1500.0,
                     "projected": 36000.0, "seconds_left": 0.0}],
        "alerts": [{"alert": "BudgetExceeded", "severity": "P2", "budget": "support-daily",
                    "summary": "150% of its limit used"}],
    }  # fmt: skip
    return doc | overrides


def test_page_escapes_what_outsiders_name_and_draws_budget_bars_with_thresholds():
    page = render_page(summary())
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page
    assert 'data-budget="support-daily"' in page and "150.0%" in page and "limit reached" in page
    assert 'class="mark" style="left:80.0%"' in page  # the warning threshold
    assert 'data-alert="BudgetExceeded"' in page
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page)  # nothing external


def test_stop_orders_show_only_when_the_data_has_them_and_no_budgets_is_explained():
    assert "Stop orders" not in render_page(summary())
    with_orders = render_page(summary(stop_orders=[{"budget": "support-daily", "action": "block"}]))
    assert "Stop orders" in with_orders and "budget=support-daily, action=block" in with_orders
    plain = render_page(summary(budgets=None, alerts=None))
    assert "this collector tracks no budgets: start it with --budgets-file" in plain


def test_budgets_page_shows_budgets_and_alerts_only():
    page = render_page(summary(), only_budgets=True)
    assert 'id="budgets"' in page and 'id="alerts"' in page
    assert 'id="totals"' not in page and 'id="top-agents"' not in page


def _tile(page: Any, name: str) -> str:
    return str(page.evaluate(f"document.querySelector('[data-total=\"{name}\"] b').innerText"))


@pytest.mark.integration
@pytest.mark.e2e
def test_the_served_page_shows_the_workload_and_updates_in_a_real_browser(tmp_path: Path):
    with live_collector(tmp_path) as live:
        live.support_call("t-1")
        live.research_call("r-1")
        live.wait_counted()
        doc = http_get_json(f"{live.url}/api/v1/summary")
        with urllib.request.urlopen(f"{live.url}/budgets", timeout=5) as resp:
            assert resp.status == 200 and "support-daily" in resp.read().decode()
        with chromium(tmp_path) as page:
            page.goto(f"{live.url}/")
            assert page.evaluate("document.title") == "otel-tokens"
            first = doc["totals"]["total_tokens"]
            assert _tile(page, "tokens") == format_tokens(first)
            assert _tile(page, "cost") == format_usd(doc["totals"]["cost_usd"])
            assert "support-daily" in page.text("#budgets") and "research" in page.text("#top-agents")
            live.research_call("r-2")  # more calls: the page refreshes itself
            live.wait_counted()
            poll(lambda: _tile(page, "tokens"), lambda shown: shown != format_tokens(first),
                 timeout=20, what="the page to show the new calls")  # fmt: skip
            now = http_get_json(f"{live.url}/api/v1/summary")["totals"]["total_tokens"]
            assert _tile(page, "tokens") == format_tokens(now) and now > first
            page.pump(0.5)
            assert page.errors == []
            if os.environ.get("OTEL_TOKENS_UPDATE_SCREENSHOT"):
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(SCREENSHOT)
            page.screenshot(tmp_path / "status-page.png")
            assert (tmp_path / "status-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(json.dumps(doc))["budgets"]
