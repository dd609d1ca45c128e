"""The pure builders behind the operator commands: outlooks (burn rate, projection, time left),
usage grouping, and the report's hour-of-day and peak hours — no network, exact numbers."""

from __future__ import annotations

import pytest

from otel_tokens import metric_names as mn
from otel_tokens.ops.outlook import format_duration, outlook
from otel_tokens.ops.report import Inputs, build, markdown
from otel_tokens.ops.usage import Sample, usage_table


def status(**kw: object) -> dict[str, object]:
    base = {"name": "b", "window": "1d", "unit": "tokens", "used": 500.0, "limit": 1000.0,
            "remaining_seconds": 86400.0, "warn_at": 0.8}  # fmt: skip
    return base | kw


def test_a_calendar_period_projects_to_its_end_and_counts_time_left_at_the_rate():
    o = outlook(status(window="day", remaining_seconds=7200.0), rate_per_second=0.05, now=1000.0)
    assert o.rate_per_hour == pytest.approx(180.0)
    assert o.projected == pytest.approx(500 + 0.05 * 7200)  # used + rate x what is left of the day
    assert o.seconds_left == pytest.approx(500 / 0.05)
    assert o.resets_at == 1000.0 + 7200.0 and o.state == "ok"


def test_a_rolling_window_projects_the_steady_state_and_never_resets():
    o = outlook(status(window="1h", remaining_seconds=3600.0), rate_per_second=0.5, now=0.0)
    assert o.projected == pytest.approx(0.5 * 3600)  # rate x one whole window
    assert o.resets_at is None


@pytest.mark.parametrize(
    ("used", "rate", "left", "state"),
    [(1200.0, 1.0, 0.0, "exceeded"), (850.0, 0.0, None, "warning"), (10.0, None, None, "ok")],
)
def test_time_left_is_zero_once_exceeded_and_unknown_without_burn(used, rate, left, state):
    o = outlook(status(used=used), rate_per_second=rate, now=0.0)
    assert o.seconds_left == left and o.state == state


def test_durations_read_as_people_say_them():
    assert [format_duration(s) for s in (None, 0, 39.2, 90, 5 * 3600, 3 * 86400, 400 * 86400)] == [
        "never", "now", "40s", "2m", "5.0h", "3.0d", ">1y",
    ]  # fmt: skip


def tokens(agent: str, kind: str, value: float, **labels: str) -> Sample:
    return Sample({mn.AGENT: agent, mn.MODEL: "m", mn.TOKEN_TYPE: kind, **labels}, value)


def test_usage_groups_sums_and_orders_by_cost():
    samples = {
        mn.TOKENS: [tokens("a", "input", 10), tokens("a", "output", 5), tokens("b", "cache_read", 100)],
        mn.COST: [Sample({mn.AGENT: "a", mn.MODEL: "m"}, 0.5), Sample({mn.AGENT: "b", mn.MODEL: "m"}, 2.0)],
        mn.REQUESTS: [Sample({mn.AGENT: "a", mn.MODEL: "m", mn.STATUS: "ok"}, 3)],
    }
    table = usage_table(samples, mn.AGENT)
    assert [r.key for r in table.rows] == ["b", "a"]
    assert table.total.tokens == {
        "input": 10,
        "output": 5,
        "cache_read": 100,
        "cache_write": 0,
        "reasoning": 0,
    }
    assert table.total.cost == 2.5 and table.total.requests == 3


def test_report_finds_peak_hours_in_utc_from_hourly_history():
    # points at t hold the hour before t: 10:00 UTC holds 09:00-10:00
    day = 1_800_000_000 - 1_800_000_000 % 86400
    history = {"a": [(day + 10 * 3600, 50.0), (day + 15 * 3600, 500.0)], "b": [(day + 10 * 3600, 25.0)]}
    doc = build(Inputs("day", "note", {}, None, "no budgets", {"a": [(day, 1.0)]}, history, float(day)))
    assert doc["hourly_tokens"][9] == 75 and doc["hourly_tokens"][14] == 500
    assert doc["peak_hours_utc"] == [14, 9]
    assert "14:00 (500 tokens), 09:00 (75 tokens)" in markdown(doc)


def test_status_table_keeps_names_whole_when_a_projection_is_absurdly_large():
    """A burn rate measured over the collector's first second projects to millions of percent; the
    table shows `>999%` (JSON keeps the figure) and the budget names stay readable in 80 columns."""
    from otel_tokens.ops.tables import status_text

    usd = status(name="everything-usd", unit="usd", window="month", used=0.00014, limit=5.0)
    wild = [
        outlook(status(name="support-daily", used=900.0, limit=1000.0), 3000.0, 0.0),
        outlook(usd, 0.01, 0.0),
    ]
    text = status_text(wild)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert any(line.startswith("support-daily ") and ">999%" in line for line in text.splitlines())
    assert any(line.startswith("everything-usd ") for line in text.splitlines())
