"""`otel-tokens demo`: the whole pipeline on one machine with no API key.

A built-in fake provider answers the real OpenAI and Anthropic SDKs; the workload's agents run
through otel-tokens' instrumentation; spans go over real OTLP/HTTP to the collector, which serves
Prometheus counters on /metrics.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from otel_tokens.demo.ports import PortInUse
from otel_tokens.demo.runtime import DemoRuntime
from otel_tokens.demo.workload import make_clients, run_workload


def run_demo(
    *,
    once: bool = False,
    collector_url: str | None = None,
    rounds: int = 1,
    interval: float = 5.0,
    budgets_file: str | None = None,
    alerts_listen: str | None = None,
    ports: Mapping[str, int] | None = None,
) -> int:
    """Run the workload once (`once`) or every `interval` seconds until Ctrl-C; exit code 1 with
    one clear line when something the demo needs cannot start (a taken port names its flag)."""
    from otel_tokens.budgets.loader import BudgetFileError

    try:
        runtime = DemoRuntime(
            collector_url=collector_url, budgets_file=budgets_file, alerts_listen=alerts_listen, ports=ports
        ).start()
    except (PortInUse, BudgetFileError, ValueError) as exc:
        print(f"otel-tokens demo: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"otel-tokens demo: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        _loop(runtime, once=once, rounds=rounds, interval=interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the looping demo ends
    finally:
        runtime.stop()
    return 0


def _loop(runtime: DemoRuntime, *, once: bool, rounds: int, interval: float) -> None:
    openai_client, anthropic_client = make_clients(runtime.fake)
    cycle = 0
    while True:
        cycle += 1
        run_workload(openai_client, anthropic_client, rounds)
        runtime.flush()
        runtime.print_summary(first=cycle == 1, looping=not once)
        if once:
            return
        time.sleep(interval)
