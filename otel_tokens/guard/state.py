"""Where the guard reads how much of each budget is used and holds what calls in flight reserve.

`BudgetState` is the seam: the guard's decisions (`policy.py`) read standings and reserve through
it, never through a concrete store. `LocalBudgetState` is the in-process implementation: this
process's own calls, counted exactly as the collector's ledger counts them (same scope matching,
same amounts, same windows — `otel_tokens.budgets.ledger`). A collector-backed state plugs in
behind the same protocol later: standings from the collector's `/api/v1/budgets` plus this
process's use since the last sync.

Atomicity: a decision and its reservation happen inside one `transaction()`, under one lock, so
concurrent calls in one process cannot each see the same room and all slip past a cap. Nothing
slow runs under the lock (no tokenizer, no I/O): a few additions per matching budget. The common
call — it fits, and nothing but its budgets decides it — takes a `Lane` instead: the same test and
the same additions under the same lock, without claims or a transaction object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from otel_tokens.budgets.ledger import budget_window, instance_amount, record_amount, token_type_positions
from otel_tokens.budgets.spec import Budget, BudgetFile
from otel_tokens.budgets.windows import Window
from otel_tokens.guard.errors import BudgetExceeded
from otel_tokens.guard.estimate import AmountForm
from otel_tokens.guard.stops import StopOrder
from otel_tokens.metric_names import UNKNOWN
from otel_tokens.record import TokenCounts, UsageRecord
from otel_tokens.task_instances import TaskInstanceTable

__all__ = [
    "BudgetState",
    "BudgetView",
    "Claim",
    "Lane",
    "LocalBudgetState",
    "Reservation",
    "Standing",
    "StateUnavailable",
]


@dataclass(slots=True)
class Claim:
    """What one call would add to one budget: `amount` in the budget's unit and, when the budget
    has a per-task-instance limit and the call runs in a task instance, `instance_tokens` to it."""

    budget: Budget
    amount: float
    task_id: str | None = None
    instance_tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class Standing:
    """One budget now: counted use in its window and what calls in flight hold."""

    used: float
    reserved: float
    instance_used: float = 0.0
    instance_reserved: float = 0.0


@dataclass(slots=True)
class Reservation:
    """The claims one admitted call holds until it is settled (exactly once)."""

    claims: tuple[Claim, ...]
    agent: str = UNKNOWN
    task: str = UNKNOWN
    settled: bool = field(default=False)
    #: the collector's id for it, when the state shares budgets through a collector
    remote_id: str | None = None
    #: the same claims in this process's own accounting (`CollectorBudgetState`)
    local: Reservation | None = None


class BudgetView(Protocol):
    """The state as seen inside one transaction (the lock is held), at one instant `now`."""

    @property
    def now(self) -> float: ...

    def standing(self, claim: Claim) -> Standing: ...

    def seconds_until_used_at_most(self, budget: Budget, target: float) -> float | None: ...

    def reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation: ...

    def try_reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation | None:
        """Reserve when every claim fits its budget (and task instance), else None: the common
        case in one step; the guard then looks at `standing` only for a call that does not fit."""
        ...


class BudgetState(Protocol):
    """The guard's source of budget standings (in-process now; collector-synced later)."""

    def transaction(self) -> AbstractContextManager[BudgetView]: ...

    def settle(self, reservation: Reservation, record: UsageRecord | None) -> None:
        """Replace the reservation by what the call really used (`record`), or just release it
        (`None`: the call failed before any usage was known, or our accounting failed)."""
        ...

    def wait_for_change(self, timeout: float) -> None:
        """Block up to `timeout` seconds or until a reservation is settled (a deferred call's wait)."""
        ...

    def now(self) -> float: ...

    def stop_orders(self) -> Sequence[StopOrder]:
        """The stop orders in force (firing alerts the guard obeys); empty when the state has no
        alert source."""
        ...


class StateUnavailable(Exception):
    """The state's source cannot answer and its policy is to refuse (fail-closed): `refusal` is
    the error the call raises."""

    def __init__(self, refusal: BudgetExceeded) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


