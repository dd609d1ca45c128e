"""The guard's documented errors: what an agent catches when a budget stops one of its calls.

Telemetry never raises into the agent; these are the one deliberate exception (CONVENTIONS.md).
Each carries the numbers the decision was taken on, so the agent (or the person reading its log)
sees which budget, how far in, and when there will be room again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from otel_tokens.humanize import format_amount

__all__ = ["BudgetDeferred", "BudgetExceeded", "TaskStopped"]


class BudgetExceeded(Exception):
    """The call would pass a budget whose action is `block`; the request was never sent.

    `used` is what the budget's window has counted, `reserved` what calls in flight in this
    process hold, `estimate` this call's pre-flight estimate, all in `unit` (tokens or usd).
    `resets_at` is when the window has room for this call again (a calendar period's end, or
    when enough of a rolling window has aged out), None when it never will (the call alone is
    larger than the limit, or a per-task-instance limit, which has no window).
    """

    def __init__(
        self,
        *,
        budget: str,
        scope: str,
        used: float,
        reserved: float,
        limit: float,
        window: str,
        resets_at: datetime | None,
        estimate: float,
        unit: str,
    ) -> None:
        self.budget = budget
        self.scope = scope
        self.used = used
        self.reserved = reserved
        self.limit = limit
        self.window = window
        self.resets_at = resets_at
        self.estimate = estimate
        self.unit = unit
        super().__init__(self._message())

    def _message(self) -> str:
        def fmt(value: float) -> str:
            return format_amount(value, self.unit)

        resets = f"; room again at {self.resets_at.isoformat()}" if self.resets_at else ""
        return (
            f"budget {self.budget!r} ({self.scope}, {self.window}): used {fmt(self.used)} + in flight "
            f"{fmt(self.reserved)} + this call ~{fmt(self.estimate)} would pass the limit "
            f"{fmt(self.limit)} {self.unit}{resets}"
        )


class BudgetDeferred(BudgetExceeded):
    """The call would pass a budget whose action is `defer`: try again in `retry_after` seconds.

    Raised at once, or after waiting up to the budget's `defer_wait` for room. `retry_after`
    assumes the calls in flight end at their estimates; they usually use less, so room may come
    sooner.
    """

    def __init__(self, *, retry_after: float, **standing: Any) -> None:
        self.retry_after = retry_after
        super().__init__(**standing)

    def _message(self) -> str:
        return f"{super()._message()}; deferred, retry after {self.retry_after:.1f}s"


class TaskStopped(Exception):
    """The guard stopped a runaway task instance (or session): this call was not sent, and neither
    will the key's later calls be while the stop holds. Not a `BudgetExceeded`: no budget's window
    is full; the task is looping. `key` is `task_id=...` or `session=...`; `reason` the detector
    (`semconv.RUNAWAY_KINDS`); `detail` its numbers in words; `budget` the budget whose
    `on_runaway: stop` applied. (Stop orders from alerts raise this too.)"""

    def __init__(self, *, key: str, reason: str, detail: str, budget: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.detail = detail
        self.budget = budget
        self.task_id = key.partition("=")[2] if key.startswith("task_id=") else None
        by = f" (budget {budget!r}, on_runaway: stop)" if budget else ""
        super().__init__(f"{key} stopped as a runaway: {reason}: {detail}{by}")
