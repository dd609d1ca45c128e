"""The guard around one call: estimate → match budgets → decide and reserve → (send) → settle.

`Guard.admit()` runs before the request is sent and answers with an `Admission`: the model to send
(a `downgrade` may have changed it), the decisions to put on the span, and either a reservation
(send, then `Admission.settle(record)` with what the call really used — or `None` to release it
when the call failed without usage) or a refusal (raise it; nothing was reserved).

Before that decision the call is prepared (`_prepare`): the runaway detectors that can judge a
request before it is sent run (a stopped task instance or session is refused with `TaskStopped`),
and a `compress` budget at a pressure point shrinks the messages (`Admission.prompt`). The
usage-based detectors run when the call settles (`Admission.late_findings`).

The instrumentation calls it from its one pre-send hook (`LLMCall.admit`); the guard itself knows
nothing of SDKs or spans.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel_tokens import semconv as sc
from otel_tokens.budgets.ledger import record_labels, scope_matches
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.budgets.spec import Budget, BudgetFile
from otel_tokens.guard.cache import ResponseCache
from otel_tokens.guard.compress import Summarizer, compress_messages
from otel_tokens.guard.errors import BudgetDeferred, BudgetExceeded, TaskStopped
from otel_tokens.guard.estimate import GuardRequest, estimate_amount, estimate_tokens
from otel_tokens.guard.policy import Admit, Decision, Refuse, Reroute, compress_step, pressure_of, resolve
from otel_tokens.guard.runaway import Finding, RunawayDetector, instance_finding, keys_of, request_fingerprint
from otel_tokens.guard.state import BudgetState, Claim, LocalBudgetState, Reservation
from otel_tokens.metric_names import UNKNOWN
from otel_tokens.pricing import PriceBook, default_price_book
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

__all__ = ["Admission", "Guard"]

#: `Admission.prompt` when the guard left the request's messages as they were.
UNCHANGED: Any = object()

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
    refusal: BudgetExceeded | TaskStopped | None = None
    reservation: Reservation | None = None
    state: BudgetState | None = None
    #: the messages / input to send instead (a `compress` rewrite), else UNCHANGED
    prompt: Any = UNCHANGED
    #: (budget, tokens) a compress rewrite saved
    saved: tuple[str, int] | None = None
    #: runaway detectors that fired before sending, and (after `settle`) on the usage
    findings: Sequence[Finding] = ()
    late_findings: Sequence[Finding] = ()
    #: the usage-based runaway check, run once on `settle`
    after: Callable[[UsageRecord], list[Finding]] | None = None

    def settle(self, record: UsageRecord | None) -> None:
        """Replace the reservation with the call's real use; safe to call more than once."""
        if self.reservation is not None and self.state is not None:
            self.state.settle(self.reservation, record)
        after, self.after = self.after, None
        if after is not None and record is not None:
            self.late_findings = after(record)


@dataclass(slots=True)
class _Prepared:
    """A call after the checks that come before the decision: maybe shrunk, maybe refused."""

    request: GuardRequest
    estimate: TokenCounts
    findings: list[Finding]
    refusal: TaskStopped | None = None
    compressed: Decision | None = None
    saved: tuple[str, int] | None = None
    keys: list[str] = field(default_factory=list)

    def apply(self, admission: Admission, original: GuardRequest) -> Admission:
        admission.findings = self.findings
        if self.compressed is not None:
            admission.decisions.insert(0, self.compressed)
            admission.prompt, admission.saved = self.request.prompt, self.saved
        return admission


