"""In-flight reservations held at the collector, so guards in different processes see each other.

A guard reserves its call's estimate against every budget the call matches before sending it
(`POST /api/v1/reservations`), and settles it when the call ends (`DELETE`). The ledger admits a
reservation only when it fits every budget's `used + reserved + amount <= limit`, under its lock,
so two processes can never both take the last room.

Two things keep reservations honest:

- **A TTL.** Every hold expires: a crashed agent's reservation frees its room after `ttl_seconds`.
- **A hold after settle.** The call's real use reaches the ledger with its span, which the agent's
  exporter sends in batches a few seconds later. A settled reservation therefore keeps holding the
  call's actual amount for `settle_hold_seconds` (longer than the exporter's batch delay): the use
  is never invisible between settle and span, at the price of counting it twice for those seconds
  (conservative: a call may be refused that would have fitted, never the other way round).

A reservation may also name the call's task instance (`task_id`) and its tokens against each
budget's per-task-instance limit: those are held per (budget, task_id), so processes sharing a
task_id see each other's calls in flight. Settling keeps the instance's hold at its estimate until
the hold after settle ends (the settle carries amounts in the budget's unit, not instance tokens).

Pure bookkeeping with an injected clock; `BudgetLedger` owns the lock.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["MAX_HOLDS", "MAX_TTL_SECONDS", "Hold", "HoldBook", "ReservationError"]

#: Reservations held at once, over every agent; past it a reservation is refused (503).
MAX_HOLDS = 100_000
#: The longest TTL a guard may ask for (a call that takes longer is settled late, not lost).
MAX_TTL_SECONDS = 3600.0


class ReservationError(ValueError):
    """A reservation request the ledger cannot take; the message says why."""


@dataclass(slots=True)
class Hold:
    """Amounts held against budgets (by name) until `expires_at`."""

    amounts: dict[str, float]
    expires_at: float
    settled: bool = False
    task_id: str | None = None
    #: tokens held against the per-task-instance limit of `task_id`, by budget
    instance: dict[str, float] = field(default_factory=dict)


class HoldBook:
    """Every hold, with the running total held per budget. Not locked: the ledger locks."""

    def __init__(self, budgets: list[str]) -> None:
        self.totals: dict[str, float] = dict.fromkeys(budgets, 0.0)
        #: tokens held per (budget, task_id), only while some are
        self.instance_totals: dict[tuple[str, str], float] = {}
        self._holds: dict[str, Hold] = {}
        self._expiry: list[tuple[float, str]] = []  # lazy heap: stale entries are skipped

    def __len__(self) -> int:
        return len(self._holds)

    def check(self, amounts: Mapping[str, float], ttl_seconds: float) -> None:
        """Raise `ReservationError` for an unknown budget, a bad amount or TTL, or a full book."""
        unknown = sorted(set(amounts) - set(self.totals))
        if unknown:
            raise ReservationError(
                f"unknown budget(s) {unknown}; this collector tracks {sorted(self.totals)}"
            )
        bad = sorted(name for name, amount in amounts.items() if not 0 <= amount < float("inf"))
        if bad:
            raise ReservationError(f"amounts must be finite and >= 0; not so for {bad}")
        if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise ReservationError(f"ttl_seconds must be in (0, {MAX_TTL_SECONDS:g}], got {ttl_seconds}")
        if len(self._holds) >= MAX_HOLDS:
            raise ReservationError(f"{MAX_HOLDS} reservations are held already; try again shortly")

    def add(
        self,
        amounts: Mapping[str, float],
        expires_at: float,
        task_id: str | None = None,
        instance: Mapping[str, float] | None = None,
    ) -> str:
        hold_id = uuid.uuid4().hex
        hold = Hold(dict(amounts), expires_at, task_id=task_id, instance=dict(instance or {}))
        self._holds[hold_id] = hold
        self._count(amounts, 1.0)
        self._count_instance(hold, 1.0)
        heapq.heappush(self._expiry, (expires_at, hold_id))
        return hold_id

    def settle(self, hold_id: str, used: Mapping[str, float] | None, until: float) -> bool:
        """Replace a hold's amounts by the call's real `used` (held until `until`), or drop it
        (`used` None). False when no such hold is held (expired, or settled twice)."""
        hold = self._holds.get(hold_id)
        if hold is None or hold.settled:
            return False
        self._count(hold.amounts, -1.0)
        if not used:
            del self._holds[hold_id]
            self._count_instance(hold, -1.0)
            return True
        hold.amounts = {name: amount for name, amount in used.items() if name in self.totals}
        hold.expires_at, hold.settled = until, True
        self._count(hold.amounts, 1.0)
        heapq.heappush(self._expiry, (until, hold_id))
        return True

    def expire(self, now: float) -> None:
        """Drop every hold whose time is up."""
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, hold_id = heapq.heappop(self._expiry)
            hold = self._holds.get(hold_id)
            if hold is not None and hold.expires_at == expires_at:
                del self._holds[hold_id]
                self._count(hold.amounts, -1.0)
                self._count_instance(hold, -1.0)

    def instance_held(self, budget: str, task_id: str) -> float:
        return self.instance_totals.get((budget, task_id), 0.0)

    def _count_instance(self, hold: Hold, sign: float) -> None:
        if hold.task_id is None:
            return
        for name, tokens in hold.instance.items():
            key = (name, hold.task_id)
            total = self.instance_totals.get(key, 0.0) + sign * tokens
            if total > 1e-9:
                self.instance_totals[key] = total
            else:
                self.instance_totals.pop(key, None)

    def _count(self, amounts: Mapping[str, float], sign: float) -> None:
        for name, amount in amounts.items():
            total = self.totals[name] + sign * amount
            self.totals[name] = total if total > 1e-9 else 0.0
