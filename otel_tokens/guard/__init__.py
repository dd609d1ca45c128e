"""The in-process budget guard: `budgets.yaml` enforced in the agent before a request leaves it.

Turned on by `otel_tokens.instrument(budgets="budgets.yaml")` or `OTEL_TOKENS_BUDGETS_FILE`. The
instrumentation asks the guard before each call (`Guard.admit`) and settles the reservation with
the call's usage record when it ends. Modules, one concern each:

- `estimate` — the pre-flight estimate of a request (tokenizer + output ceiling);
- `state` — budget standings and in-flight reservations behind the `BudgetState` protocol
  (`LocalBudgetState`: this process alone, with a fast `Lane` for the common call);
- `routes` — which budgets a kind of call (provider, model, attribution) claims from, resolved
  once, and whether it may take the state's fast lane;
- `collector_state` (+ `collector_client`) — `CollectorBudgetState`: budgets shared by many
  processes through the collector's ledger, and the stop orders its alerts webhook placed;
- `prometheus_state` — `PrometheusBudgetState`: read-only, from a Prometheus query API (a fleet);
- `stops` — stop orders from alerts (`TaskStopped`) as the guard matches them against a call;
- `wiring` — which state a guard gets (`OTEL_TOKENS_COLLECTOR_URL` / `guard.collector.url`);
- `policy` — the actions (compress, downgrade, block, defer, warn) as a pure decision;
- `compress` — the `compress` rewrite: a request shrunk to a token target (pure);
- `runaway` — the runaway detectors, per task instance and session (bounded);
- `cache` — the response cache's key and store (SQLite; the SDK replay is the instrumentation's);
- `guard` — one call's admission: estimate, match, decide and reserve atomically, settle;
- `errors` — `BudgetExceeded`, `BudgetDeferred`, `CollectorUnavailable` and `TaskStopped`,
  re-exported by `otel_tokens`.

It imports the core (budgets, record, pricing, token counting), never the collector service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The errors are light and re-exported by `otel_tokens`; the rest (pydantic models, tokenizer) loads
# only when a budget file turns the guard on, so `import otel_tokens` stays fast.
from otel_tokens.guard.errors import BudgetDeferred, BudgetExceeded, CollectorUnavailable, TaskStopped

if TYPE_CHECKING:
    from otel_tokens.guard.collector_state import CollectorBudgetState
    from otel_tokens.guard.estimate import GuardRequest
    from otel_tokens.guard.guard import Admission, Guard
    from otel_tokens.guard.prometheus_state import PrometheusBudgetState
    from otel_tokens.guard.state import BudgetState, LocalBudgetState

__all__ = [
    "Admission",
    "BudgetDeferred",
    "BudgetExceeded",
    "BudgetState",
    "CollectorBudgetState",
    "CollectorUnavailable",
    "Guard",
    "GuardRequest",
    "LocalBudgetState",
    "PrometheusBudgetState",
    "TaskStopped",
]

_LAZY = {
    "GuardRequest": "otel_tokens.guard.estimate",
    "Admission": "otel_tokens.guard.guard",
    "Guard": "otel_tokens.guard.guard",
    "BudgetState": "otel_tokens.guard.state",
    "LocalBudgetState": "otel_tokens.guard.state",
    "CollectorBudgetState": "otel_tokens.guard.collector_state",
    "PrometheusBudgetState": "otel_tokens.guard.prometheus_state",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_tokens.guard' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
