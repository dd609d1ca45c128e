"""HTML pieces the status page and the HTML report share: the stylesheet and the budget bars.

Everything is escaped here (`html.escape`); budget names, agent and model names come from
outsiders' spans and files. No external resource is referenced: both pages open offline.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from otel_tokens.humanize import format_amount, format_tokens, format_usd
from otel_tokens.ops.outlook import format_duration

__all__ = ["CSS", "budget_bars", "esc", "percent", "share_bars", "totals_grid"]

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem auto; max-width: 62rem; color: #1d2330;
       background: #fafbfc; padding: 0 1rem; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
.muted { color: #6b7280; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); gap: .6rem; }
.tile, .budget { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: .5rem .7rem; }
.tile b { display: block; font-size: 1.2rem; font-variant-numeric: tabular-nums; }
.budget { margin: .5rem 0; }
.budget .head { display: flex; justify-content: space-between; gap: 1rem; flex-wrap: wrap; }
.bar { position: relative; height: 14px; background: #eef0f3; border-radius: 3px; margin: .35rem 0; }
.bar .fill { height: 100%; border-radius: 3px; background: #3b82f6; }
.bar .fill.warning { background: #f59e0b; } .bar .fill.exceeded { background: #dc2626; }
.bar .mark { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #111827; }
.state { font-weight: 600; } .state.warning { color: #b45309; } .state.exceeded { color: #b91c1c; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eef0f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.share { display: inline-block; height: 10px; background: #3b82f6; border-radius: 2px;
         vertical-align: middle; }
.chart svg { max-width: 100%; height: auto; }
"""


def percent(ratio: float | None) -> str:
    """`12.3%`; `<0.1%` for a small but non-zero share (never a misleading `0.0%`)."""
    if ratio is None:
        return "-"
    return "<0.1%" if 0 < ratio < 0.001 else f"{ratio:.1%}"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def totals_grid(totals: Mapping[str, Any]) -> str:
    """Tiles: cost, total tokens, each token type, requests, cache-hit ratio."""
    tokens: Mapping[str, float] = totals.get("tokens", {})
    ratio = totals.get("cache_hit_ratio")
    tiles = [
        ("cost", format_usd(totals.get("cost_usd", 0.0))),
        ("tokens", format_tokens(totals.get("total_tokens", 0.0))),
        *((kind.replace("_", " "), format_tokens(value)) for kind, value in tokens.items()),
        ("requests", format_tokens(totals.get("requests", 0.0))),
        ("cache hit ratio", percent(ratio)),
    ]
    cells = "".join(
        f'<div class="tile" data-total="{esc(name)}"><span class="muted">{esc(name)}</span>'
        f"<b>{esc(v)}</b></div>"
        for name, v in tiles
    )
    return f'<div class="grid">{cells}</div>'


def _budget(b: Mapping[str, Any]) -> str:
    unit, ratio, state = b["unit"], float(b["ratio"]), str(b["state"])
    used, limit = format_amount(b["used"], unit), format_amount(b["limit"], unit)
    rate, left = b.get("rate_per_hour"), b.get("seconds_left")
    if rate is None:
        burn = "burn rate: not enough data yet"
    elif left == 0:
        burn = f"burning {format_amount(rate, unit)}/h · limit reached"
    elif not rate:
        burn = "nothing used in this window"
    else:
        burn = f"burning {format_amount(rate, unit)}/h · limit in {format_duration(left)} at this rate"
    resets = ""
    if b.get("resets_at") is not None:
        resets = f" · resets in {format_duration(b['remaining_seconds'])}"
    warn = float(b.get("warn_at", 0.8))
    return (
        f'<div class="budget" data-budget="{esc(b["name"])}">'
        f'<div class="head"><span><b>{esc(b["name"])}</b> '
        f'<span class="muted">{esc(b["window"])}</span></span>'
        f'<span>{esc(used)} of {esc(limit)} · <span class="pct">{esc(percent(ratio))}</span> · '
        f'<span class="state {esc(state)}">{esc(state)}</span></span></div>'
        f'<div class="bar" title="warning at {warn:.0%}"><div class="fill {esc(state)}" '
        f'style="width:{min(ratio, 1.0) * 100:.2f}%"></div>'
        f'<div class="mark" style="left:{warn * 100:.1f}%" title="warn at {warn:.0%}"></div>'
        f'<div class="mark" style="left:calc(100% - 2px)" title="limit"></div></div>'
        f'<div class="muted">{esc(burn)}{esc(resets)} · warn at {warn:.0%}</div></div>'
    )


def budget_bars(budgets: Iterable[Mapping[str, Any]]) -> str:
    """One bar per budget: used (coloured by state), a mark at its warning threshold and at the
    limit, burn rate, time to the limit at that rate and the reset of a calendar period."""
    return "".join(_budget(b) for b in budgets)


def share_bars(rows: Sequence[Mapping[str, Any]], what: str) -> str:
    """A small table: name, cost, tokens, share of cost with a bar."""
    if not rows:
        return '<p class="muted">nothing counted yet</p>'
    body = "".join(
        f'<tr data-row="{esc(r["key"])}"><td>{esc(r["key"])}</td>'
        f'<td class="num">{esc(format_usd(r["cost_usd"]))}</td>'
        f'<td class="num">{esc(format_tokens(r["tokens"]))}</td>'
        f'<td class="num">{esc(percent(r["share"]))}</td>'
        f'<td><span class="share" style="width:{r["share"] * 8:.2f}rem"></span></td></tr>'
        for r in rows
    )
    head = (
        f'<tr><th>{esc(what)}</th><th class="num">cost</th><th class="num">tokens</th>'
        '<th class="num">share</th><th></th></tr>'
    )
    return f"<table>{head}{body}</table>"
