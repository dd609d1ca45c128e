"""Money and token counts as people read them, at every magnitude, in one place.

Terminal tables, the demo, `otel-tokens status`, alert annotations and dashboard text all show the
same figures; they format them here so `$0.002` never prints as `$0.00` or `1.2e-05`, and a million
tokens never reads as `1e+06`. Money keeps two significant digits below a dollar (small demo-sized
spend is real money at scale) and cents above; token counts use thousands separators, or a short
suffix (`1.5M`) where space is tight.
"""

from __future__ import annotations

import math

__all__ = ["format_amount", "format_tokens", "format_usd", "short_number"]


def format_usd(value: float) -> str:
    """`$1,234.57`, `$0.42`, `$0.016`, `$0.0021`, `$0.000012`, `$0` — never scientific notation."""
    if not math.isfinite(value):
        return f"${value}"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "$0"
    if value >= 1:
        return f"{sign}${value:,.2f}"
    # below a dollar: two significant digits (at least cents), written out in full
    digits = max(2, 1 - math.floor(math.log10(value)))
    return f"{sign}${value:.{digits}f}"


def format_tokens(value: float) -> str:
    """`1,234,567` — whole tokens with thousands separators."""
    if not math.isfinite(value):
        return str(value)
    return f"{round(value):,}"


def short_number(value: float) -> str:
    """`500k`, `2M`, `1.5k`, `3.2G`, `950`: how people write budget limits."""
    if not math.isfinite(value):
        return str(value)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{sign}{value / size:.4g}{suffix}"
    return f"{sign}{value:.4g}"


def format_amount(value: float, unit: str) -> str:
    """A budget figure in its unit: `usd` as money, anything else as tokens."""
    return format_usd(value) if unit == "usd" else format_tokens(value)