#: As in the collector's ledger: instances idle this long are over; at most this many are remembered.
_INSTANCE_IDLE_S = 3600.0
_MAX_TRACKED_INSTANCES = 10_000


class _Account:
    """One budget's window, in-flight reservations and task instances. The state's lock guards it."""

    def __init__(self, budget_file: BudgetFile, spec: Budget) -> None:
        self.spec = spec
        self.window: Window = budget_window(budget_file, spec)
        self.type_positions = token_type_positions(spec)
        self.limit = spec.limit.amount  # read per call on the fast lane: not through the properties
        self.usd = spec.limit.unit == "usd"
        self.reserved = 0.0
        self.instances = (
            TaskInstanceTable(max_tracked=_MAX_TRACKED_INSTANCES, idle_seconds=_INSTANCE_IDLE_S)
            if spec.per_task_instance
            else None
        )
        self.instance_reserved: dict[str, float] = {}  # only instances with calls in flight
        #: use counted elsewhere (other processes, as a read-only source last reported it), added
        #: to this process's own; may be negative while this process's recent calls are not yet
        #: in the reported figure (never below this process's own use)
        self.external = 0.0

    def used(self, now: float) -> float:
        own = self.window.used(now)
        return own + self.external if self.external > 0 else own  # max(): a kwargs parse per call

    def fits(self, claim: Claim, now: float) -> bool:
        if self.used(now) + self.reserved + claim.amount > self.limit:
            return False
        instance = self.spec.per_task_instance
        if instance is None or claim.task_id is None or self.instances is None:
            return True
        held = self._instance_used(claim.task_id, now) + self.instance_reserved.get(claim.task_id, 0.0)
        return held + claim.instance_tokens <= instance.tokens

    def _instance_used(self, task_id: str, now: float) -> float:
        totals = self.instances.get(task_id, now) if self.instances is not None else None
        return totals.tokens if totals is not None else 0.0

    def standing(self, task_id: str | None, now: float) -> Standing:
        used, reserved = self.used(now), max(self.reserved, 0.0)
        if self.instances is None or task_id is None:
            return Standing(used, reserved)
        return Standing(
            used, reserved, self._instance_used(task_id, now), self.instance_reserved.get(task_id, 0.0)
        )

    def hold(self, claim: Claim, sign: float) -> None:
        self.reserved += sign * claim.amount
        if claim.task_id is not None and self.instances is not None:
            held = self.instance_reserved.get(claim.task_id, 0.0) + sign * claim.instance_tokens
            if held > 1e-9:
                self.instance_reserved[claim.task_id] = held
            else:
                self.instance_reserved.pop(claim.task_id, None)

    def count(self, claim: Claim, record: UsageRecord, agent: str, task: str, now: float) -> None:
        amount = record_amount(self.spec, record, self.type_positions)
        self.window.add(amount, now)
        if claim.task_id is not None and self.instances is not None:
            tokens = instance_amount(self.spec, amount, record)
            self.instances.add(claim.task_id, agent, task, tokens, 0.0, now)


