"""The guard's core without a network: estimates, reservations, windows and decisions on an injected
clock, so `retry_after` and window edges are exact."""

from __future__ import annotations

from typing import Any

import pytest

import otel_tokens
from otel_tokens.budgets.spec import BudgetFile
from otel_tokens.budgets.windows import RollingWindow
from otel_tokens.guard import Guard, GuardRequest, LocalBudgetState
from otel_tokens.pricing import default_price_book
from otel_tokens.record import Attribution, TokenCounts, UsageRecord
from otel_tokens.tokencount import count_message_tokens

MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the incident report in two lines."}]
PROMPT_TOKENS = count_message_tokens(MESSAGES, "gpt-4o")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def guard_for(*budgets: dict[str, Any], clock: Clock, **top: Any) -> Guard:
    budget_file = BudgetFile.model_validate({"budgets": list(budgets), **top})
    return Guard(budget_file, LocalBudgetState(budget_file, clock))


def request(model: str = "gpt-4o", max_output: int | None = 100, **attribution: str) -> GuardRequest:
    return GuardRequest("openai", "chat", model, Attribution(**attribution), MESSAGES, None, max_output)


def used(tokens: int, model: str = "gpt-4o") -> UsageRecord:
    return UsageRecord(provider="openai", request_model=model, tokens=TokenCounts(input=tokens))


def test_rolling_window_retry_after_is_when_enough_use_ages_out():
    clock = Clock(1000.5)  # inside the 1-minute bucket [960, 1020)
    guard = guard_for(
        {"name": "hourly", "limit": {"tokens": 1000}, "window": "1h", "action": "defer"}, clock=clock
    )
    first = guard.admit(request())
    first.settle(used(900))
    clock.now = 1010.0
    second = guard.admit(request())
    deferred = second.refusal
    assert isinstance(deferred, otel_tokens.BudgetDeferred)
    # the 900 leave the window when their bucket's end (1020) is an hour old
    assert deferred.retry_after == 1020 + 3600 - 1010
    assert (deferred.used, deferred.reserved, deferred.estimate) == (900, 0, PROMPT_TOKENS + 100)
    clock.now = 1020 + 3600
    assert guard.admit(request()).refusal is None


def test_in_flight_reservations_count_and_release():
    clock = Clock(0.0)
    guard = guard_for(
        {"name": "b", "limit": {"tokens": 2 * (PROMPT_TOKENS + 100)}, "window": "1d"}, clock=clock
    )
    state: Any = guard.state
    a, b = guard.admit(request()), guard.admit(request())
    assert state.standing("b").reserved == 2 * (PROMPT_TOKENS + 100)
    a.settle(None)  # failed without usage: released, nothing counted
    b.settle(used(10))
    b.settle(used(10))  # settling twice counts once
    assert (state.standing("b").used, state.standing("b").reserved) == (10, 0)


def test_usd_budget_reserves_the_estimated_cost():
    clock = Clock(0.0)
    guard = guard_for({"name": "usd", "limit": {"usd": 1.0}, "window": "month"}, clock=clock)
    guard.admit(request(max_output=1000))
    expected = default_price_book().cost_usd(
        "openai", "gpt-4o", TokenCounts(input=PROMPT_TOKENS, output=1000)
    )
    assert expected is not None and expected > 0
    assert guard.state.standing("usd").reserved == pytest.approx(expected)  # type: ignore[attr-defined]


def test_output_ceiling_defaults_from_the_budget_file():
    clock = Clock(0.0)
    guard = guard_for(
        {"name": "b", "limit": {"tokens": 10**6}, "window": "1d"},
        clock=clock,
        guard={"default_output_tokens": 321},
    )
    guard.admit(request(max_output=None))
    assert guard.state.standing("b").reserved == PROMPT_TOKENS + 321  # type: ignore[attr-defined]


