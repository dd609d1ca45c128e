"""A budget's figures in PromQL — used, limit, share used, burn rate, forecast — written once for the
alert rules and the dashboards, so a panel and the alert beside it can never compute different things.

Every query aggregates over collector instances. Several collectors behind one OTLP endpoint each
count the spans they received, so a budget's use is the *sum* of their `llm_budget_used` (and of
their counters); every collector loads the same budget file, so the limit is the same on each and
is taken with `max`; the share used is `sum(used) / max(limit)`. With one collector the sums are
that collector's own figures: the same queries stay right.
"""

from __future__ import annotations

from otel_tokens import metric_names as mn
from otel_tokens.budgets.promql import Matcher, eq, max_by, num, rate, selector, sum_by
from otel_tokens.budgets.spec import Budget

__all__ = [
    "BY_BUDGET",
    "BY_BUDGET_WINDOW",
    "FORECAST_RECORD",
    "consumed_rate",
    "forecast_ratio",
    "limit",
    "task_instance_tokens",
    "usage_ratio",
    "used",
]

BY_BUDGET = (mn.BUDGET,)
BY_BUDGET_WINDOW = (mn.BUDGET, mn.WINDOW)
#: The recorded forecast: rendered once per budget, read by the forecast alert and the forecast panel.
FORECAST_RECORD = "budget:llm_budget_forecast:ratio"
#: A task instance's identity across collectors (its tokens may have reached several).
BY_TASK_INSTANCE = (mn.BUDGET, mn.AGENT, mn.TASK, mn.TASK_ID)


BudgetRef = str | Matcher | None


def _series(metric: str, budget: BudgetRef) -> str:
    """`metric{budget="name"}` for a name, any matcher on `budget` (a dashboard variable), or
    every budget's series when `budget` is None."""
    if budget is None:
        return metric
    return selector(metric, eq(mn.BUDGET, budget) if isinstance(budget, str) else budget)


def used(budget: BudgetRef = None) -> str:
    """Exact use in the current window, summed over collectors."""
    return sum_by(BY_BUDGET_WINDOW, _series(mn.BUDGET_USED, budget))


def limit(budget: BudgetRef = None) -> str:
    """The limit per window: the same on every collector, so `max` (a sum would multiply it)."""
    return max_by(BY_BUDGET_WINDOW, _series(mn.BUDGET_LIMIT, budget))


def usage_ratio(budget: BudgetRef = None) -> str:
    """Share of the limit used (1 = exhausted): sum(used) / max(limit), matched on budget and window."""
    return f"{used(budget)} / {limit(budget)}"


def consumed_rate(budget: str, lookback: str) -> str:
    """The budget's burn rate per second over `lookback`, from the never-rolling-off counter."""
    return sum_by(BY_BUDGET, rate(_series(mn.BUDGET_CONSUMED_TOTAL, budget), lookback))


def forecast_ratio(budget: Budget) -> str:
    """Use projected to the end of the window, as a share of the limit, at the current burn rate.

    A calendar period keeps what it has used until it ends: used now plus the rate times the time
    left (the ledger knows the period's time zone). A rolling window never ends and forgets its
    oldest use as it moves: one window from now it holds exactly the next window's use, the rate
    times the window — adding today's use to that would count the steady burn twice.
    """
    burn = consumed_rate(budget.name, budget.forecast.lookback)
    if budget.is_calendar:
        left = max_by(BY_BUDGET, _series(mn.BUDGET_WINDOW_REMAINING, budget.name))
        now = sum_by(BY_BUDGET, _series(mn.BUDGET_USED, budget.name))
        projected = f"(\n  {now}\n  + {burn}\n  * {left}\n)"
    else:
        projected = f"{burn} * {num(budget.window_seconds)}"
    return f"{projected} / {num(budget.limit.amount)}"


def task_instance_tokens(budget: str) -> str:
    """Each task instance's tokens, summed over the collectors that saw its calls."""
    return sum_by(BY_TASK_INSTANCE, _series(mn.TASK_INSTANCE_TOKENS, budget))
