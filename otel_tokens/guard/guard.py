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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from otel_tokens import semconv as sc
from otel_tokens.attribution import is_critical
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.budgets.spec import Budget, BudgetFile
from otel_tokens.guard.cache import ResponseCache
from otel_tokens.guard.compress import Summarizer, compress_messages
from otel_tokens.guard.errors import BudgetDeferred, BudgetExceeded, TaskStopped
from otel_tokens.guard.estimate import EMBEDDINGS, GuardRequest, estimate_tokens
from otel_tokens.guard.policy import Admit, Decision, Refuse, Reroute, compress_step, pressure_of, resolve
from otel_tokens.guard.routes import Route, Routes
from otel_tokens.guard.runaway import Finding, RunawayDetector, instance_finding, keys_of, request_fingerprint
from otel_tokens.guard.state import BudgetState, Claim, Lane, Reservation, StateUnavailable
from otel_tokens.guard.stops import StopDecision, find_stop
from otel_tokens.guard.wiring import default_state
from otel_tokens.metric_names import UNKNOWN
from otel_tokens.pricing import PriceBook, default_price_book
from otel_tokens.record import Attribution, TokenCounts, UsageRecord
from otel_tokens.tokencount import _count_messages, strict_count_message_tokens

__all__ = ["Admission", "Guard"]

#: `Admission.prompt` when the guard left the request's messages as they were.
UNCHANGED: Any = object()

#: How often an async deferred call looks again for room (a thread waits on a condition instead).
_ASYNC_POLL_S = 0.05


@dataclass(slots=True)
class Admission:
    """The guard's answer for one call; see the module docstring."""

    model: str
    downgraded_from: str | None = None
    decisions: list[Decision | StopDecision] = field(default_factory=list)
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
    #: the reservation of a call admitted on the state's fast lane instead (the lane and its
    #: hold); unless a usage-based runaway check (`after`) waits for the call's record, such an
    #: admission settles from the call's counts and cost alone (`settle_usage`)
    hold: tuple[Lane, list[float]] | None = None

    @property
    def needs_record(self) -> bool:
        """Whether settling needs the call's `UsageRecord` (else `settle_usage` will do, and the
        instrumentation need not build one)."""
        return self.hold is None or self.after is not None

    def settle_usage(self, tokens: TokenCounts, cost_usd: float | None) -> None:
        """`settle` from the call's counts and cost, when it needs no record (`needs_record`)."""
        if self.hold is not None:
            lane, amounts = self.hold
            lane.settle(amounts, tokens, cost_usd)

    def settle(self, record: UsageRecord | None) -> None:
        """Replace the reservation with the call's real use; safe to call more than once."""
        if self.hold is not None:
            lane, amounts = self.hold
            lane.settle(amounts, *((record.tokens, record.cost_usd) if record is not None else (None, None)))
        elif self.reservation is not None and self.state is not None:
            self.state.settle(self.reservation, record)
        if self.after is None:
            return
        after, self.after = self.after, None
        if after is not None and record is not None:
            self.late_findings = after(record)