def test_token_type_limits_charge_the_estimate_conservatively():
    clock = Clock(0.0)
    guard = guard_for(
        {"name": "in", "limit": {"tokens": 10**6, "token_types": ["cache_read"]}, "window": "1d"},
        {"name": "out", "limit": {"tokens": 10**6, "token_types": ["reasoning"]}, "window": "1d"},
        clock=clock,
    )
    guard.admit(request(max_output=50))
    state: Any = guard.state
    # an estimate cannot tell cache reads from fresh input, nor reasoning from visible output
    assert (state.standing("in").reserved, state.standing("out").reserved) == (PROMPT_TOKENS, 50)


def test_a_call_larger_than_the_whole_budget_is_not_deferred_but_refused():
    guard = guard_for(
        {"name": "tiny", "limit": {"tokens": 10}, "window": "1h", "action": "defer"}, clock=Clock(0.0)
    )
    refusal = guard.admit(request()).refusal
    assert type(refusal) is otel_tokens.BudgetExceeded and refusal.resets_at is None


def test_block_wins_over_defer_and_downgrade_is_tried_first():
    clock = Clock(0.0)
    one_call = PROMPT_TOKENS + 100
    guard = guard_for(
        {"name": "d", "limit": {"tokens": 2 * one_call - 1}, "window": "1d", "action": "defer"},
        {
            "name": "b",
            "limit": {"usd": 0.0000001},
            "window": "1d",
            "action": "block",
            "scope": {"model": "gpt-4o"},
        },
        {
            "name": "g",
            "limit": {"tokens": 1},
            "window": "1d",
            "action": "downgrade",
            "downgrade_to": "gpt-4o-mini",
        },
        clock=clock,
    )
    first = guard.admit(request())
    assert first.refusal is None and first.model == "gpt-4o-mini"
    admission = guard.admit(request())  # the first one's reservation leaves no room in "d"
    # downgraded first, the gpt-4o-only block budget no longer applies; the defer budget still does
    assert admission.model == "gpt-4o-mini" and admission.downgraded_from == "gpt-4o"
    assert isinstance(admission.refusal, otel_tokens.BudgetDeferred)
    assert [d.outcome for d in admission.decisions] == ["downgraded", "deferred"]


def test_unmatched_calls_reserve_nothing():
    guard = guard_for(
        {"name": "b", "limit": {"tokens": 1}, "window": "1d", "scope": {"agent": "x"}}, clock=Clock(0)
    )
    admission = guard.admit(request(agent="y"))
    assert admission.refusal is None and admission.reservation is None


def test_rolling_window_seconds_until_at_most():
    window = RollingWindow(3600)
    window.add(100, 0.0)  # bucket [0, 60)
    window.add(50, 120.0)  # bucket [120, 180)
    assert window.seconds_until_at_most(150, 130.0) == 0.0
    assert window.seconds_until_at_most(50, 130.0) == 60 + 3600 - 130
    assert window.seconds_until_at_most(0, 130.0) == 180 + 3600 - 130
    assert window.seconds_until_at_most(-1, 130.0) is None


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o"),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("anthropic", "claude-sonnet-4-5"),  # a tier above 200k input tokens
        ("openai", "no-such-model"),
    ],
)
def test_the_estimate_is_priced_exactly_as_a_call_of_its_counts(provider: str, model: str):
    """The guard prices its estimate through `estimate_cost_usd`: the same float as `cost_usd` of
    the same input and output, on both sides of a price tier."""
    prices = default_price_book()
    for input_tokens, output_tokens in [(0, 0), (17, 64), (199_999, 5), (200_001, 7), (10**6, 10**5)]:
        expected = prices.cost_usd(provider, model, TokenCounts(input=input_tokens, output=output_tokens))
        assert prices.estimate_cost_usd(provider, model, input_tokens, output_tokens) == expected


class GeneralPathOnly(LocalBudgetState):
    """A local state that offers no fast lane: every call takes the general path."""

    def lane(self, budgets: Any, forms: Any) -> None:
        return None


