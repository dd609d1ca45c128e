"""Reservations at the ledger, under a clock the test drives: what guards in different processes
rely on to see each other's calls in flight (README, "Many processes, one budget")."""

from __future__ import annotations

import threading

import pytest

from otel_tokens.budgets import parse_budget_text
from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.budgets.reservations import ReservationError
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

BUDGETS = """
budgets:
  - {name: day, limit: {tokens: 100}, window: day}
  - {name: usd, limit: {usd: 1}, window: 1h}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def ledger(clock: Clock) -> BudgetLedger:
    return BudgetLedger(parse_budget_text(BUDGETS, "budgets.yaml"), clock=clock)


def standing(led: BudgetLedger, name: str) -> tuple[float, float]:
    status = next(s for s in led.status() if s.name == name)
    return status.used, status.reserved


def test_a_reservation_is_admitted_only_while_used_plus_reserved_fits():
    clock = Clock()
    led = ledger(clock)
    led.observe(UsageRecord("openai", "gpt-4o-mini", tokens=TokenCounts(input=30), attribution=Attribution()))
    first, _ = led.reserve({"day": 50}, 60)
    assert first is not None and standing(led, "day") == (30, 50)
    refused, status = led.reserve({"day": 21, "usd": 0.1}, 60)  # 30 + 50 + 21 > 100: refused whole
    assert refused is None
    assert [(s.name, s.reserved) for s in status] == [("day", 50), ("usd", 0)]
    forced, _ = led.reserve({"day": 21}, 60, force=True)  # a call a `warn` budget lets through
    assert forced is not None and standing(led, "day") == (30, 71)


def test_reservations_expire_and_a_settled_call_is_held_then_released():
    clock = Clock()
    led = ledger(clock)
    crashed, _ = led.reserve({"day": 40}, 60)
    settled, _ = led.reserve({"day": 40}, 60)
    assert crashed and settled
    clock.now += 30
    assert led.settle(settled, {"day": 25}, hold_seconds=15)  # the real use, held for its span
    assert standing(led, "day") == (0, 65)
    clock.now += 15
    assert standing(led, "day") == (0, 40)  # the hold is over
    clock.now += 15
    assert standing(led, "day") == (0, 0)  # the crashed agent's reservation expired
    assert not led.settle(crashed, None, 15)  # too late: nothing held any more


def test_a_failed_call_releases_at_once_and_settling_twice_does_nothing():
    led = ledger(Clock())
    hold, _ = led.reserve({"usd": 0.5}, 60)
    assert hold is not None
    assert led.settle(hold, None, 15) and standing(led, "usd") == (0, 0)
    assert not led.settle(hold, {"usd": 0.5}, 15) and standing(led, "usd") == (0, 0)


@pytest.mark.parametrize(
    ("amounts", "ttl", "message"),
    [
        ({"nope": 1}, 60, "unknown budget(s) ['nope']"),
        ({"day": -1}, 60, "finite and >= 0"),
        ({"day": float("nan")}, 60, "finite and >= 0"),
        ({"day": 1}, 0, "ttl_seconds must be in"),
        ({"day": 1}, 10_000, "ttl_seconds must be in"),
    ],
)
def test_malformed_reservations_are_refused_with_the_reason(
    amounts: dict[str, float], ttl: float, message: str
):
    led = ledger(Clock())
    with pytest.raises(ReservationError) as caught:
        led.reserve(amounts, ttl)
    assert message in str(caught.value)
    assert standing(led, "day") == (0, 0)


def test_concurrent_reservations_never_pass_the_limit():
    led = ledger(Clock())
    start = threading.Barrier(40)
    granted: list[str | None] = []

    def one() -> None:
        start.wait()
        granted.append(led.reserve({"day": 10}, 60)[0])

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(g is not None for g in granted) == 10
    assert standing(led, "day") == (0, 100)


INSTANCE_BUDGETS = """
budgets:
  - {name: day, limit: {tokens: 100000}, window: day, per_task_instance: {tokens: 100}}
"""


def test_a_task_instance_is_held_over_every_process_until_its_span_counts():
    clock = Clock()
    led = BudgetLedger(parse_budget_text(INSTANCE_BUDGETS, "budgets.yaml"), clock=clock)
    run = Attribution(agent="a", task="t", task_id="run-1")
    led.observe(UsageRecord("openai", "gpt-4o-mini", tokens=TokenCounts(input=30), attribution=run))
    first, _ = led.reserve({"day": 50}, 60, task_id="run-1", instance_tokens={"day": 50})
    assert first is not None
    assert led.task_instance("run-1") == {"day": {"used": 30, "reserved": 50, "limit": 100}}
    # another process, the same instance: 30 counted + 50 held + 21 > 100
    assert led.reserve({"day": 21}, 60, task_id="run-1", instance_tokens={"day": 21})[0] is None
    assert led.reserve({"day": 21}, 60, task_id="run-2", instance_tokens={"day": 21})[0] is not None
    assert led.settle(first, {"day": 45}, hold_seconds=15)  # the estimate stays held for its span
    assert led.task_instance("run-1")["day"]["reserved"] == 50
    clock.now += 16
    assert led.task_instance("run-1")["day"]["reserved"] == 0
    assert led.reserve({"day": 70}, 60, task_id="run-1", instance_tokens={"day": 70})[0] is not None


@pytest.mark.parametrize(
    ("instance", "message"),
    [({"usd": 5}, "does not: ['usd']"), ({"day": -1}, "finite and >= 0")],
)
def test_malformed_instance_tokens_are_refused_with_the_reason(instance: dict[str, float], message: str):
    led = ledger(Clock())
    with pytest.raises(ReservationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        led.reserve({"day": 1}, 60, task_id="run-1", instance_tokens=instance)
