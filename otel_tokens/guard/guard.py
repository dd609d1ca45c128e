"""The guard around one call: estimate → match budgets → decide and reserve → (send) → settle.

`Guard.admit()` runs before the request is sent and answers with an `Admission`: the model to send
(a `downgrade` may have changed it), the decisions to put on the span, and either a reservation
(send, then `Admission.settle(record)` with what the call really used — or `None` to release it
when the call failed without usage) or a refusal (raise it; nothing was reserved).

The instrumentation calls it from its one pre-send hook (`LLMCall.admit`); the guard itself knows
nothing of SDKs or spans.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from otel_tokens.budgets.ledger import record_labels, scope_matches
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.budgets.spec import Budget, BudgetFile
from otel_tokens.guard.errors import BudgetDeferred, BudgetExceeded
from otel_tokens.guard.estimate import GuardRequest, estimate_amount, estimate_tokens
from otel_tokens.guard.policy import Admit, Decision, Refuse, Reroute, pressure_of, resolve
from otel_tokens.guard.state import BudgetState, Claim, LocalBudgetState, Reservation
from otel_tokens.metric_names import UNKNOWN
from otel_tokens.pricing import PriceBook, default_price_book
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

__all__ = ["Admission", "Guard"]

#: How often an async deferred call looks again for room (a thread waits on a condition instead).
_ASYNC_POLL_S = 0.05
#: Distinct (provider, model, attribution) combinations whose matching budgets are remembered.
_MAX_CACHED_MATCHES = 4096


@dataclass(slots=True)
class Admission:
    """The guard's answer for one call; see the module docstring."""

    model: str
    downgraded_from: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    refusal: BudgetExceeded | None = None
    reservation: Reservation | None = None
    state: BudgetState | None = None

    def settle(self, record: UsageRecord | None) -> None:
        """Replace the reservation with the call's real use; safe to call more than once."""
        if self.reservation is not None and self.state is not None:
            self.state.settle(self.reservation, record)