@pytest.mark.parametrize("attribution", [{}, {"session": "s1"}, {"task_id": "t-1"}])
def test_the_common_call_reserves_and_counts_what_the_general_path_does(attribution: dict[str, str]):
    """A call nothing but its budgets decide — watched by the runaway detectors or not — takes
    the state's fast lane; a state without one decides it on the general path. Both hold and
    count the same amounts, and a watched call's usage still reaches the detectors."""
    budgets = [
        {"name": "tokens", "limit": {"tokens": 10**6}, "window": "1h"},
        {"name": "usd", "limit": {"usd": 100.0}, "window": "month"},
        {"name": "out", "limit": {"tokens": 10**6, "token_types": ["output"]}, "window": "day"},
    ]
    budget_file = BudgetFile.model_validate({"budgets": budgets})
    lane = Guard(budget_file, LocalBudgetState(budget_file, Clock(0.0)))
    general = Guard(budget_file, GeneralPathOnly(budget_file, Clock(0.0)))
    fast, slow = lane.admit(request(**attribution)), general.admit(request(**attribution))
    assert fast.hold is not None and slow.hold is None and slow.reservation is not None
    assert (fast.after is None) == (slow.after is None) == (not attribution)
    states: list[Any] = [lane.state, general.state]
    for name in ("tokens", "usd", "out"):
        assert states[0].standing(name).reserved == states[1].standing(name).reserved > 0
    record = UsageRecord(
        provider="openai", request_model="gpt-4o", tokens=TokenCounts(input=40, output=9, cache_read=30),
        cost_usd=0.25,
    )  # fmt: skip
    fast.settle(record)
    slow.settle(record)
    for name in ("tokens", "usd", "out"):
        assert states[0].standing(name) == states[1].standing(name)
    assert (states[0].standing("tokens").used, states[0].standing("usd").used) == (49, 0.25)
    assert states[0].standing("out").used == 9
    assert len(lane.runaway) == len(general.runaway) == len(attribution)  # the keys watched


def test_the_fast_lane_counts_as_the_windows_do_as_time_passes():
    """The lane's generated code reads and adds to the windows inline; over calls that cross
    bucket boundaries, let use age out of a rolling window and roll a calendar period, it holds,
    counts and refuses exactly as the general path, call by call."""
    budgets = [
        {"name": "hour", "limit": {"tokens": 3000}, "window": "1h", "action": "block"},
        {"name": "day", "limit": {"usd": 1.0}, "window": "day", "action": "block"},
        {
            "name": "out",
            "limit": {"tokens": 10**6, "token_types": ["output"]},
            "window": "2h",
            "action": "block",
        },
    ]
    budget_file = BudgetFile.model_validate({"budgets": budgets})
    clocks = [Clock(86_000.0), Clock(86_000.0)]
    lane = Guard(budget_file, LocalBudgetState(budget_file, clocks[0]))
    general = Guard(budget_file, GeneralPathOnly(budget_file, clocks[1]))
    record = UsageRecord(
        provider="openai", request_model="gpt-4o", tokens=TokenCounts(input=400, output=90, cache_read=300),
        cost_usd=0.01,
    )  # fmt: skip
    refused = 0
    for step in range(60):
        for clock in clocks:
            clock.now += 37.0 if step % 7 else 900.0  # within a bucket, across them, past the hour
        fast, slow = lane.admit(request()), general.admit(request())
        assert (fast.refusal is None) == (slow.refusal is None)
        assert (fast.hold is not None) == (fast.refusal is None)
        refused += fast.refusal is not None
        for name in ("hour", "day", "out"):
            assert lane.state.standing(name) == general.state.standing(name)  # type: ignore[attr-defined]
        fast.settle(record if step % 5 else None)
        slow.settle(record if step % 5 else None)
        for name in ("hour", "day", "out"):
            assert lane.state.standing(name) == general.state.standing(name)  # type: ignore[attr-defined]
    assert 0 < refused < 60  # both paths were exercised: the lane admitted, and it refused
