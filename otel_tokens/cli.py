"""`otel-tokens` command line: a thin dispatcher over the package's stages; it owns no logic.

Subcommands: `collector` (run the OTLP → Prometheus collector), `demo` (fake provider + collector +
keyless multi-agent workload), `render` / `check` (budgets as code), `status` (a running
collector's budget standing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-tokens", description="Token-cost observability for LLM agents."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("collector", help="run the collector (OTLP in, Prometheus /metrics out)", add_help=False)

    demo = sub.add_parser("demo", help="fake provider + collector + a keyless multi-agent workload")
    demo.add_argument("--once", action="store_true", help="run the workload once, print totals, exit")
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

    render = sub.add_parser("render", help="render budgets.yaml into Prometheus/Alertmanager/Grafana files")
    render.add_argument("budget_file")
    render.add_argument("--out", default=".", help="directory to write into (default: the project root)")

    check = sub.add_parser("check", help="validate budgets.yaml and check the rendered files")
    check.add_argument("budget_file")
    check.add_argument("--out", default=".", help="directory holding the rendered files (default: .)")
    status = sub.add_parser("status", help="show a running collector's exact budget standing")
    status.add_argument(
        "--collector",
        default="http://127.0.0.1:9464",
        metavar="URL",
        help="the collector's metrics address (default http://127.0.0.1:9464)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["collector"]:
        from otel_tokens.collector import main as collector_main

        return collector_main(args_list[1:])
    args = _build_parser().parse_args(args_list)
    if args.command == "demo":
        from otel_tokens.demo import run_demo

        return run_demo(
            once=args.once,
            collector_url=args.collector,
            rounds=args.rounds,
            interval=args.interval,
            budgets_file=args.budgets,
            alerts_listen=args.alerts_listen,
        )
    if args.command == "render":
        from otel_tokens.budgets.cli import render_command

        return render_command(args.budget_file, args.out)
    if args.command == "check":
        from otel_tokens.budgets.cli import check_command

        return check_command(args.budget_file, args.out)
    if args.command == "status":
        from otel_tokens.budgets.cli import status_command

        return status_command(args.collector)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
