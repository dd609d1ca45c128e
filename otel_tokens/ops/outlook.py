"""A budget's outlook: burn rate, use projected to the window's end, time left.

Pure: a budget status (as `/api/v1/budgets` serves it) plus a burn rate in, an `Outlook` out. The
collector's summary, `otel-tokens status`, the report and the status page all read this one
computation, so they never disagree about "days left".

Projection follows the forecast alert's rule: a calendar period ends, so the projection is what is
used now plus the rate times what is left of it; a rolling window never ends, so its projection is
the steady state — the rate times one whole window.

The burn rate is one formula too, the forecast rule's `rate(llm_budget_consumed_total[lookback])`:
use over the trailing `lookback` divided by its length (`trailing_rate`). A collector reads it from
its ledger's trailing window — over the part of it the ledger has counted, so a collector started a
minute ago is not read as a day's average — and gives no rate (`—`, "not enough data") while that
part is under `MIN_RATE_SECONDS`: one call over a collector's first seconds would read as a burn of
thousands of percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from otel_tokens.budgets.spec import CALENDAR_PERIODS, parse_duration

__all__ = ["MIN_RATE_SECONDS", "Outlook", "format_duration", "outlook", "trailing_rate", "window_seconds"]

_NOMINAL = {"day": 86400.0, "week": 7 * 86400.0, "month": 30 * 86400.0}
#: Under this much counted time in the rate window a burn rate is noise: None (shown as `—`).
MIN_RATE_SECONDS = 300.0


def trailing_rate(amount: float, counted_seconds: float) -> float | None:
    """Burn per second: `amount` used over the last `counted_seconds` (the counted part of the
    trailing window); None when that is under `MIN_RATE_SECONDS` (not enough data yet)."""
    return amount / counted_seconds if counted_seconds >= MIN_RATE_SECONDS else None


@dataclass(frozen=True)
class Outlook:
    """One budget now and at the current burn rate; `None` where the rate is unknown."""

    name: str
    window: str
    unit: str
    used: float
    limit: float
    ratio: float
    warn_at: float
    state: str
    #: Seconds until a calendar period resets; a rolling window's length.
    remaining_seconds: float
    #: Unix time a calendar period resets at; None for rolling windows (they never reset).
    resets_at: float | None
    rate_per_hour: float | None
    projected: float | None
    #: Seconds until the limit at the current rate: 0 once exceeded, None when nothing burns.
    seconds_left: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_seconds(window: str) -> float:
    """A window's length: rolling as written, calendar periods nominally (month = 30 d)."""
    return _NOMINAL[window] if window in CALENDAR_PERIODS else parse_duration(window)


def _state(ratio: float, warn_at: float) -> str:
    return "exceeded" if ratio >= 1 else "warning" if ratio >= warn_at else "ok"


def outlook(status: Mapping[str, Any], rate_per_second: float | None, now: float) -> Outlook:
    """`status` has name, window, unit, used, limit, remaining_seconds and optionally warn_at,
    ratio and state (computed here when absent, e.g. from Prometheus' gauges)."""
    used, limit = float(status["used"]), float(status["limit"])
    window, remaining = str(status["window"]), float(status["remaining_seconds"])
    warn_at = float(status.get("warn_at", 0.8))
    ratio = float(status.get("ratio", used / limit if limit else math.inf))
    calendar = window in CALENDAR_PERIODS
    rate = rate_per_second if rate_per_second is not None and math.isfinite(rate_per_second) else None
    projected = seconds_left = None
    if rate is not None:
        projected = used + rate * remaining if calendar else rate * window_seconds(window)
        if used >= limit:
            seconds_left = 0.0
        elif rate > 0:
            seconds_left = (limit - used) / rate
    return Outlook(
        name=str(status["name"]), window=window, unit=str(status["unit"]), used=used, limit=limit,
        ratio=ratio, warn_at=warn_at, state=str(status.get("state") or _state(ratio, warn_at)),
        remaining_seconds=remaining, resets_at=float(round(now + remaining)) if calendar else None,
        rate_per_hour=None if rate is None else rate * 3600, projected=projected, seconds_left=seconds_left,
    )  # fmt: skip


def format_duration(seconds: float | None) -> str:
    """`40s`, `45m`, `5.2h`, `3.1d`, `>1y`; `now` at zero; `never` when nothing burns (None)."""
    if seconds is None or not math.isfinite(seconds):
        return "never"
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return f"{math.ceil(seconds)}s"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds < 365 * 86400:
        return f"{seconds / 86400:.1f}d"
    return ">1y"
