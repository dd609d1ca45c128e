"""Terminal tables for `usage`, `top` and `status`: rich tables that fit an 80-column terminal.

Figures are formatted by `otel_tokens.humanize` (thousands separators, money as money); long names
are cut with an ellipsis rather than wrapping a row over two lines. Under 80 columns even a table
of nine-digit token counts fits, because the token columns use short numbers (`1.5M`) only when
the full figure would not fit.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timezone

from rich import box
from rich.console import Console
from rich.table import Table

from otel_tokens import metric_names as mn
from otel_tokens.humanize import format_tokens, format_usd, short_number
from otel_tokens.ops.html import percent
from otel_tokens.ops.outlook import Outlook, format_duration
from otel_tokens.ops.usage import UsageRow, UsageTable

__all__ = ["WIDTH", "render", "status_table", "status_text", "top_table", "usage_table_view"]

WIDTH = 80
_TOKEN_HEADERS = {"input": "input", "output": "output", "cache_read": "cache rd",
                  "cache_write": "cache wr", "reasoning": "reason"}  # fmt: skip
#: Above this many digits a token column switches to short numbers to stay inside 80 columns.
_FULL_DIGITS = 7


def render(table: Table, width: int = WIDTH, note: str = "") -> str:
    """The table as plain text at most `width` columns wide (what tests and the README show),
    then `note` wrapped to the same width."""
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    console.print(table)
    if note:
        console.print(note, highlight=False, markup=False)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n"


def _table(*title: str) -> Table:
    return Table(
        *title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )  # fmt: skip


def _tokens(value: float, short: bool) -> str:
    return short_number(value) if short else format_tokens(value)


def usage_table_view(table: UsageTable) -> Table:
    """One row per group: tokens by type, total, cost; a total row last."""
    rows = [*table.rows, table.total]
    short = any(
        len(f"{round(v):d}") > _FULL_DIGITS for r in rows for v in (*r.tokens.values(), r.total_tokens)
    )
    view = _table()
    view.add_column(table.by, no_wrap=True, overflow="ellipsis", max_width=18)
    for kind in mn.TOKEN_TYPES:
        view.add_column(_TOKEN_HEADERS[kind], justify="right", no_wrap=True)
    view.add_column("total", justify="right", no_wrap=True)
    view.add_column("cost", justify="right", no_wrap=True)
    for i, row in enumerate(rows):
        cells = [_tokens(row.tokens[k], short) for k in mn.TOKEN_TYPES]
        view.add_row(row.key, *cells, _tokens(row.total_tokens, short), format_usd(row.cost),
                     end_section=i == len(rows) - 2)  # fmt: skip
    return view


def top_table(rows: Sequence[tuple[UsageRow, float]], by: str) -> Table:
    """Rank, name, tokens, cost, share of the total and a bar of that share."""
    view = _table()
    view.add_column("#", justify="right", no_wrap=True)
    view.add_column(by, no_wrap=True, overflow="ellipsis", max_width=24)
    view.add_column("tokens", justify="right", no_wrap=True)
    view.add_column("requests", justify="right", no_wrap=True)
    view.add_column("cost", justify="right", no_wrap=True)
    view.add_column("share", justify="right", no_wrap=True)
    view.add_column("", no_wrap=True, min_width=10)
    for rank, (row, share) in enumerate(rows, 1):
        bar = "█" * round(share * 10)
        view.add_row(str(rank), row.key, format_tokens(row.total_tokens), format_tokens(row.requests),
                     format_usd(row.cost), f"{share:.1%}", bar)  # fmt: skip
    return view


def _compact(value: float | None, unit: str) -> str:
    """Short figures for the status table: `500k` tokens, `$3k`, `$0.0081`."""
    if value is None:
        return "-"
    if unit != "usd":
        return short_number(value)
    return "$" + short_number(value) if value >= 1000 else format_usd(value)


def _share(ratio: float | None) -> str:
    """A percent for the table, bounded in width: `>999%` beyond (`--json` has the figure)."""
    return ">999%" if ratio is not None and ratio >= 9.995 else percent(ratio)


#: A figure that needs a burn rate, while there is not enough data for one (`outlook.MIN_RATE_SECONDS`).
NO_RATE = "—"


def _left(o: Outlook) -> str:
    """Time to the limit at the current rate; `—` when the rate is unknown."""
    return NO_RATE if o.rate_per_hour is None else format_duration(o.seconds_left)


def status_text(outlooks: Sequence[Outlook], width: int = WIDTH, note: str = "") -> str:
    """The status table at most `width` wide: the budget column gets what the figures leave; a
    longer name ends in an ellipsis (`--json` has it whole)."""
    longest = max((len(o.name) for o in outlooks), default=6)
    budget_width = 8
    for budget_width in range(max(longest, 8), 7, -1):
        natural = render(status_table(outlooks, budget_width), 10 * width)  # as wide as it wants
        if max(len(line) for line in natural.splitlines()) <= width:
            break
    return render(status_table(outlooks, budget_width), width, note)


def status_table(outlooks: Sequence[Outlook], budget_width: int = 22) -> Table:
    """Every budget: window, used, limit, percent, use projected to the window's end (percent of
    the limit), burn rate per hour, time left at that rate, state."""
    headers = ("window", "used", "limit", "%", "at end", "burn/h", "left", "state")
    rows = []
    for o in outlooks:
        at_end = None if o.projected is None or not o.limit else o.projected / o.limit
        rows.append((
            o.name, o.window, _compact(o.used, o.unit), _compact(o.limit, o.unit), _share(o.ratio),
            NO_RATE if at_end is None else _share(at_end),
            NO_RATE if o.rate_per_hour is None else _compact(o.rate_per_hour, o.unit), _left(o), o.state,
        ))  # fmt: skip
    view = _table()
    view.add_column("budget", no_wrap=True, overflow="ellipsis", max_width=budget_width)
    for header in headers[:-1]:
        view.add_column(header, justify="right", no_wrap=True)
    view.add_column("state", no_wrap=True)
    for row in rows:
        view.add_row(*row)
    return view


def resets_lines(outlooks: Sequence[Outlook], now: float) -> list[str]:
    """When each calendar budget resets (rolling windows never do: they roll)."""
    lines = []
    for o in outlooks:
        if o.resets_at is not None:
            at = datetime.fromtimestamp(o.resets_at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            lines.append(f"{o.name} resets {at} (in {format_duration(o.resets_at - now)})")
    return lines
