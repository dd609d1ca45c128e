"""Time windows of the budget ledger: rolling (bucketed) and calendar (reset at local boundaries).

Pure and lock-free: the ledger owns the lock and passes `now` in, so tests drive time exactly.

Rolling windows keep `BUCKETS_PER_WINDOW` buckets at most, each `max(60 s, window / 1440)` wide: a
1h or 1d window uses 1-minute buckets, a 30d window 30-minute buckets, so memory is bounded at ~1440
numbers per budget whatever the window. The price is at the trailing edge: a bucket counts until
its *end* leaves the window, so `used` includes use from at most one bucket width before the window
start (≤ 1 min for windows up to 1d, ≤ 30 min for 30d) and never misses use inside the window.

Calendar periods (`day`, `week` from Monday, `month`) start at local midnight in the configured
zone; the zone's DST rules decide how long a day is (23 h or 25 h on change days).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

__all__ = ["BUCKETS_PER_WINDOW", "CalendarWindow", "RollingWindow", "Window", "period_bounds"]

BUCKETS_PER_WINDOW = 1440
_MIN_BUCKET_S = 60.0


class Window(Protocol):
    def add(self, amount: float, now: float) -> None: ...
    def used(self, now: float) -> float: ...
    def remaining_seconds(self, now: float) -> float: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...
    def seconds_until_at_most(self, target: float, now: float) -> float | None: ...


class RollingWindow:
    """Use over the last `seconds`, in buckets of `bucket_seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.bucket_seconds = max(_MIN_BUCKET_S, seconds / BUCKETS_PER_WINDOW)
        self._buckets: deque[list[float]] = deque()  # [bucket index, amount], oldest first
        self._total = 0.0

    def add(self, amount: float, now: float) -> None:
        index = now // self.bucket_seconds  # a float's floor division: already a whole float
        buckets = self._buckets
        if buckets and buckets[-1][0] >= index:
            # Same bucket (or a clock that stepped back): add to the newest bucket.
            buckets[-1][1] += amount
        else:
            buckets.append([index, amount])
        self._total += amount
        # `_expire`'s test, inline: the budget guard adds and reads on every call, and mostly
        # nothing has aged out
        if (buckets[0][0] + 1) * self.bucket_seconds <= now - self.seconds:
            self._expire(now)

    def used(self, now: float) -> float:
        buckets = self._buckets
        if not buckets or (buckets[0][0] + 1) * self.bucket_seconds <= now - self.seconds:
            self._expire(now)  # (its test, inline)
            if not self._buckets:
                return 0.0
        # Summing float additions and subtractions drifts; clamp tiny negatives from rounding
        # (not max(): it parses keyword arguments on every call).
        total = self._total
        return total if total > 0.0 else 0.0

    @staticmethod
    def inline_used(window: str, now: str, out: str) -> list[str]:
        """`used` as source lines setting `out`, for code generated per window (the guard's fast
        lane: no call per budget on every call). `window` names the window, `now` the time; the
        same test as `used`, which it calls when something may have aged out."""
        return [
            f"_b = {window}._buckets",
            f"if _b and (_b[0][0] + 1) * {window}.bucket_seconds > {now} - {window}.seconds:",
            f"    {out} = {window}._total",
            f"    if not {out} > 0.0: {out} = 0.0",  # `used`'s clamp
            "else:",
            f"    {out} = {window}.used({now})",
        ]

    @staticmethod
    def inline_add(window: str, amount: str, now: str) -> list[str]:
        """`add` as source lines (see `inline_used`): the common case, an amount added to the
        newest bucket with nothing aged out, inline; anything else through `add`."""
        return [
            f"_b = {window}._buckets",
            f"if _b and _b[-1][0] >= {now} // {window}.bucket_seconds"
            f" and (_b[0][0] + 1) * {window}.bucket_seconds > {now} - {window}.seconds:",
            f"    _b[-1][1] += {amount}",
            f"    {window}._total += {amount}",
            "else:",
            f"    {window}.add({amount}, {now})",
        ]

    def remaining_seconds(self, now: float) -> float:
        """A rolling window never ends: projections look one whole window ahead."""
        return self.seconds

    def state(self) -> dict[str, Any]:
        """The buckets as plain values (the collector's durable store keeps them)."""
        return {"buckets": [list(b) for b in self._buckets], "total": self._total}

    def restore(self, state: dict[str, Any]) -> None:
        self._buckets = deque([float(i), float(a)] for i, a in state["buckets"])
        self._total = float(state["total"])

    def seconds_until_at_most(self, target: float, now: float) -> float | None:
        """Seconds until `used` falls to `target` or below if nothing more is added (the guard's
        `retry_after`): the moment enough of the oldest buckets have left the window. None when
        `target` is negative (never)."""
        remaining = self.used(now)
        if remaining <= target:
            return 0.0
        if target < 0:
            return None
        for index, amount in self._buckets:
            remaining -= amount
            if remaining <= target:
                return max((index + 1) * self.bucket_seconds + self.seconds - now, 0.0)
        return None  # not reached: an emptied window holds 0 <= target

    def _expire(self, now: float) -> None:
        start = now - self.seconds
        while self._buckets and (self._buckets[0][0] + 1) * self.bucket_seconds <= start:
            self._total -= self._buckets.popleft()[1]
        if not self._buckets:
            self._total = 0.0


def period_bounds(period: str, now: float, zone: ZoneInfo) -> tuple[float, float]:
    """Unix start and end of the calendar `period` (day, week, month) holding `now` in `zone`."""
    local = datetime.fromtimestamp(now, zone)
    start = datetime(local.year, local.month, local.day, tzinfo=zone)
    if period == "day":
        end_date = start.date() + timedelta(days=1)
    elif period == "week":
        start = datetime.combine(start.date() - timedelta(days=start.weekday()), start.time(), zone)
        end_date = start.date() + timedelta(days=7)
    elif period == "month":
        start = start.replace(day=1)
        end_date = (start.replace(day=28) + timedelta(days=4)).replace(day=1).date()
    else:
        raise ValueError(f"unknown calendar period {period!r}")
    # Wall-clock midnight of the next period, resolved in the zone: DST days are 23 h or 25 h long.
    end = datetime(end_date.year, end_date.month, end_date.day, tzinfo=zone)
    return start.timestamp(), end.timestamp()


class CalendarWindow:
    """Use since the start of the current calendar period; resets to zero at its end."""

    def __init__(self, period: str, zone: ZoneInfo) -> None:
        self.period = period
        self.zone = zone
        self._start = self._end = float("-inf")
        self._total = 0.0

    def add(self, amount: float, now: float) -> None:
        if not self._start <= now < self._end:  # `_roll`'s test, inline (the guard's hot path)
            self._roll(now)
        self._total += amount

    def used(self, now: float) -> float:
        if not self._start <= now < self._end:
            self._roll(now)
        return self._total

    @staticmethod
    def inline_used(window: str, now: str, out: str) -> list[str]:
        """`used` as source lines setting `out` (see `RollingWindow.inline_used`)."""
        return [
            f"if {window}._start <= {now} < {window}._end:",
            f"    {out} = {window}._total",
            "else:",
            f"    {out} = {window}.used({now})",
        ]

    @staticmethod
    def inline_add(window: str, amount: str, now: str) -> list[str]:
        """`add` as source lines (see `RollingWindow.inline_add`)."""
        return [
            f"if {window}._start <= {now} < {window}._end:",
            f"    {window}._total += {amount}",
            "else:",
            f"    {window}.add({amount}, {now})",
        ]

    def remaining_seconds(self, now: float) -> float:
        self._roll(now)
        return max(self._end - now, 0.0)

    def state(self) -> dict[str, Any]:
        """The current period and its use as plain values (for the durable store)."""
        return {"start": self._start, "end": self._end, "total": self._total}

    def restore(self, state: dict[str, Any]) -> None:
        self._start, self._end = float(state["start"]), float(state["end"])
        self._total = float(state["total"])

    def seconds_until_at_most(self, target: float, now: float) -> float | None:
        """Seconds until `used` is at most `target` if nothing more is added: now, or when the
        period resets to zero. None when `target` is negative (never)."""
        if self.used(now) <= target:
            return 0.0
        return None if target < 0 else self.remaining_seconds(now)

    def _roll(self, now: float) -> None:
        if not self._start <= now < self._end:
            start, end = period_bounds(self.period, now, self.zone)
            if start > self._start:  # never reopen an earlier period when the clock steps back
                self._start, self._end, self._total = start, end, 0.0