class LaneAdmission(Admission):
    """The `Admission` of a call reserved on the state's fast lane: the model asked for, nothing
    to put on the span, a `hold` to settle. Built on every such call, so it sets only what varies;
    the other fields are the defaults, as class attributes (read-only on these)."""

    __slots__ = ()
    downgraded_from = None
    refusal = None
    reservation = None
    state = None
    prompt = UNCHANGED
    saved = None
    findings = ()
    late_findings = ()
    after = None
    needs_record = False

    def __init__(self, model: str, hold: tuple[Lane, list[float]]) -> None:
        self.model = model
        self.hold = hold
        self.decisions = []

    def settle_usage(self, tokens: TokenCounts, cost_usd: float | None) -> None:
        hold = self.hold  # set, always, on a lane admission
        hold[0].settle(hold[1], tokens, cost_usd)  # type: ignore[index]


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
        self.state: BudgetState = state if state is not None else default_state(budget_file, clock)
        self._critical_agents = frozenset(budget_file.guard.critical_agents)
        self._prices = prices or default_price_book()
        self._routes = Routes(budget_file.budgets, getattr(self.state, "lane", None))
        self._tiers = dict(budget_file.tiers)
        self._default_output = budget_file.guard.default_output_tokens

    @classmethod
    def from_file(cls, path: str | Path) -> Guard:
        """A guard for the budget file at `path`; raises `BudgetFileError` listing every problem."""
        return cls(load_budget_file(path))

    def close(self) -> None:
        """Stop the state's background work, if it has any (`CollectorBudgetState` syncs)."""
        close = getattr(self.state, "close", None)
        if callable(close):
            close()

    # --- admission ------------------------------------------------------------------------------
    def admit(self, request: GuardRequest) -> Admission:
        """Decide and reserve; a deferral with a `defer_wait` blocks this thread up to that long."""
        return self.admit_call(*request)

    def admit_call(
        self,
        provider: str,
        operation: str,
        model: str,
        attribution: Attribution,
        prompt: Any = None,
        system: Any = None,
        max_output_tokens: int | None = None,
    ) -> Admission:
        """`admit(GuardRequest(...))`, without building the request for the common call that the
        state's fast lane admits (the instrumentation's hook calls this, once per call; the route
        memo of `Routes.get` is inline)."""
        last = self._routes.last
        if last[0] is attribution and last[1] == model and last[2] == provider:
            route = last[3]
        else:
            route = self._routes.get(provider, model, attribution)
        seen: list[Finding] | None = None
        lane = route.lane
        if lane is not None and operation != EMBEDDINGS:
            if not route.keys:  # `_on_lane` for a call no runaway detector watches, inline
                output = max_output_tokens if max_output_tokens is not None else self._default_output
                if output < 0:
                    output = 0
                tokens = _count_messages(prompt, model, system)  # `strict_count_message_tokens`
                cost = (
                    self._prices.estimate_cost_usd(provider, model, tokens, output) if route.priced else None
                )
                amounts = lane.try_hold(tokens, output, cost)
                if amounts is not None:
                    return LaneAdmission(model, (lane, amounts))
            else:
                laned = self._on_lane(route, provider, model, prompt, system, max_output_tokens)
                if isinstance(laned, Admission):
                    return laned
                seen = laned
        request = GuardRequest(provider, operation, model, attribution, prompt, system, max_output_tokens)
        front = self._general_path(request, route, seen)
        if isinstance(front, Admission):
            return front
        request, estimate, prepared = front
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
        route = self._routes.get(request.provider, request.model, request.attribution)
        seen: list[Finding] | None = None
        if route.lane is not None and request.operation != EMBEDDINGS:
            laned = self._on_lane(
                route, request.provider, request.model, request.prompt, request.system,
                request.max_output_tokens,
            )  # fmt: skip
            if isinstance(laned, Admission):
                return laned
            seen = laned
        front = self._general_path(request, route, seen)
        if isinstance(front, Admission):
            return front
        request, estimate, prepared = front
        admission, wait_s = await self._attempt_async(request, estimate, prepared)
        if wait_s <= 0:
            return admission
        deadline = time.monotonic() + wait_s
        while isinstance(admission.refusal, BudgetDeferred):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(admission.refusal.retry_after, remaining, _ASYNC_POLL_S))
            admission = self._after_wait(
                admission, (await self._attempt_async(request, estimate, prepared))[0]
            )
        return admission

    def _general_path(
        self, request: GuardRequest, route: Route, seen: list[Finding] | None
    ) -> Admission | tuple[GuardRequest, TokenCounts, _Prepared | None]:
        """What the sync and async admissions share once the fast lane did not admit the call: an
        answer already (a stop order, no budget covering the call, a runaway or compress refusal),
        or the request and estimate to reserve, possibly rewritten (compressed) by `_prepare`."""
        ordered = self._stop_ordered(request)
        if ordered is not None:
            return ordered
        if not route.budgets:
            return Admission(request.model)  # no budget covers this call: nothing to estimate
        estimate = estimate_tokens(request, self._default_output)
        prepared = self._prepare(request, route.budgets, estimate, seen)
        if prepared is not None:
            if prepared.refusal is not None:
                return self._stopped(request, prepared)
            request, estimate = prepared.request, prepared.estimate
        return request, estimate, prepared

    def _on_lane(
        self, route: Route, provider: str, model: str, prompt: Any, system: Any, max_output_tokens: int | None
    ) -> Admission | list[Finding] | None:
        """The common call — nothing but its budgets' standing decides it (see `routes`) — on the
        state's fast lane: the runaway detectors asked first if they watch it (the same questions
        as `_runaway_before`, in the same order), then estimated (`estimate_tokens`, inline) and
        reserved in one step. The admission if it fits; else for the general path, what the
        repeat detector said (it counted the call: not to be counted again), or None if it was
        not asked (not watched, or the key is stopped)."""
        lane, keys = route.lane, route.keys
        if lane is None:
            return None
        seen: list[Finding] | None = None
        if keys:
            if self.runaway.stopped(keys) is not None:
                return None
            seen = self.runaway.before(keys, request_fingerprint(model, system, prompt))
            if seen:
                return seen
        output = max_output_tokens if max_output_tokens is not None else self._default_output
        if output < 0:
            output = 0
        tokens = strict_count_message_tokens(prompt, model, system=system)
        cost = self._prices.estimate_cost_usd(provider, model, tokens, output) if route.priced else None
        amounts = lane.try_hold(tokens, output, cost)
        if amounts is None:
            return seen
        if not keys:
            return LaneAdmission(model, (lane, amounts))
        admission = Admission(model, hold=(lane, amounts))
        admission.after = self._late_check(keys, route.budgets)  # the usage-based detectors
        return admission

    @staticmethod
    def _after_wait(before: Admission, after: Admission) -> Admission:
        """A deferred call admitted after waiting says so on its span."""
        if after.refusal is None and before.refusal is not None:
            deferral = next(
                d for d in before.decisions if isinstance(d, Decision) and d.outcome == "deferred"
            )
            after.decisions.insert(0, Decision("defer", "waited", deferral.pressure))
        return after

    def _stop_ordered(self, request: GuardRequest) -> Admission | None:
        """A refusal when a stop order (a firing alert, through the collector) covers this call."""
        orders = self.state.stop_orders()
        if not orders:
            return None
        order = find_stop(
            orders, request.attribution, model=request.model, provider=request.provider,
            critical=is_critical(), critical_agents=self._critical_agents,
        )  # fmt: skip
        if order is None:
            return None
        return Admission(request.model, None, [StopDecision(order)], order.error(request.attribution))

    async def _attempt_async(
        self, request: GuardRequest, estimate: TokenCounts, prepared: _Prepared | None
    ) -> tuple[Admission, float]:
        """`_attempt` without blocking the event loop when the state decides over the network
        (`CollectorBudgetState`: one round trip under its lock); in-process states stay inline."""
        if getattr(self.state, "decides_over_network", False):
            return await asyncio.to_thread(self._attempt, request, estimate, prepared)
        return self._attempt(request, estimate, prepared)

    def _attempt(
        self, request: GuardRequest, estimate: TokenCounts, prepared: _Prepared | None
    ) -> tuple[Admission, float]:
        """One decision under the state's lock. The common case — the call fits every budget it
        matches — is reserved in one step; anything else goes to `_decide`. A state that cannot
        answer and fails closed refuses (`StateUnavailable`)."""
        try:
            return self._attempt_once(request, estimate, prepared)
        except StateUnavailable as unavailable:
            return Admission(request.model, None, [], unavailable.refusal), 0.0

    def _attempt_once(
        self, request: GuardRequest, estimate: TokenCounts, prepared: _Prepared | None
    ) -> tuple[Admission, float]:
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
            budgets = self._routes.get(request.provider, request.model, request.attribution).budgets
            admission.after = self._late_check(prepared.keys, budgets)
        return prepared.apply(admission, request), 0.0

    def _decide(
        self, request: GuardRequest, estimate: TokenCounts, agent: str, task: str, relieved: set[str]
    ) -> tuple[Admission, float]:
        """A call that does not fit: apply the actions; a downgrade re-evaluates the cheaper call."""
        model, tried = request.model, {request.model}
        decisions: list[Decision] = []
        for _ in range(len(self.budget_file.budgets) + 1):  # each budget can downgrade at most once
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
                saved = float(estimate.input + estimate.output)  # the call is not sent (yet)
                refused = [replace(d, tokens_saved=saved) for d in outcome.decisions]
                admission = self._admission(request, model, decisions + refused)
                admission.refusal = outcome.error
                return admission, outcome.wait_s
            assert isinstance(outcome, Reroute)
            saving = self._saved_by(request, model, outcome.model, estimate)
            decisions.append(replace(outcome.decision, tokens_saved=saving))
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
        return Admission(model, downgraded_from, list(decisions))

    def _saved_by(self, request: GuardRequest, model: str, cheaper: str, estimate: TokenCounts) -> float:
        """A downgrade's saving in tokens of the model asked for: the estimate times the share of
        its price the cheaper model saves (0 when either model is unpriced: no claim of a saving)."""
        before = self._prices.cost_usd(request.provider, model, estimate)
        after = self._prices.cost_usd(request.provider, cheaper, estimate)
        if not before or after is None:
            return 0.0
        return float(estimate.input + estimate.output) * max(0.0, 1.0 - after / before)

    # --- the response cache ---------------------------------------------------------------------------
    def cache_key(
        self, request: GuardRequest, endpoint: str, arguments: dict[str, Any]
    ) -> tuple[str, str | None] | None:
        """(key, budget) when this call may be answered from the response cache: it is on for every
        call, or for a budget covering this one (named, for the saved-tokens count); else None."""
        cache = self.response_cache
        if cache is None:
            return None
        matching = self._routes.get(request.provider, request.model, request.attribution).budgets
        budget = next((spec.name for spec in matching if spec.cache_responses), None)
        if budget is None and not cache.settings.enabled:
            return None
        key = cache.key(request.provider, endpoint, arguments)
        return None if key is None else (key, budget)

    # --- before the decision: runaways and compression ----------------------------------------------
    def _prepare(
        self,
        request: GuardRequest,
        matching: list[Budget],
        estimate: TokenCounts,
        seen: list[Finding] | None = None,
    ) -> _Prepared | None:
        """The checks that come before reserving: runaway stops, then a `compress` rewrite. None
        (the common case, kept cheap) when the call has no task instance or session to watch and
        no `compress` budget exists. `seen`: the repeat detector already counted this call (on
        the way to the fast lane) and said this."""
        attribution = request.attribution
        if not (attribution.task_id or attribution.session or self._compressing):
            return None
        keys = keys_of(attribution)
        prepared = _Prepared(request, estimate, [], keys=keys)
        if keys:
            self._runaway_before(prepared, matching, seen)
            if prepared.refusal is not None:
                return prepared
        if any(spec.action == "compress" for spec in matching):
            self._compress(prepared)
        return prepared

    def _runaway_before(
        self, prepared: _Prepared, matching: list[Budget], seen: list[Finding] | None = None
    ) -> None:
        request, keys = prepared.request, prepared.keys
        if seen is None:  # not counted yet (a key found stopped on the way is counted here)
            stop = self.runaway.stopped(keys)
            if stop is not None:  # stopped earlier: every later call of the key is refused
                prepared.refusal = TaskStopped(
                    key=stop.key, reason=stop.kind, detail=stop.detail, budget=stop.budget
                )
                detail = f"stopped earlier: {stop.detail}"
                prepared.findings = [Finding(sc.RUNAWAY_STOPPED, stop.key, 0, 0, detail, stop.budget, True)]
                return
            seen = self.runaway.before(
                keys, request_fingerprint(request.model, request.system, request.prompt)
            )
        findings = seen + self._instance_findings(prepared)
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
        request = prepared.request
        if not self._routes.get(request.provider, request.model, request.attribution).instances:
            return []  # no budget has a per-instance limit: nothing to claim
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

    def _late_check(self, keys: list[str], matching: list[Budget]) -> Callable[[UsageRecord], list[Finding]]:
        """The usage-based detectors for this call, run when it settles; a finding under a budget
        (of `matching`) with `on_runaway: stop` stops the key for its next call."""
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
        route = self._routes.get(request.provider, model, request.attribution)
        cost = None
        if route.priced:
            cost = self._prices.estimate_cost_usd(request.provider, model, estimate.input, estimate.output)
        amounts = route.amounts(estimate.input, estimate.output, cost)
        return [
            self._claim(spec, request, estimate, amount)
            for spec, amount in zip(route.budgets, amounts)  # noqa: B905 (equal by construction)
        ]

    @staticmethod
    def _claim(spec: Budget, request: GuardRequest, estimate: TokenCounts, amount: float) -> Claim:
        task_id = request.attribution.task_id if spec.per_task_instance is not None else None
        if task_id is None:
            return Claim(spec, amount)
        tokens = amount if spec.limit.tokens is not None else float(estimate.input + estimate.output)
        return Claim(spec, amount, task_id, tokens)
