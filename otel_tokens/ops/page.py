"""The collector's status page (`/` and `/budgets`): for users who have not set up Grafana.

`render_page(summary)` is pure — the `/api/v1/summary` document in, one HTML page out — so the page
is tested without a server and served by the collector with two small routes. It is plain
server-rendered HTML with no external resource and no build step; a few lines of JavaScript
refresh it every few seconds by fetching the page again and swapping its `<main>`, so there is one
renderer (this one) and the page still reads fine with JavaScript off.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from otel_tokens.ops.html import CSS, budget_bars, esc, share_bars, totals_grid
from otel_tokens.ops.outlook import format_duration

__all__ = ["REFRESH_SECONDS", "render_page"]

REFRESH_SECONDS = 5

_SCRIPT = """
(function () {
  var every = %d * 1000, stamp = document.getElementById("updated");
  function refresh() {
    fetch(window.location.pathname, {cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("main");
        if (fresh) { document.querySelector("main").replaceWith(fresh); }
        stamp.textContent = "updated " + new Date().toLocaleTimeString();
        stamp.className = "muted";
      })
      .catch(function (e) { stamp.textContent = "collector unreachable (" + e.message + "), retrying"; })
      .finally(function () { window.setTimeout(refresh, every); });
  }
  window.setTimeout(refresh, every);
})();
"""


def _section(title: str, body: str, key: str) -> str:
    return f'<section id="{esc(key)}"><h2>{esc(title)}</h2>{body}</section>'


def _alerts(alerts: list[Mapping[str, Any]] | None) -> str:
    if alerts is None:
        return '<p class="muted">no budgets tracked, so no budget alerts</p>'
    if not alerts:
        return '<p class="muted">none open</p>'
    rows = "".join(
        f'<tr data-alert="{esc(a["alert"])}"><td><b>{esc(a["alert"])}</b></td><td>{esc(a["severity"])}</td>'
        f"<td>{esc(a['budget'])}</td><td>{esc(a['summary'])}</td></tr>"
        for a in alerts
    )
    return f"<table><tr><th>alert</th><th>severity</th><th>budget</th><th>what</th></tr>{rows}</table>"


def _stop_orders(orders: list[Mapping[str, Any]]) -> str:
    if not orders:
        return '<p class="muted">none</p>'
    items = "".join(f"<li>{esc(', '.join(f'{k}={v}' for k, v in o.items()))}</li>" for o in orders)
    return f"<ul>{items}</ul>"


def _budgets(summary: Mapping[str, Any]) -> str:
    budgets = summary.get("budgets")
    if budgets is None:
        return (
            '<p class="muted">this collector tracks no budgets: start it with --budgets-file budgets.yaml</p>'
        )
    return budget_bars(budgets)


def _main(summary: Mapping[str, Any], only_budgets: bool) -> str:
    parts = [_section("Budgets", _budgets(summary), "budgets")]
    if not only_budgets:
        parts.insert(0, _section("Totals", totals_grid(summary["totals"]), "totals"))
        parts.append(_section("Top agents", share_bars(summary["top_agents"], "agent"), "top-agents"))
        parts.append(_section("Top models", share_bars(summary["top_models"], "model"), "top-models"))
    parts.append(_section("Open alerts", _alerts(summary.get("alerts")), "alerts"))
    if "stop_orders" in summary:  # only collectors that receive Alertmanager's stop orders have them
        parts.append(_section("Stop orders", _stop_orders(summary["stop_orders"]), "stop-orders"))
    return "<main>" + "".join(parts) + "</main>"


def render_page(summary: Mapping[str, Any], *, only_budgets: bool = False) -> str:
    """The whole page for `summary` (`/api/v1/summary`'s document); `/budgets` shows budgets and
    alerts only."""
    now = float(summary.get("generated_at", time.time()))
    started = float(summary.get("started_at", now))
    at = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = "otel-tokens: budgets" if only_budgets else "otel-tokens"
    nav = '<a href="/">overview</a> · <a href="/budgets">budgets</a> · <a href="/metrics">/metrics</a>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><div class="muted">{nav} · collector up '
        f"{esc(format_duration(now - started))} · totals since it started · as of {esc(at)} · "
        f'<span id="updated" class="muted">refreshes every {REFRESH_SECONDS} s</span></div></header>'
        f"{_main(summary, only_budgets)}<script>{_SCRIPT % REFRESH_SECONDS}</script></body></html>"
    )
