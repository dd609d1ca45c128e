"""`CollectorBudgetState`: one budget shared by many processes, through the collector's ledger.

Each guarded call that a budget covers is reserved at the collector (`POST /api/v1/reservations`),
which admits it only when it fits `used + reserved + estimate <= limit` over every guard's calls,
under its own lock. The answer carries every budget's standing and the stop orders, so deciding
and syncing are one round trip; settling is sent from a background thread, off the call's path.
A poller refreshes stop orders (and standings) every `sync_interval_seconds`, so calls that no
budget covers see stop orders too.

The trade-off (README, "Enforce budgets in the agent"): a covered call waits for one round trip to
the collector before it is sent (about a millisecond on one host), and calls of one process take
that round trip one at a time (the decision and its reservation are atomic). In exchange the
cross-process overshoot is the same as within one process: only what the estimates miss.

Per-task-instance limits are shared the same way: a call in a task instance names its `task_id` and
its tokens in the reservation, and the collector admits it only when it also fits each budget's
per-instance limit over what every process has used (counted spans) and holds (calls in flight)
for that task_id; the answer carries the instance's standing. So processes sharing a task_id see
each other's use, with the same overshoot bound as the budget itself.

This process's own calls are also counted locally (a `LocalBudgetState`, which also checks the
instance limits on this process's own use first), and when the collector is unreachable the
guard decides on the last standing the collector sent plus its own use since (`on_unreachable:
open`, the default, logged once per outage), or refuses covered calls with `CollectorUnavailable`
(`closed`). Nothing here raises into the agent except that documented refusal.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from otel_tokens.budgets.ledger import record_amount, token_type_positions
from otel_tokens.budgets.spec import Budget, BudgetFile, GuardCollector
from otel_tokens.guard.collector_client import CollectorClient, CollectorError
from otel_tokens.guard.errors import CollectorUnavailable
from otel_tokens.guard.policy import scope_text
from otel_tokens.guard.state import (
    Claim,
    LocalBudgetState,
    LockedView,
    Reservation,
    Standing,
    StateUnavailable,
)
from otel_tokens.guard.stops import StopOrder, parse_orders
from otel_tokens.record import UsageRecord

__all__ = ["CollectorBudgetState"]

logger = logging.getLogger("otel_tokens.guard")

BUDGETS_PATH = "/api/v1/budgets"
RESERVATIONS_PATH = "/api/v1/reservations"


@dataclass(frozen=True, slots=True)
class _Remote:
    """One budget as the collector last reported it."""

    used: float
    reserved: float
    remaining_seconds: float


#: One task instance as the collector last reported it: task_id, budget → (used, reserved) tokens.
_RemoteInstance = tuple[str, dict[str, tuple[float, float]]]


class CollectorBudgetState:
    """A `BudgetState` shared through the collector at `url`. Thread-safe; `close()` stops its threads."""

    #: a decision waits for the collector: async callers take it off the event loop
    decides_over_network = True

    def __init__(
        self,
        budget_file: BudgetFile,
        url: str,
        *,
        token: str | None = None,
        settings: GuardCollector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or budget_file.guard.collector
        self.url = url
        self._local = LocalBudgetState(budget_file, clock)
        self._clock = clock
        self._positions = {b.name: token_type_positions(b) for b in budget_file.budgets}
        self._lock = threading.Lock()  # one decision (and its round trip) at a time
        self._client = CollectorClient(url, token, self.settings.timeout_seconds)
        self._remote: dict[str, _Remote] = {}
        self._instance: _RemoteInstance | None = None  # from the last reservation naming a task_id
        self._local_at_sync: dict[str, float] = {}  # this process's window use when `_remote` was read
        self._orders: tuple[StopOrder, ...] = ()
        self._down: str | None = None  # the reason, while the collector is unreachable
        self._flag_lock = threading.Lock()
        self._settles: queue.SimpleQueue[tuple[str, dict[str, float] | None] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=target, args=(token,), name=f"otel-tokens-guard-{name}", daemon=True)
            for name, target in (("sync", self._poll), ("settle", self._send_settles))
        ]
        for thread in self._threads:
            thread.start()

    # --- BudgetState ------------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def transaction(self) -> AbstractContextManager[_CollectorView]:
        return _CollectorView(self)

    def stop_orders(self) -> Sequence[StopOrder]:
        return self._orders

    def settle(self, reservation: Reservation, record: UsageRecord | None) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.local is not None:
            self._local.settle(reservation.local, record)
        if reservation.remote_id is not None:
            used = None
            if record is not None:
                used = {
                    c.budget.name: record_amount(c.budget, record, self._positions[c.budget.name])
                    for c in reservation.claims
                }
            self._settles.put((reservation.remote_id, used))

    def wait_for_change(self, timeout: float) -> None:
        # Room may come from another process: look again at least every sync interval.
        self._local.wait_for_change(min(timeout, self.settings.sync_interval_seconds))

    def close(self) -> None:
        """Stop the poller and the settle sender (pending settles are sent first)."""
        self._stop.set()
        self._settles.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    # --- what the collector said ------------------------------------------------------------------
    def _absorb(self, answer: Any) -> None:
        """Take the standings and stop orders of an answer (budgets, reservations)."""
        if not isinstance(answer, dict):
            return
        remote: dict[str, _Remote] = {}
        for item in answer.get("budgets") or ():
            try:
                remote[str(item["name"])] = _Remote(
                    float(item["used"]), float(item.get("reserved", 0.0)), float(item["remaining_seconds"])
                )
            except (KeyError, TypeError, ValueError):
                continue
        self._remote = remote
        self._local_at_sync = {name: self._local.standing(name).used for name in remote}
        if "task_instance" in answer:
            self._instance = _instance(answer["task_instance"])
        self._orders = parse_orders(answer.get("stop_orders"))
        self._recovered()

    def _unreachable(self, reason: str) -> None:
        with self._flag_lock:  # the poller, the settle sender and callers may all fail at once
            first, self._down = self._down is None, reason
        if first:
            mode = self.settings.on_unreachable
            then = (
                "deciding on the last standing it sent plus this process's own calls (fail-open)"
                if mode == "open"
                else "refusing every call a budget covers (fail-closed)"
            )
            logger.warning("otel-tokens guard: the collector at %s is unreachable (%s); %s until it answers",
                           self.url, reason, then)  # fmt: skip

    def _recovered(self) -> None:
        with self._flag_lock:
            was_down, self._down = self._down is not None, None
        if was_down:
            logger.warning("otel-tokens guard: the collector at %s answers again", self.url)

    def _poll(self, token: str | None) -> None:
        client = CollectorClient(self.url, token, self.settings.timeout_seconds)
        while not self._stop.is_set():
            try:
                self._absorb(client.request("GET", BUDGETS_PATH))
            except CollectorError as exc:
                self._unreachable(str(exc))
            except Exception:  # never let the poller die on our own bug
                logger.exception("otel-tokens guard: sync with the collector failed")
            self._stop.wait(self.settings.sync_interval_seconds)
        client.close()

    def _send_settles(self, token: str | None) -> None:
        client = CollectorClient(self.url, token, self.settings.timeout_seconds)
        hold = self.settings.settle_hold_seconds
        while (item := self._settles.get()) is not None:
            remote_id, used = item
            body = {"used": used, "hold_seconds": hold} if used is not None else {}
            try:
                client.request("DELETE", f"{RESERVATIONS_PATH}/{remote_id}", body)
            except CollectorError as exc:  # the reservation's TTL frees it
                self._unreachable(str(exc))
            except Exception:
                logger.exception("otel-tokens guard: settling a reservation failed")
        client.close()

    # --- one decision (under `_lock`) ---------------------------------------------------------------
    def _standing(self, claim: Claim, local: Standing) -> Standing:
        remote = self._remote.get(claim.budget.name)
        if remote is None:
            return local  # never heard from the collector: this process's own use
        used, reserved = remote.used, remote.reserved
        if self._down is not None:  # add what this process used since the collector last answered
            used += max(local.used - self._local_at_sync.get(claim.budget.name, 0.0), 0.0)
            reserved = max(reserved, local.reserved)
            return Standing(used, reserved, local.instance_used, local.instance_reserved)
        instance = self._instance
        if claim.task_id is None or instance is None or instance[0] != claim.task_id:
            return Standing(used, reserved, local.instance_used, local.instance_reserved)
        shared = instance[1].get(claim.budget.name)
        if shared is None:
            return Standing(used, reserved, local.instance_used, local.instance_reserved)
        # every process's use and holds (this one's included), never less than this one knows of
        return Standing(
            used, reserved, max(shared[0], local.instance_used), max(shared[1], local.instance_reserved)
        )

    def _fits(self, claims: Sequence[Claim]) -> bool:
        for claim in claims:
            standing = self._standing(claim, self._local.standing(claim.budget.name, claim.task_id))
            if standing.used + standing.reserved + claim.amount > claim.budget.limit.amount:
                return False
        return True

    def _reserve(self, claims: Sequence[Claim], agent: str, task: str, *, force: bool) -> Reservation | None:
        """Reserve locally (instance limits), then at the collector; None when either refuses."""
        with self._local.transaction() as view:
            local = view.reserve(claims, agent, task) if force else view.try_reserve(claims, agent, task)
        if local is None:
            return None
        amounts: dict[str, float] = {}
        for claim in claims:
            amounts[claim.budget.name] = amounts.get(claim.budget.name, 0.0) + claim.amount
        body: dict[str, Any] = {
            "amounts": amounts, "ttl_seconds": self.settings.reservation_ttl_seconds, "force": force,
        }  # fmt: skip
        instance = [c for c in claims if c.task_id is not None]
        if instance:  # one call: one task_id
            body["task_id"] = instance[0].task_id
            body["instance_tokens"] = {c.budget.name: c.instance_tokens for c in instance}
        try:
            answer = self._client.request("POST", RESERVATIONS_PATH, body)
        except CollectorError as exc:
            self._unreachable(str(exc))
            return self._without_collector(claims, local, agent, task, force, str(exc))
        self._absorb(answer)
        remote_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(remote_id, str):
            self._local.settle(local, None)
            return None
        return Reservation(tuple(claims), agent, task, remote_id=remote_id, local=local)

    def _without_collector(
        self, claims: Sequence[Claim], local: Reservation, agent: str, task: str, force: bool, reason: str
    ) -> Reservation | None:
        if self.settings.on_unreachable == "closed":
            self._local.settle(local, None)
            raise StateUnavailable(_unavailable(claims[0], self.url, reason))
        self._local.settle(local, None)  # re-decide on the combined view below
        if not force and not self._fits(claims):
            return None
        with self._local.transaction() as view:
            again = view.reserve(claims, agent, task)
        return Reservation(tuple(claims), agent, task, local=again)


def _instance(value: Any) -> _RemoteInstance | None:
    """The `task_instance` of a reservation's answer; None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("task_id"), str):
        return None
    budgets: dict[str, tuple[float, float]] = {}
    found = value.get("budgets")
    for name, item in (found if isinstance(found, dict) else {}).items():
        try:
            budgets[str(name)] = (float(item["used"]), float(item.get("reserved", 0.0)))
        except (KeyError, TypeError, ValueError):
            continue
    return value["task_id"], budgets


