"""Which `BudgetState` a guard uses: shared through the collector when one is named, else read from
a Prometheus query API when `guard.collector.prometheus_url` names one, else this process alone.

The collector's URL comes from `OTEL_TOKENS_COLLECTOR_URL`, else the budget file's
`guard.collector.url`; its bearer token from the file named by
`OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE`, else `guard.collector.auth_token_file` (the collector's
own setting reads the same variable, so one file serves both on one host). A token file that
cannot be read stops start-up with the file named: a guard must not silently run without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from otel_tokens.budgets.spec import BudgetFile
from otel_tokens.guard.state import BudgetState, LocalBudgetState
from otel_tokens.settings import ENV_COLLECTOR_AUTH_TOKEN_FILE, ENV_GUARD_COLLECTOR_URL

__all__ = ["collector_url", "default_state", "read_token"]


def collector_url(budget_file: BudgetFile) -> str | None:
    return os.environ.get(ENV_GUARD_COLLECTOR_URL, "").strip() or budget_file.guard.collector.url


def read_token(budget_file: BudgetFile) -> str | None:
    """The bearer token for the collector's API, or None when none is configured."""
    path = (
        os.environ.get(ENV_COLLECTOR_AUTH_TOKEN_FILE, "").strip()
        or budget_file.guard.collector.auth_token_file
    )
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise OSError(
            f"guard.collector.auth_token_file: cannot read token file {path}: {exc.strerror or exc}"
        ) from None
    if not token:
        raise OSError(f"guard.collector.auth_token_file: token file {path} is empty")
    return token


def default_state(budget_file: BudgetFile, clock: Callable[[], float] = time.time) -> BudgetState:
    url = collector_url(budget_file)
    if url is None and budget_file.guard.collector.prometheus_url is not None:
        from otel_tokens.guard.prometheus_state import PrometheusBudgetState

        return PrometheusBudgetState(budget_file, budget_file.guard.collector.prometheus_url, clock=clock)
    if url is None:
        return LocalBudgetState(budget_file, clock)
    from otel_tokens.guard.collector_state import CollectorBudgetState

    return CollectorBudgetState(budget_file, url, token=read_token(budget_file), clock=clock)
