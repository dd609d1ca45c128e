"""The operator commands, thin: read a source, build with the pure builders, print a table or JSON.

`otel_tokens.cli` registers them (their flags live there); each returns the process exit code.
Errors are one line on stderr naming what to do; nothing here prints a traceback for a bad
address, a bad flag value or a collector that tracks no budgets.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from otel_tokens.budgets.cli import EXIT_UNKNOWN, status_exit_code
from otel_tokens.budgets.loader import BudgetFileError
from otel_tokens.humanize import format_tokens, format_usd
from otel_tokens.ops import tables
from otel_tokens.ops.outlook import MIN_RATE_SECONDS
from otel_tokens.ops.source import (
    CollectorSource,
    DataSource,
    PrometheusSource,
    SourceError,
    check_since,
    read_token_file,
)
from otel_tokens.ops.usage import USAGE_SERIES, parse_filters, top_rows, usage_table
from otel_tokens.settings import ENV_COLLECTOR_METRICS_AUTH_TOKEN_FILE

__all__ = [
    "budget_set_command",
    "make_source",
    "report_command",
    "status_command",
    "top_command",
    "usage_command",
]

EXIT_OK, EXIT_ERROR = 0, 1
_RATE_NOTE = (
    "burn/h: use over the last hour (the budget's forecast lookback); at end: use projected to the "
    "window's end, % of the limit; left: time to the limit at that rate; —: not enough data yet "
    f"(under {MIN_RATE_SECONDS / 60:.0f} min counted)"
)


def make_source(
    collector: str, prometheus: str | None, budgets_file: str | None = None, token_file: str | None = None
) -> DataSource:
    if prometheus:
        return PrometheusSource(prometheus, budgets_file=budgets_file)
    if token_file:  # one token for both, as a collector with no separate metrics token wants
        token = read_token_file(token_file)
        return CollectorSource(collector, token=token, metrics_token=token)
    return CollectorSource(
        collector,
        token=read_token_file(None),
        metrics_token=read_token_file(None, env=ENV_COLLECTOR_METRICS_AUTH_TOKEN_FILE),
    )


def _fail(command: str, message: object) -> int:
    print(f"otel-tokens {command}: {message}", file=sys.stderr)
    return EXIT_ERROR


def _width() -> int:
    """80 columns, or fewer on a narrower terminal."""
    if sys.stdout.isatty():
        return min(tables.WIDTH, shutil.get_terminal_size().columns)
    return tables.WIDTH


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _usage(source: DataSource, by: str, since: str | None, filter_pairs: Sequence[str]) -> Any:
    check_since(since)
    filters = parse_filters(filter_pairs)
    return usage_table(source.samples(USAGE_SERIES, since, filters), by, filters), filters


def usage_command(
    source: DataSource, *, by: str, since: str | None, filters: Sequence[str], as_json: bool
) -> int:
    """Tokens by type and cost, grouped by `by`, with a total row."""
    try:
        table, parsed = _usage(source, by, since, filters)
    except (SourceError, ValueError) as exc:
        return _fail("usage", exc)
    note = source.scope_note(since)
    if as_json:
        _print_json(table.to_dict() | {"source": note, "since": since, "filters": parsed})
    else:
        print(tables.render(tables.usage_table_view(table), _width(), note), end="")
    return EXIT_OK


def top_command(
    source: DataSource, *, by: str, n: int, since: str | None, filters: Sequence[str], as_json: bool
) -> int:
    """The `n` most expensive groups with each one's share of the cost."""
    if n < 1:
        return _fail("top", f"-n wants a positive number, got {n}")
    try:
        table, parsed = _usage(source, by, since, filters)
    except (SourceError, ValueError) as exc:
        return _fail("top", exc)
    rows = top_rows(table, n)
    note = source.scope_note(since)
    if as_json:
        listed = [row.to_dict() | {"share": share} for row, share in rows]
        _print_json({"by": by, "rows": listed, "total": table.total.to_dict(), "source": note,
                     "since": since, "filters": parsed})  # fmt: skip
    else:
        caption = f"{note}; share of total cost {format_usd(table.total.cost)}"
        print(tables.render(tables.top_table(rows, by), _width(), caption), end="")
    return EXIT_OK


def status_command(source: DataSource, *, as_json: bool) -> int:
    """Every budget's outlook. Exit 0 all ok, 1 any warning, 2 any exceeded, 3 unreadable."""
    try:
        outlooks = source.outlooks()
    except (SourceError, BudgetFileError) as exc:
        print(f"otel-tokens status: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    code = status_exit_code(o.state for o in outlooks)
    if as_json:
        _print_json({"budgets": [o.to_dict() for o in outlooks], "exit_code": code})
        return code
    notes = [_RATE_NOTE, *tables.resets_lines(outlooks, time.time())]
    print(tables.status_text(outlooks, _width(), "\n".join(notes)), end="")
    return code


def report_command(source: DataSource, *, period: str, out_dir: str, as_json: bool) -> int:
    """Write the period's report as Markdown, JSON and HTML; print their paths (or the JSON)."""
    from pathlib import Path

    from otel_tokens.ops.report import build, gather, markdown
    from otel_tokens.ops.report_html import render_html

    try:
        document = build(gather(source, period))
    except (SourceError, BudgetFileError, ValueError) as exc:
        return _fail("report", exc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"otel-tokens-report-{period}"
    texts = {
        ".md": markdown(document),
        ".json": json.dumps(document, indent=2, sort_keys=True) + "\n",
        ".html": render_html(document),
    }
    for suffix, text in texts.items():
        stem.with_suffix(suffix).write_text(text, encoding="utf-8")
    if as_json:
        _print_json(document)
    else:
        for suffix in texts:
            print(f"wrote {stem.with_suffix(suffix)}")
    return EXIT_OK


def budget_set_command(
    budget_file: str, agent: str, limit: str, *, window: str | None, usd: bool, out_dir: str, as_json: bool
) -> int:
    """Edit one agent's budget in place, validate, write, re-render the generated files."""
    from otel_tokens.budgets.render_all import render_all
    from otel_tokens.ops.budget_edit import EditError, set_budget

    try:
        edit = set_budget(budget_file, agent, limit, window=window, usd=usd)
    except EditError as exc:
        return _fail("budget set", exc)
    except BudgetFileError as exc:
        return _fail("budget set", f"{budget_file} left unchanged: {exc}")
    written = render_all(budget_file, out_dir)
    if as_json:
        _print_json({"budget": edit.name, "added": edit.added, "old_limit": edit.old_limit,
                     "new_limit": edit.new_limit, "file": budget_file,
                     "rendered": [str(p) for p in written]})  # fmt: skip
        return EXIT_OK
    verb = "added" if edit.added else f"was {_limit_text(edit.old_limit)}"
    print(f"{budget_file}: budget {edit.name} limit {_limit_text(edit.new_limit)} ({verb})")
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


def _limit_text(limit: dict[str, Any] | None) -> str:
    if not limit:
        return "none"
    if "usd" in limit:
        return format_usd(float(limit["usd"]))
    return f"{format_tokens(float(limit.get('tokens', 0)))} tokens"
