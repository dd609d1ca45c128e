"""The report as one self-contained HTML page: inline SVG charts (pygal), inline CSS, no external
resource — it opens offline, from a mail attachment or a CI artifact.

pygal's SVG normally pulls its tooltip script from a CDN; `js=[]` turns that off (the charts stay
readable: values are printed on the bars). Budget standing is drawn with the same bars as the
status page (`ops.html`), thresholds marked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pygal
from pygal.style import Style

from otel_tokens.humanize import format_amount, format_tokens, format_usd
from otel_tokens.ops.html import CSS, budget_bars, esc, percent, totals_grid
from otel_tokens.ops.outlook import format_duration

__all__ = ["render_html"]

_STYLE = Style(
    background="transparent", plot_background="#ffffff", foreground="#1d2330",
    foreground_strong="#1d2330", foreground_subtle="#6b7280",
    colors=("#3b82f6", "#f59e0b", "#10b981", "#8b5cf6", "#ef4444", "#14b8a6", "#f97316", "#64748b"),
    font_family="system-ui, sans-serif", value_font_size=11, label_font_size=11, legend_font_size=11,
)  # fmt: skip


def _config(**extra: Any) -> dict[str, Any]:
    """Offline (no CDN script), inline (no XML declaration), printable values."""
    return {
        "js": [], "disable_xml_declaration": True, "style": _STYLE, "width": 760, "height": 300,
        "print_values": True, "explicit_size": True, **extra,
    }  # fmt: skip


def _svg(chart: Any) -> str:
    return f'<div class="chart">{chart.render(is_unicode=True)}</div>'


def _money(value: float | None) -> str:
    return "" if value is None else format_usd(value)


def _bars(title: str, pairs: Sequence[tuple[str, float]], formatter: Callable[[float], str]) -> str:
    chart = pygal.HorizontalBar(**_config(height=max(160, 40 * len(pairs) + 80), show_legend=False,
                                          value_formatter=formatter, title=title, truncate_label=-1,
                                          x_label_rotation=30))  # fmt: skip
    ordered = list(reversed(pairs))  # pygal draws the first bar at the bottom; the largest goes on top
    chart.x_labels = [name for name, _ in ordered]
    chart.add(title, [value for _, value in ordered])
    return _svg(chart)


def _cost_over_time(timeline: Mapping[str, Any], period: str) -> str:
    fmt = "%H:%M" if period == "day" else "%m-%d %H:%M" if period == "week" else "%m-%d"
    labels = [datetime.fromtimestamp(t, timezone.utc).strftime(fmt) for t in timeline["times"]]
    chart = pygal.StackedBar(**_config(title="Cost over time by agent (UTC)", value_formatter=_money,
                                       print_values=False, x_label_rotation=30, legend_at_bottom=True,
                                       show_minor_x_labels=False, truncate_label=-1))  # fmt: skip
    chart.x_labels = labels
    chart.x_labels_major = labels[:: max(1, len(labels) // 8)]
    for agent, values in timeline["series"].items():
        chart.add(agent, list(values))
    return _svg(chart)


def _hours(hourly: Sequence[float], peaks: Sequence[int]) -> str:
    chart = pygal.Bar(**_config(title="Tokens by hour of day (UTC)", show_legend=False, print_values=False,
                                value_formatter=format_tokens))  # fmt: skip
    chart.x_labels = [f"{h:02d}" for h in range(24)]
    chart.add("tokens", list(hourly))
    said = ", ".join(f"{h:02d}:00" for h in peaks) or "none"
    return _svg(chart) + f"<p>Peak hours: <b>{esc(said)}</b> UTC.</p>"


def _burn_row(b: Mapping[str, Any]) -> str:
    unit, rate = b["unit"], b["rate_per_hour"]
    cells = [
        "-" if rate is None else format_amount(rate, unit),
        "-" if b["projected"] is None else format_amount(b["projected"], unit),
        format_amount(b["limit"], unit),
        "-" if rate is None else format_duration(b["seconds_left"]),
    ]
    return (
        f"<tr><td>{esc(b['name'])}</td>" + "".join(f'<td class="num">{esc(c)}</td>' for c in cells) + "</tr>"
    )


def _burn_table(budgets: Sequence[Mapping[str, Any]]) -> str:
    head = ('<tr><th>budget</th><th class="num">burn / hour</th><th class="num">at window end</th>'
            '<th class="num">limit</th><th class="num">left at this rate</th></tr>')  # fmt: skip
    return f"<table>{head}{''.join(_burn_row(b) for b in budgets)}</table>"


def _note(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


def _sections(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    budgets, history, hourly = doc["budgets"], doc["cost_over_time"], doc["hourly_tokens"]
    no_history = _note(doc["history_note"] or "no data")
    models = [(r["key"], r["cost_usd"]) for r in doc["by_model"]]
    cache = [(r["key"], r["cache_hit_ratio"] or 0.0) for r in doc["by_agent"]]
    tasks = [(t["task"], t["cost_per_task_usd"]) for t in doc["tasks"]]
    return [
        ("Totals", totals_grid(doc["totals"])),
        ("Cost over time by agent", _cost_over_time(history, doc["period"]) if history else no_history),
        ("Cost by model", _bars("Cost by model", models, _money) if models else _note("no calls")),
        ("Budget standing", budget_bars(budgets) if budgets is not None else _note(doc["budgets_note"])),
        ("Burn rate and time left", _burn_table(budgets) if budgets else _note("no budgets")),
        ("Usage by hour of day", _hours(hourly, doc["peak_hours_utc"] or []) if hourly else no_history),
        ("Cache-hit ratio by agent", _bars("Cache reads / all input", cache, percent) if cache else ""),
        ("Top task types by cost per completed task",
         _bars("Cost per completed task", tasks, _money) if tasks else _note("no task completed")),
    ]  # fmt: skip


def render_html(doc: Mapping[str, Any]) -> str:
    """The report page for `doc` (`report.build()`'s document)."""
    at = datetime.fromtimestamp(doc["generated_at"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = "".join(f"<section><h2>{esc(t)}</h2>{body}</section>" for t, body in _sections(doc))
    title = f"otel-tokens report: {doc['period']} to {at}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><p class="muted">Figures: {esc(doc["source"])}.</p></header>'
        f"<main>{sections}</main></body></html>\n"
    )
