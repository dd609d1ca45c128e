"""The otel-tokens collector: OTLP traces in (HTTP 4318, gRPC 4317), Prometheus counters out (9464).

This package is the service edge around the pure `otel_tokens.pipeline`: receivers decode, the
pipeline counts, `/metrics` exposes. It imports the core, never the instrumentation.

Embedding (tests, the demo):

    with CollectorService(CollectorConfig(http_port=0, grpc_port=0, metrics_port=0)) as collector:
        ...  # send to collector.http_port, scrape collector.metrics_port

Command line: `otel_tokens/cli.py` registers `otel-tokens collector [--config FILE] [--http-port N] ...`
with the flags from `config.add_arguments` and runs `main_from_args()`. `main(argv)` is the same
command for embedding (`python -c "...main(sys.argv[1:])"` in tests) without the parent CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from otel_tokens.budgets.loader import BudgetFileError
from otel_tokens.collector.config import CollectorConfig, ConfigError, add_arguments, config_from_args
from otel_tokens.collector.service import CollectorService, run_collector

__all__ = [
    "DESCRIPTION",
    "CollectorConfig",
    "CollectorService",
    "ConfigError",
    "main",
    "main_from_args",
    "parse_config",
    "run_collector",
]

DESCRIPTION = (
    "Receive OTLP traces (HTTP and gRPC) and serve Prometheus counters of LLM tokens and cost. "
    "Every option is also a YAML key and an OTEL_TOKENS_COLLECTOR_* variable; "
    "precedence: flag > environment > file > default (see collector/README.md)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-tokens collector", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> CollectorConfig:
    """CLI arguments (plus environment and config file) → config; raises `ConfigError`."""
    return config_from_args(_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """`otel-tokens collector ...`: exit code 2 with every config error listed, else run."""
    return main_from_args(_parser().parse_args(argv))


def main_from_args(args: argparse.Namespace) -> int:
    """Run the collector from parsed flags (`config.add_arguments`); exit code 2 on a config error."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"otel-tokens collector: {exc}", file=sys.stderr)
        return 2
    try:
        return run_collector(config)
    except BudgetFileError as exc:
        print(f"otel-tokens collector: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"otel-tokens collector: cannot start: {exc}", file=sys.stderr)
        return 1