class LocalBudgetState:
    """This process's use of every budget in a budget file. Thread-safe; clock injected."""

    def __init__(self, budget_file: BudgetFile, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0  # deferred calls in `wait_for_change`: only they need a notify
        self._accounts = {spec.name: _Account(budget_file, spec) for spec in budget_file.budgets}

    def now(self) -> float:
        return self._clock()

    def stop_orders(self) -> Sequence[StopOrder]:
        return ()  # alerts reach guards through the collector (`CollectorBudgetState`)

    def lane(self, budgets: Sequence[Budget], forms: list[AmountForm]) -> Lane | None:
        """The fast lane through `budgets`, which claim `forms` of an estimate (see `Lane`); None
        where a state decides otherwise than by its own accounts alone (a subclass whose source
        can refuse a call or stop it)."""
        return Lane(self, [self._accounts[spec.name] for spec in budgets], forms)

    def transaction(self) -> AbstractContextManager[BudgetView]:
        return _LocalView(self)  # takes the lock on entry (a class: no generator on the hot path)

    def settle(self, reservation: Reservation, record: UsageRecord | None) -> None:
        with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            now = self._clock()
            for claim in reservation.claims:
                account = self._accounts[claim.budget.name]
                account.hold(claim, -1.0)
                if record is not None:
                    account.count(claim, record, reservation.agent, reservation.task, now)
            if self._waiting:
                self._changed.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        with self._lock:
            self._waiting += 1
            try:
                self._changed.wait(timeout)
            finally:
                self._waiting -= 1

    def standing(self, budget: str, task_id: str | None = None) -> Standing:
        """One budget's standing now (for tests and status displays)."""
        with self._lock:
            return self._accounts[budget].standing(task_id, self._clock())


class _Lockable(Protocol):
    _lock: threading.Lock
    _clock: Callable[[], float]


_S = TypeVar("_S", bound=_Lockable)


class LockedView(Generic[_S]):
    """A `BudgetView` base: holds the state's decision lock from `__enter__` to `__exit__` and reads
    the clock once, so every standing in one decision is taken at the same instant. A class, not a
    generator context manager: this is on the hot path of every guarded call."""

    __slots__ = ("_now", "_state")

    def __init__(self, state: _S) -> None:
        self._state = state
        self._now = 0.0

    def __enter__(self: _V) -> _V:
        self._state._lock.acquire()
        self._now = self._state._clock()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._state._lock.release()

    @property
    def now(self) -> float:
        return self._now


_V = TypeVar("_V", bound="LockedView[Any]")


class _LocalView(LockedView["LocalBudgetState"]):
    """`BudgetView` over a `LocalBudgetState`."""

    __slots__ = ()

    def standing(self, claim: Claim) -> Standing:
        return self._state._accounts[claim.budget.name].standing(claim.task_id, self._now)

    def seconds_until_used_at_most(self, budget: Budget, target: float) -> float | None:
        account = self._state._accounts[budget.name]
        if not account.external:
            return account.window.seconds_until_at_most(target, self._now)
        # Use counted elsewhere ages out on a schedule this process cannot see: when only it stands
        # in the way, the window's reset (a calendar period's end, a rolling window's length).
        wait = account.window.seconds_until_at_most(target - max(account.external, 0.0), self._now)
        if wait is None and target >= 0:
            return account.window.remaining_seconds(self._now)
        return wait

    def reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation:
        for claim in claims:
            self._state._accounts[claim.budget.name].hold(claim, 1.0)
        return Reservation(tuple(claims), agent, task)

    def try_reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation | None:
        accounts, now = self._state._accounts, self._now
        if all(accounts[claim.budget.name].fits(claim, now) for claim in claims):
            return self.reserve(claims, agent, task)
        return None


class Lane:
    """The common call's path through a `LocalBudgetState`: the accounts of the budgets one kind of
    call matches (no task instance among them), resolved once, with what each claims of an
    estimate (`estimate.amount_form`). `try_hold` checks every account and reserves in one pass
    under the state's lock — the same test and the same additions as `try_reserve` on claims, so a
    call admitted here is admitted there and the cap is as exact — and `settle` replaces the hold
    with the call's counts. Anything else (a call that does not fit, task instances, runaway keys)
    takes the general path through claims and `transaction()`.

    A hold is the list of amounts reserved, one per account; settling empties it, so a hold is
    settled at most once without an object of its own (this runs on every guarded call).

    Both are generated once per lane as straight-line Python over its accounts (`_lane_source`),
    as `pricing` generates its cost functions: no loop, no `zip`, no tuple unpacking per account
    on every call; the same comparisons and the same float operations in the same order. They are
    plain functions in instance slots: `lane.try_hold(...)` binds no method."""

    __slots__ = ("_accounts", "_state", "settle", "try_hold")

    #: `try_hold(input_tokens, output_tokens, cost_usd)`: reserve an estimate (`estimate_amount`
    #: of it, per budget) when it fits every budget; the hold, else None
    try_hold: Callable[[int, int, float | None], list[float] | None]
    #: `settle(hold, counts, cost_usd)`: release `hold` and count what the call used (`counts`
    #: None: released only), as `LocalBudgetState.settle` counts a record (`record_amount`); a
    #: settled (empty) hold is left alone
    settle: Callable[[list[float], TokenCounts | None, float | None], None]

    def __init__(self, state: LocalBudgetState, accounts: list[_Account], forms: list[AmountForm]) -> None:
        self._state = state
        self._accounts = accounts
        namespace: dict[str, Any] = {"_state": state, "_acquire": state._lock.acquire,
                                     "_release": state._lock.release, "_clock": state._clock}  # fmt: skip
        for n, account in enumerate(accounts):
            namespace[f"_acc{n}"] = account
            namespace[f"_win{n}"] = account.window
            namespace[f"_positions{n}"] = account.type_positions
        # The source holds only integers and fixed names; the accounts are bound by name.
        exec(_lane_source(accounts, forms), namespace)
        self.try_hold = namespace["try_hold"]
        self.settle = namespace["settle"]


def _lane_source(accounts: list[_Account], forms: list[AmountForm]) -> str:
    """`try_hold` and `settle` unrolled over `accounts` (see `Lane`). An account's claim is its
    form's `i * input + o * output` with the integer coefficients folded in (integers: exact), as
    a float; a USD account claims the priced estimate. The lock is taken with acquire()/release()
    rather than `with`: half the cost, on every call."""
    n = len(accounts)
    amounts = ", ".join(f"a{k}" for k in range(n))
    hold = [
        "def try_hold(input_tokens, output_tokens, cost_usd):",
        "    usd = cost_usd or 0.0",
        "    _acquire()",
        "    try:",
        "        now = _clock()",
    ]
    for k, (i, o, in_usd) in enumerate(forms):
        terms = [name for name, coef in (("input_tokens", i), ("output_tokens", o)) if coef]
        claim = "usd" if in_usd else (f"float({' + '.join(terms)})" if terms else "0.0")
        hold += [
            f"        a{k} = {claim}",
            *_indent(_inline(accounts[k].window, "inline_used", f"_win{k}", "now", "used"), 8),
            f"        if _acc{k}.external > 0: used += _acc{k}.external",
            f"        if used + _acc{k}.reserved + a{k} > _acc{k}.limit: return None",
        ]
    hold += [f"        _acc{k}.reserved += a{k}" for k in range(n)]
    hold += ["    finally:", "        _release()", f"    return [{amounts}]"]
    split = any(account.type_positions is not None and not account.usd for account in accounts)
    whole = any(account.type_positions is None and not account.usd for account in accounts)
    settle = [
        "def settle(hold, counts, cost_usd):",
        "    split = counts.disjoint_counts() if counts is not None else ()" if split or whole else "",
        "    whole = float(sum(split))" if whole else "",
        "    spent_usd = cost_usd or 0.0",
        "    _acquire()",
        "    try:",
        "        if not hold: return",
        "        now = _clock()",
        f"        {amounts}, = hold" if n else "",
    ]
    settle += [f"        _acc{k}.reserved -= a{k}" for k in range(n)]
    settle.append("        if counts is not None:" if n else "")
    for k, account in enumerate(accounts):
        if account.usd:
            amount = "spent_usd"
        elif account.type_positions is None:
            amount = "whole"
        else:
            settle.append(f"            part = float(sum([split[i] for i in _positions{k}]))")
            amount = "part"
        settle += _indent(_inline(account.window, "inline_add", f"_win{k}", amount, "now"), 12)
    settle += [
        "        hold.clear()",
        "        if _state._waiting: _state._changed.notify_all()",
        "    finally:",
        "        _release()",
    ]
    return "\n".join(hold + settle) + "\n"


def _inline(window: Window, kind: str, *names: str) -> list[str]:
    """A window's `used` (`inline_used`) or `add` (`inline_add`) as source lines over `names`,
    from the window class when it offers them (`budgets.windows`), else a call of the method."""
    source = getattr(type(window), kind, None)
    if callable(source):
        return list(source(*names))
    if kind == "inline_used":
        window_name, now, out = names
        return [f"{out} = {window_name}.used({now})"]
    window_name, amount, now = names
    return [f"{window_name}.add({amount}, {now})"]


def _indent(lines: list[str], spaces: int) -> list[str]:
    return [" " * spaces + line for line in lines]
