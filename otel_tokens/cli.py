"""`otel-tokens` command line: the one place that registers every command; it owns no logic.

Each command's arguments are declared here (the collector's come from its config table, one flag
per key) and its work is done by the stage it names: `collector` (run the OTLP → Prometheus
collector), `demo` (fake provider + collector + keyless multi-agent workload), `render` / `check`
(budgets as code), `status` (a running collector's budget standing). Stages are imported only when
their command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Command = Callable[[argparse.Namespace], int]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-tokens", description="Token-cost observability for LLM agents."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (_collector, _demo, _render, _check, _status):
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
    demo = _command(sub, "demo", _run_demo, help="fake provider + collector + a keyless multi-agent workload")
    demo.add_argument(
        "--once",
        action="store_true",
        help="run the workload once, print totals, exit",
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


def _run_demo(args: argparse.Namespace) -> int:
    from otel_tokens.demo.run import run_demo

    return run_demo(
        once=args.once,
        collector_url=args.collector,
        rounds=args.rounds,
        interval=args.interval,
        budgets_file=args.budgets,
        alerts_listen=args.alerts_listen,
    )


# --- budgets as code ------------------------------------------------------------------------------
def _render(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    render = _command(
        sub, "render", _run_render, help="render budgets.yaml into Prometheus/Alertmanager/Grafana files"
    )
    render.add_argument("budget_file")
    render.add_argument(
        "--out", default=".", help="directory to write into (default: . , the current directory)"
    )


def _run_render(args: argparse.Namespace) -> int:
    from otel_tokens.budgets.cli import render_command

    return render_command(args.budget_file, args.out)


def _check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = _command(sub, "check", _run_check, help="validate budgets.yaml and check the rendered files")
    check.add_argument("budget_file")
    check.add_argument(
        "--out", default=".", help="directory holding the rendered files (default: . , the current directory)"
    )


def _run_check(args: argparse.Namespace) -> int:
    from otel_tokens.budgets.cli import check_command

    return check_command(args.budget_file, args.out)


def _status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = _command(
        sub,
        "status",
        _run_status,
        help="show a running collector's exact budget standing",
    )
    status.add_argument(
        "--collector",
        default="http://127.0.0.1:9464",
        metavar="URL",
        help="the collector's metrics address (default http://127.0.0.1:9464)",
    )


def _run_status(args: argparse.Namespace) -> int:
    from otel_tokens.budgets.cli import status_command

    return status_command(args.collector)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
