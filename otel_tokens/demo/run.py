"""`otel-tokens demo`: the whole pipeline on one machine with no API key.

A built-in fake provider answers the real OpenAI and Anthropic SDKs; the workload's agents run
through otel-tokens' instrumentation; spans go over real OTLP/HTTP to the collector, which serves
Prometheus counters on /metrics.
"""

from __future__ import annotations

import time

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
) -> int:
    runtime_args = {
        "collector_url": collector_url,
        "budgets_file": budgets_file,
        "alerts_listen": alerts_listen,
    }
    with DemoRuntime(**runtime_args) as runtime:
        openai_client, anthropic_client = make_clients(runtime.fake)
        cycle = 0
        while True:
            cycle += 1
            run_workload(openai_client, anthropic_client, rounds)
            runtime.flush()
            runtime.print_summary(first=cycle == 1, looping=not once)
            if once:
                return 0
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return 0