def _unavailable(claim: Claim, url: str, reason: str) -> CollectorUnavailable:
    spec: Budget = claim.budget
    return CollectorUnavailable(
        budget=spec.name, scope=scope_text(spec), window=spec.window, limit=spec.limit.amount,
        estimate=claim.amount, unit=spec.limit.unit, url=url, reason=reason,
    )  # fmt: skip


class _CollectorView(LockedView["CollectorBudgetState"]):
    """`BudgetView` over a `CollectorBudgetState`, holding its decision lock."""

    __slots__ = ()

    def standing(self, claim: Claim) -> Standing:
        local = self._state._local.standing(claim.budget.name, claim.task_id)
        return self._state._standing(claim, local)

    def seconds_until_used_at_most(self, budget: Budget, target: float) -> float | None:
        remote = self._state._remote.get(budget.name)
        if remote is None:  # only this process's use is known
            with self._state._local.transaction() as view:
                return view.seconds_until_used_at_most(budget, target)
        if target < 0:
            return None
        if remote.used <= target:
            return 0.0
        # The collector reports no window shape: its reset (a calendar period's end) or a rolling
        # window's length is when room surely comes back.
        return remote.remaining_seconds

    def reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation:
        reservation = self._state._reserve(claims, agent, task, force=True)
        assert reservation is not None  # forced
        return reservation

    def try_reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation | None:
        return self._state._reserve(claims, agent, task, force=False)
