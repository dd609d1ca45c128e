"""`otel-tokens` command line: the one place that registers every command; it owns no logic.

Each command's arguments are declared here (the collector's come from its config table, one flag
per key) and its work is done by the stage it names: `collector` (run the OTLP → Prometheus
collector), `demo` (fake provider + collector + keyless multi-agent workload), `fake-provider`
(the keyless provider alone, for one's own agent), `render` / `check` / `budget set` (budgets as
code), and the operator's questions answered by `otel_tokens.ops` — `usage`, `top`, `status`,
`report` — from a collector or a Prometheus API. Stages are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otel_tokens.ops.source import DataSource

Command = Callable[[argparse.Namespace], int]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-tokens", description="Token-cost observability for LLM agents."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (
        _collector, _demo, _fake_provider, _render, _check, _status, _usage, _top, _report, _budget,
    ):  # fmt: skip
        register(sub)
    return parser


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Command,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Register one command; `run(args)` does its work and returns the exit code."""
    parser = sub.add_parser(name, help=help, description=description or help)
    parser.set_defaults(run=run)
    return parser


# --- collector ------------------------------------------------------------------------------------
def _collector(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from otel_tokens.collector import DESCRIPTION
    from otel_tokens.collector.config import add_arguments

    parser = _command(
        sub,
        "collector",
        _run_collector,
        help="run the collector (OTLP in, Prometheus /metrics out)",
        description=DESCRIPTION,
    )
    add_arguments(parser)


def _run_collector(args: argparse.Namespace) -> int:
    from otel_tokens.collector import main_from_args

    return main_from_args(args)


# --- demo and the keyless provider ----------------------------------------------------------------
def _demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from otel_tokens.demo.ports import DEMO_PORTS

    demo = _command(sub, "demo", _run_demo, help="fake provider + collector + a keyless multi-agent workload")
    demo.add_argument(
        "--once",
        action="store_true",
        help="run the workload once, print the totals and budgets, stop the collector and exit",
    )
    demo.add_argument(
        "--collector",
        metavar="URL",
        help="send spans to this OTLP/HTTP collector (e.g. http://collector:4318) instead of starting one",
    )
    demo.add_argument("--rounds", type=int, default=1, help="workload rounds per cycle (default 1)")
    demo.add_argument("--interval", type=float, default=5.0, help="seconds between cycles when looping")
    demo.add_argument("--budgets", metavar="FILE", help="budget file the embedded collector tracks")
    demo.add_argument(
        "--alerts-listen",
        metavar="HOST:PORT",
        help="also receive Alertmanager webhooks here and print each page (docker-compose uses 0.0.0.0:8080)",
    )
    for port in DEMO_PORTS:
        demo.add_argument(
            port.flag,
            type=int,
            default=port.default,
            metavar="N",
            help=f"the embedded collector's {port.what} port (default {port.default})",
        )


def _run_demo(args: argparse.Namespace) -> int:
    from otel_tokens.demo.ports import DEMO_PORTS
    from otel_tokens.demo.run import run_demo

    return run_demo(
        once=args.once,
        collector_url=args.collector,
        rounds=args.rounds,
        interval=args.interval,
        budgets_file=args.budgets,
        alerts_listen=args.alerts_listen,
        ports={port.attr: getattr(args, port.attr) for port in DEMO_PORTS},
    )


def _fake_provider(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _command(
        sub,
        "fake-provider",
        _run_fake_provider,
        help="a keyless stand-in for the OpenAI and Anthropic APIs, to point one's own agent at",
        description=(
            "Serve the OpenAI (chat completions, responses, embeddings) and Anthropic (messages) wire "
            "formats, JSON and streaming, with fixed replies and realistic usage, until Ctrl-C. "
            "Point an SDK's base_url at it; any API key is accepted."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=18080, help="port to listen on (default 18080)")


def _run_fake_provider(args: argparse.Namespace) -> int:
    from otel_tokens.demo.fake_provider.command import serve

    return serve(args.host, args.port)


# --- budgets as code ------------------------------------------------------------------------------
def _render(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    render = _command(
        sub, "render", _run_render, help="render budgets.yaml into Prometheus/Alertmanager/Grafana files"
    )
    render.add_argument("budget_file")
    render.add_argument("--out", default=".", help="directory to write into (default: the current directory)")


def _run_render(args: argparse.Namespace) -> int:
    from otel_tokens.budgets.cli import render_command

    return render_command(args.budget_file, args.out)


def _check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = _command(sub, "check", _run_check, help="validate budgets.yaml and check the rendered files")
    check.add_argument("budget_file")
    check.add_argument(
        "--out", default=".", help="directory holding the rendered files (default: the current directory)"
    )


def _run_check(args: argparse.Namespace) -> int:
    from otel_tokens.budgets.cli import check_command

    return check_command(args.budget_file, args.out)


def _source_flags(parser: argparse.ArgumentParser, *, thresholds: bool = False) -> None:
    """Where a command reads: a collector (default) or a Prometheus-compatible API (a fleet)."""
    from otel_tokens.ops.source import DEFAULT_COLLECTOR

    parser.add_argument(
        "--collector",
        default=DEFAULT_COLLECTOR,
        metavar="URL",
        help=f"the collector's metrics address (default {DEFAULT_COLLECTOR})",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="bearer token for a collector started with --auth-token-file (default: "
        "$OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE; /metrics: $OTEL_TOKENS_COLLECTOR_METRICS_AUTH_TOKEN_FILE)",
    )
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        help="read a Prometheus-compatible query API instead (every collector it scrapes; keeps history)",
    )
    if thresholds:
        parser.add_argument(
            "--budgets",
            metavar="FILE",
            help="with --prometheus: the budget file whose warn_at thresholds apply (default 0.8)",
        )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _source(args: argparse.Namespace) -> DataSource:
    from otel_tokens.ops.commands import make_source
    from otel_tokens.ops.source import SourceError

    try:
        return make_source(args.collector, args.prometheus, getattr(args, "budgets", None), args.token_file)
    except SourceError as exc:  # an unreadable token file: say so, as for an unreadable collector
        print(f"otel-tokens {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(3) from None


def _grouping_flags(parser: argparse.ArgumentParser) -> None:
    from otel_tokens.ops.usage import GROUP_BY

    parser.add_argument("--by", choices=GROUP_BY, default="agent", help="group by this label (default agent)")
    parser.add_argument(
        "--since",
        metavar="DURATION",
        help="use in the last DURATION (e.g. 24h, 7d); needs --prometheus (a collector keeps no history)",
    )
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only series with this label value (repeatable), e.g. --filter model=gpt-4o-mini",
    )


def _usage(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = _command(
        sub,
        "usage",
        _run_usage,
        help="tokens by type (input, output, cache, reasoning) and cost, with totals",
    )
    _grouping_flags(usage)
    _source_flags(usage)


def _run_usage(args: argparse.Namespace) -> int:
    from otel_tokens.ops.commands import usage_command

    return usage_command(
        _source(args),
        by=args.by,
        since=args.since,
        filters=args.filter,
        as_json=args.json,
    )


def _top(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = _command(sub, "top", _run_top, help="what costs the most, with each row's share")
    _grouping_flags(top)
    top.add_argument("-n", type=int, default=10, metavar="N", help="how many rows (default 10)")
    _source_flags(top)


def _run_top(args: argparse.Namespace) -> int:
    from otel_tokens.ops.commands import top_command

    return top_command(
        _source(args),
        by=args.by, n=args.n, since=args.since, filters=args.filter, as_json=args.json,
    )  # fmt: skip


def _status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = _command(
        sub,
        "status",
        _run_status,
        help="every budget: used, limit, burn rate, projection and time left",
        description=(
            "Print every budget's standing: used, limit, percent, state, burn rate, use projected to "
            "the window's end and the time left at the current rate. Exit code: 0 every budget ok, "
            "1 a budget at its warning threshold, 2 a budget exceeded, 3 the source could not be read."
        ),
    )
    _source_flags(status, thresholds=True)


def _run_status(args: argparse.Namespace) -> int:
    from otel_tokens.ops.commands import status_command

    return status_command(_source(args), as_json=args.json)


def _report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from otel_tokens.ops.report import PERIODS

    report = _command(
        sub,
        "report",
        _run_report,
        help="a period's report as Markdown, JSON and an offline HTML page with charts",
        description=(
            "Write otel-tokens-report-PERIOD.md, .json and .html (self-contained, opens offline): cost "
            "over time by agent, cost by model, budget standing with thresholds, burn rate and time "
            "left, usage by hour of day, cache-hit ratio, cost per completed task by task type. "
            "Charts over time need --prometheus (a collector keeps no history)."
        ),
    )
    report.add_argument("--period", choices=tuple(PERIODS), default="day", help="the period (default day)")
    report.add_argument("--out", default=".", help="directory to write into (default: the current directory)")
    _source_flags(report, thresholds=True)


def _run_report(args: argparse.Namespace) -> int:
    from otel_tokens.ops.commands import report_command

    return report_command(_source(args), period=args.period, out_dir=args.out, as_json=args.json)


def _budget(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    budget = sub.add_parser("budget", help="edit budgets.yaml from the command line")
    actions = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    edit = actions.add_parser(
        "set",
        help="set an agent's limit (adds a budget when it has none)",
        description=(
            "Set the limit of the budget scoped to AGENT (the one with --window, when it has several), "
            "or add one. The file keeps its comments and layout, is validated before it is written "
            "(an invalid edit leaves it untouched) and the generated files are rendered again."
        ),
    )
    edit.set_defaults(run=_run_budget_set)
    edit.add_argument("agent", metavar="AGENT")
    edit.add_argument("limit", metavar="LIMIT", help="tokens (500000, 500k, 2M) or, with --usd, dollars")
    edit.add_argument(
        "--window", help="the budget's window (1h, 1d, 7d, 30d, day, week, month); new ones: 1d"
    )
    edit.add_argument("--usd", action="store_true", help="LIMIT is in US dollars")
    edit.add_argument(
        "--file", default="budgets.yaml", metavar="FILE", help="the budget file (default budgets.yaml)"
    )
    edit.add_argument(
        "--out", default=".", help="where the generated files are rendered (default: the current directory)"
    )
    edit.add_argument("--json", action="store_true", help="print what changed as JSON")


def _run_budget_set(args: argparse.Namespace) -> int:
    from otel_tokens.ops.commands import budget_set_command

    return budget_set_command(
        args.file,
        args.agent,
        args.limit,
        window=args.window,
        usd=args.usd,
        out_dir=args.out,
        as_json=args.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