class Guard:
    """Enforces one budget file's actions on the calls of this process."""

    def __init__(
        self,
        budget_file: BudgetFile,
        state: BudgetState | None = None,
        *,
        clock: Callable[[], float] = time.time,
        prices: PriceBook | None = None,
        summarizer: Summarizer | None = None,
    ) -> None:
        self.budget_file = budget_file
        #: older turns → summary text, for `compress` (`otel_tokens.instrument(summarizer=...)`)
        self.summarizer = summarizer
        self.runaway = RunawayDetector(budget_file.guard.runaway)
        self._compressing = any(spec.action == "compress" for spec in budget_file.budgets)
        settings = budget_file.guard.cache
        caching = settings.enabled or any(spec.cache_responses for spec in budget_file.budgets)
        #: the response cache, when the file turns it on (globally or for some budget)
        self.response_cache = ResponseCache(settings) if caching else None
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
        matching = self._matching(request.provider, request.model, request.attribution)
        if not matching:
            return Admission(request.model)  # no budget covers this call: nothing to estimate
        estimate = estimate_tokens(request, self._default_output)
        prepared = self._prepare(request, matching, estimate)
        if prepared is not None:
            if prepared.refusal is not None:
                return self._stopped(request, prepared)
            request, estimate = prepared.request, prepared.estimate
        admission, wait_s = self._attempt(request, estimate, prepared)
        if wait_s <= 0:
            return admission
        deadline = time.monotonic() + wait_s
        while isinstance(admission.refusal, BudgetDeferred):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.state.wait_for_change(min(admission.refusal.retry_after, remaining))
            admission = self._after_wait(admission, self._attempt(request, estimate, prepared)[0])
        return admission

    async def admit_async(self, request: GuardRequest) -> Admission:
        """`admit` for async callers: a deferred call waits without blocking the event loop."""
        matching = self._matching(request.provider, request.model, request.attribution)
        if not matching:
            return Admission(request.model)
        estimate = estimate_tokens(request, self._default_output)
        prepared = self._prepare(request, matching, estimate)
        if prepared is not None:
            if prepared.refusal is not None:
                return self._stopped(request, prepared)
            request, estimate = prepared.request, prepared.estimate
        admission, wait_s = self._attempt(request, estimate, prepared)
        if wait_s <= 0:
            return admission
        deadline = time.monotonic() + wait_s
        while isinstance(admission.refusal, BudgetDeferred):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(admission.refusal.retry_after, remaining, _ASYNC_POLL_S))
            admission = self._after_wait(admission, self._attempt(request, estimate, prepared)[0])
        return admission

    @staticmethod
    def _after_wait(before: Admission, after: Admission) -> Admission:
        """A deferred call admitted after waiting says so on its span."""
        if after.refusal is None and before.refusal is not None:
            deferral = next(d for d in before.decisions if d.outcome == "deferred")
            after.decisions.insert(0, Decision("defer", "waited", deferral.pressure))
        return after

    def _attempt(
        self, request: GuardRequest, estimate: TokenCounts, prepared: _Prepared | None
    ) -> tuple[Admission, float]:
        """One decision under the state's lock. The common case — the call fits every budget it
        matches — is reserved in one step; anything else goes to `_decide`."""
        claims = self._claims(request, request.model, estimate)
        attribution = request.attribution
        agent, task = attribution.agent or UNKNOWN, attribution.task or UNKNOWN
        with self.state.transaction() as view:
            reservation = view.try_reserve(claims, agent, task)
        if reservation is not None:
            admission = Admission(request.model, None, [], None, reservation, self.state)
            if prepared is None:  # the common case: nothing prepared, the call fits
                return admission, 0.0
        elif prepared is None:
            return self._decide(request, estimate, agent, task, set())
        else:
            shrunk = prepared.compressed is not None and prepared.compressed.outcome == "compressed"
            relieved = {prepared.compressed.pressure.budget.name} if shrunk and prepared.compressed else set()
            admission, wait_s = self._decide(request, estimate, agent, task, relieved)
            if wait_s > 0:
                return prepared.apply(admission, request), wait_s
        if prepared.keys and admission.refusal is None:
            admission.after = self._late_check(prepared.keys, request)
        return prepared.apply(admission, request), 0.0

    def _decide(
        self, request: GuardRequest, estimate: TokenCounts, agent: str, task: str, relieved: set[str]
    ) -> tuple[Admission, float]:
        """A call that does not fit: apply the actions; a downgrade re-evaluates the cheaper call."""
        model, tried = request.model, {request.model}
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

    # --- the response cache ---------------------------------------------------------------------------
    def cache_key(
        self, request: GuardRequest, endpoint: str, arguments: dict[str, Any]
    ) -> tuple[str, str | None] | None:
        """(key, budget) when this call may be answered from the response cache: it is on for every
        call, or for a budget covering this one (named, for the saved-tokens count); else None."""
        cache = self.response_cache
        if cache is None:
            return None
        matching = self._matching(request.provider, request.model, request.attribution)
        budget = next((spec.name for spec in matching if spec.cache_responses), None)
        if budget is None and not cache.settings.enabled:
            return None
        key = cache.key(request.provider, endpoint, arguments)
        return None if key is None else (key, budget)

    # --- before the decision: runaways and compression ----------------------------------------------
    def _prepare(
        self, request: GuardRequest, matching: list[Budget], estimate: TokenCounts
    ) -> _Prepared | None:
        """The checks that come before reserving: runaway stops, then a `compress` rewrite. None
        (the common case, kept cheap) when the call has no task instance or session to watch and
        no `compress` budget exists."""
        attribution = request.attribution
        if not (attribution.task_id or attribution.session or self._compressing):
            return None
        keys = keys_of(attribution)
        prepared = _Prepared(request, estimate, [], keys=keys)
        if keys:
            self._runaway_before(prepared, matching)
            if prepared.refusal is not None:
                return prepared
        if any(spec.action == "compress" for spec in matching):
            self._compress(prepared)
        return prepared

    def _runaway_before(self, prepared: _Prepared, matching: list[Budget]) -> None:
        request, keys = prepared.request, prepared.keys
        stop = self.runaway.stopped(keys)
        if stop is not None:  # stopped earlier: every later call of the key is refused
            prepared.refusal = TaskStopped(
                key=stop.key, reason=stop.kind, detail=stop.detail, budget=stop.budget
            )
            detail = f"stopped earlier: {stop.detail}"
            prepared.findings = [Finding(sc.RUNAWAY_STOPPED, stop.key, 0, 0, detail, stop.budget, True)]
            return
        fingerprint = request_fingerprint(request.model, request.system, request.prompt)
        findings = self.runaway.before(keys, fingerprint) + self._instance_findings(prepared)
        stopper = next((spec.name for spec in matching if spec.on_runaway == "stop"), None)
        for i, finding in enumerate(findings):
            budget = finding.budget if finding.budget is not None else stopper
            says_stop = budget is not None and self.budget_file.budget(budget).on_runaway == "stop"
            if says_stop and prepared.refusal is None:
                findings[i] = finding = Finding(
                    finding.kind, finding.key, finding.value, finding.threshold, finding.detail, budget, True
                )
                self.runaway.stop(finding)
                prepared.refusal = TaskStopped(
                    key=finding.key, reason=finding.kind, detail=finding.detail, budget=budget
                )
        prepared.findings = findings

    def _instance_findings(self, prepared: _Prepared) -> list[Finding]:
        """A task instance this call would take past `runaway_factor` x its per-instance limit."""
        claims = [
            c for c in self._claims(prepared.request, prepared.request.model, prepared.estimate) if c.task_id
        ]
        if not claims:
            return []
        findings = []
        with self.state.transaction() as view:
            for claim in claims:
                instance = claim.budget.per_task_instance
                assert instance is not None  # a claim has a task_id only for such budgets
                standing = view.standing(claim)
                used = standing.instance_used + standing.instance_reserved
                key = f"task_id={claim.task_id}"
                found = instance_finding(
                    key,
                    claim.budget.name,
                    used,
                    claim.instance_tokens,
                    instance.tokens,
                    instance.runaway_factor,
                )
                if found is not None:
                    findings.append(found)
        return findings

    def _late_check(self, keys: list[str], request: GuardRequest) -> Callable[[UsageRecord], list[Finding]]:
        """The usage-based detectors for this call, run when it settles; a finding under a budget
        with `on_runaway: stop` stops the key for its next call."""
        matching = self._matching(request.provider, request.model, request.attribution)
        stopper = next((spec.name for spec in matching if spec.on_runaway == "stop"), None)

        def check(record: UsageRecord) -> list[Finding]:
            findings = self.runaway.after(keys, record)
            if stopper is None:
                return findings
            stopped = [
                Finding(f.kind, f.key, f.value, f.threshold, f.detail, stopper, True) for f in findings
            ]
            for finding in stopped:
                self.runaway.stop(finding)
            return stopped

        return check

    def _compress(self, prepared: _Prepared) -> None:
        """Shrink the messages when a `compress` budget is at a pressure point; the shrunk call is
        estimated again, and that estimate is what is reserved."""
        request, estimate = prepared.request, prepared.estimate
        claims = self._claims(request, request.model, estimate)
        with self.state.transaction() as view:
            step = compress_step(view, claims, view.now)
        if step is None:
            return
        target = step.target_tokens(estimate.input)
        result = compress_messages(
            request.prompt, model=request.model, target_tokens=target, keep_last=step.settings.keep_last,
            system=request.system, summarizer=self.summarizer, anthropic=request.provider == "anthropic",
        )  # fmt: skip
        before, after = estimate.input, estimate.input - (result.tokens_before - result.tokens_after)
        if result.changed:
            prepared.request = request._replace(prompt=result.prompt)
            prepared.estimate = estimate_tokens(prepared.request, self._default_output)
            after = prepared.estimate.input
            prepared.saved = (step.pressure.budget.name, max(before - after, 0))
        outcome = "compressed" if result.changed else "not_compressible"
        prepared.compressed = Decision(
            "compress", outcome, step.pressure, compress=(step.level, before, after, target)
        )

    @staticmethod
    def _stopped(request: GuardRequest, prepared: _Prepared) -> Admission:
        admission = Admission(request.model, refusal=prepared.refusal)
        admission.findings = prepared.findings
        return admission

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