class Guard:
    """Enforces one budget file's actions on the calls of this process."""

    def __init__(
        self,
        budget_file: BudgetFile,
        state: BudgetState | None = None,
        *,
        clock: Callable[[], float] = time.time,
        prices: PriceBook | None = None,
    ) -> None:
        self.budget_file = budget_file
        self.state: BudgetState = state if state is not None else LocalBudgetState(budget_file, clock)
        self._prices = prices or default_price_book()
        self._scopes = [(spec, spec.scope.matchers()) for spec in budget_file.budgets]
        #: (provider, model, attribution) → the budgets matching such a call, and whether one is in USD
        self._matches: dict[tuple[str, str, Attribution], tuple[list[Budget], bool]] = {}
        self._tiers = dict(budget_file.tiers)
        self._default_output = budget_file.guard.default_output_tokens

    @classmethod
    def from_file(cls, path: str | Path) -> Guard:
        """A guard for the budget file at `path`; raises `BudgetFileError` listing every problem."""
        return cls(load_budget_file(path))

    # --- admission ------------------------------------------------------------------------------
    def admit(self, request: GuardRequest) -> Admission:
        """Decide and reserve; a deferral with a `defer_wait` blocks this thread up to that long."""
        if not self._matching(request.provider, request.model, request.attribution):
            return Admission(request.model)  # no budget covers this call: nothing to estimate
        estimate = estimate_tokens(request, self._default_output)
        admission, wait_s = self._attempt(request, estimate)
        if wait_s <= 0:
            return admission
        deadline = time.monotonic() + wait_s
        while isinstance(admission.refusal, BudgetDeferred):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.state.wait_for_change(min(admission.refusal.retry_after, remaining))
            admission = self._after_wait(admission, self._attempt(request, estimate)[0])
        return admission

    async def admit_async(self, request: GuardRequest) -> Admission:
        """`admit` for async callers: a deferred call waits without blocking the event loop."""
        if not self._matching(request.provider, request.model, request.attribution):
            return Admission(request.model)
        estimate = estimate_tokens(request, self._default_output)
        admission, wait_s = self._attempt(request, estimate)
        if wait_s <= 0:
            return admission
        deadline = time.monotonic() + wait_s
        while isinstance(admission.refusal, BudgetDeferred):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(admission.refusal.retry_after, remaining, _ASYNC_POLL_S))
            admission = self._after_wait(admission, self._attempt(request, estimate)[0])
        return admission

    @staticmethod
    def _after_wait(before: Admission, after: Admission) -> Admission:
        """A deferred call admitted after waiting says so on its span."""
        if after.refusal is None and before.refusal is not None:
            deferral = next(d for d in before.decisions if d.outcome == "deferred")
            after.decisions.insert(0, Decision("defer", "waited", deferral.pressure))
        return after

    def _attempt(self, request: GuardRequest, estimate: TokenCounts) -> tuple[Admission, float]:
        """One decision under the state's lock. The common case — the call fits every budget it
        matches — is reserved in one step; anything else goes to `_decide`."""
        claims = self._claims(request, request.model, estimate)
        attribution = request.attribution
        agent, task = attribution.agent or UNKNOWN, attribution.task or UNKNOWN
        with self.state.transaction() as view:
            reservation = view.try_reserve(claims, agent, task)
        if reservation is not None:
            return Admission(request.model, None, [], None, reservation, self.state), 0.0
        return self._decide(request, estimate, agent, task)

    def _decide(
        self, request: GuardRequest, estimate: TokenCounts, agent: str, task: str
    ) -> tuple[Admission, float]:
        """A call that does not fit: apply the actions; a downgrade re-evaluates the cheaper call."""
        model, tried = request.model, {request.model}
        relieved: set[str] = set()
        decisions: list[Decision] = []
        for _ in range(len(self._scopes) + 1):  # each budget can downgrade at most once
            claims = self._claims(request, model, estimate)
            if not claims:
                return self._admission(request, model, decisions), 0.0
            with self.state.transaction() as view:
                reservation = view.try_reserve(claims, agent, task)
                if reservation is not None:  # the cheaper call fits
                    return self._admitted(request, model, decisions, reservation), 0.0
                now = view.now
                pressures = [p for c in claims if (p := pressure_of(view, c, now)) is not None]
                outcome = resolve(pressures, model=model, tiers=self._tiers, relieved=relieved, tried=tried)
                if isinstance(outcome, Admit):  # over only budgets that warn (or already downgraded)
                    reservation = view.reserve(claims, agent, task)
                    return self._admitted(request, model, decisions + outcome.decisions, reservation), 0.0
            if isinstance(outcome, Refuse):
                admission = self._admission(request, model, decisions + outcome.decisions)
                admission.refusal = outcome.error
                return admission, outcome.wait_s
            assert isinstance(outcome, Reroute)
            decisions.append(outcome.decision)
            relieved.add(outcome.decision.pressure.budget.name)
            model = outcome.model
            tried.add(model)
        raise AssertionError("downgrades did not settle")  # unreachable: budgets are finite

    def _admitted(
        self, request: GuardRequest, model: str, decisions: list[Decision], reservation: Reservation
    ) -> Admission:
        admission = self._admission(request, model, decisions)
        admission.reservation, admission.state = reservation, self.state
        return admission

    @staticmethod
    def _admission(request: GuardRequest, model: str, decisions: list[Decision]) -> Admission:
        downgraded_from = request.model if model != request.model else None
        return Admission(model, downgraded_from, decisions)

    # --- what the call claims of each budget ------------------------------------------------------
    def _claims(self, request: GuardRequest, model: str, estimate: TokenCounts) -> list[Claim]:
        matching, priced = self._match(request.provider, model, request.attribution)
        cost = self._prices.cost_usd(request.provider, model, estimate) if priced else None
        return [self._claim(spec, request, estimate, cost) for spec in matching]

    def _matching(self, provider: str, model: str, attribution: Attribution) -> list[Budget]:
        return self._match(provider, model, attribution)[0]

    def _match(self, provider: str, model: str, attribution: Attribution) -> tuple[list[Budget], bool]:
        """The budgets whose scope matches a call, by the ledger's own matching, and whether any
        is in USD; remembered per (provider, model, attribution), which repeats call after call."""
        key = (provider, model, attribution)
        found = self._matches.get(key)
        if found is None:
            record = UsageRecord(provider=provider, request_model=model, attribution=attribution)
            labels = record_labels(record)
            matching = [spec for spec, matchers in self._scopes if scope_matches(matchers, labels)]
            found = (matching, any(spec.limit.usd is not None for spec in matching))
            if len(self._matches) >= _MAX_CACHED_MATCHES:
                self._matches.clear()
            self._matches[key] = found
        return found

    @staticmethod
    def _claim(spec: Budget, request: GuardRequest, estimate: TokenCounts, cost: float | None) -> Claim:
        amount = estimate_amount(spec, estimate, cost)
        task_id = request.attribution.task_id if spec.per_task_instance is not None else None
        if task_id is None:
            return Claim(spec, amount)
        tokens = amount if spec.limit.tokens is not None else float(estimate.input + estimate.output)
        return Claim(spec, amount, task_id, tokens)
