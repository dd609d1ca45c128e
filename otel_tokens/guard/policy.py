"""What the guard does about the budgets a call would pass: the actions of `budgets.yaml`.

Pure: given the pressures (the budgets this call would push past their limit, with the numbers),
`resolve` answers with one outcome, in this order:

1. rewrite the request so it may fit — `compress` (shrink the messages; `compress_step` decides
   it before the limit is reached, at the budget's moderate and aggressive pressure points, and the
   guard estimates and evaluates the shrunk call) and `downgrade` (send a cheaper model; the guard
   then re-evaluates the rewritten call);
2. refuse — `block` (`BudgetExceeded`) before `defer` (`BudgetDeferred`, with `retry_after`);
3. go on — `warn`, a `downgrade` or `compress` already applied (or with nothing left to apply).

Every pressure becomes a `Decision`, which the instrumentation writes as a span event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from otel_tokens import semconv as sc
from otel_tokens.budgets.spec import Budget, CompressLevel, parse_duration
from otel_tokens.guard.errors import BudgetDeferred, BudgetExceeded
from otel_tokens.guard.state import BudgetView, Claim

__all__ = [
    "Admit",
    "CompressStep",
    "Decision",
    "Pressure",
    "Refuse",
    "Reroute",
    "compress_step",
    "pressure_of",
    "resolve",
]

#: `retry_after` when the window itself has room and only calls in flight hold it: they settle
#: within a call's latency, usually below their estimates.
IN_FLIGHT_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Pressure:
    """One budget (or one task instance of it) this call would push past its limit."""

    budget: Budget
    scope: str
    used: float
    reserved: float
    limit: float
    estimate: float
    unit: str
    window: str
    now: float
    room_in: float | None  # seconds until the call fits if nothing else is sent; None: never

    def exceeded(self, retry_after: float | None = None) -> BudgetExceeded:
        """The error to raise: `BudgetDeferred` when a `retry_after` is given."""
        resets_at = None
        if self.room_in is not None:
            # to the millisecond: `now + (end - now)` must read as the period's end, not 1 µs after
            resets_at = datetime.fromtimestamp(round(self.now + self.room_in, 3), timezone.utc)
        name, scope, window, unit = self.budget.name, self.scope, self.window, self.unit
        used, reserved, limit, estimate = self.used, self.reserved, self.limit, self.estimate
        if retry_after is not None:
            return BudgetDeferred(
                retry_after=retry_after, budget=name, scope=scope, used=used, reserved=reserved,
                limit=limit, window=window, resets_at=resets_at, estimate=estimate, unit=unit,
            )  # fmt: skip
        return BudgetExceeded(
            budget=name, scope=scope, used=used, reserved=reserved, limit=limit, window=window,
            resets_at=resets_at, estimate=estimate, unit=unit,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decision:
    """One guard decision about one budget: a span event with the numbers."""

    action: str
    outcome: str  # blocked, deferred, waited, downgraded, warned, over_limit
    pressure: Pressure
    retry_after: float | None = None
    model: str | None = None
    #: a `compress` rewrite: (level, input tokens before, after, target)
    compress: tuple[str, int, int, int] | None = None

    def attributes(self) -> dict[str, str | float]:
        p = self.pressure
        attributes: dict[str, str | float] = {
            sc.OTEL_TOKENS_GUARD_ACTION: self.action, sc.OTEL_TOKENS_GUARD_OUTCOME: self.outcome,
            sc.OTEL_TOKENS_GUARD_BUDGET: p.budget.name, sc.OTEL_TOKENS_GUARD_SCOPE: p.scope,
            sc.OTEL_TOKENS_GUARD_UNIT: p.unit, sc.OTEL_TOKENS_GUARD_WINDOW: p.window,
            sc.OTEL_TOKENS_GUARD_USED: p.used, sc.OTEL_TOKENS_GUARD_RESERVED: p.reserved,
            sc.OTEL_TOKENS_GUARD_LIMIT: p.limit, sc.OTEL_TOKENS_GUARD_ESTIMATE: p.estimate,
        }  # fmt: skip
        if self.retry_after is not None:
            attributes[sc.OTEL_TOKENS_GUARD_RETRY_AFTER] = self.retry_after
        if self.model is not None:
            attributes[sc.OTEL_TOKENS_GUARD_MODEL] = self.model
        if self.compress is not None:
            level, before, after, target = self.compress
            attributes[sc.OTEL_TOKENS_GUARD_COMPRESS_LEVEL] = level
            attributes[sc.OTEL_TOKENS_GUARD_COMPRESS_TOKENS_BEFORE] = before
            attributes[sc.OTEL_TOKENS_GUARD_COMPRESS_TOKENS_AFTER] = after
            attributes[sc.OTEL_TOKENS_GUARD_COMPRESS_TARGET] = target
        return attributes


@dataclass(frozen=True, slots=True)
class Admit:
    """Send the call (reserving its claims); `decisions` are the warnings that go with it."""

    decisions: list[Decision] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not send; raise `error`. `wait_s` > 0: a deferral that may wait that long for room."""

    error: BudgetExceeded
    decisions: list[Decision]
    wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Reroute:
    """Re-evaluate the call with `model` instead (the downgrade of `decision`)."""

    model: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class CompressStep:
    """Shrink the request at `level` ("moderate" or "aggressive") for the budget under `pressure`."""

    level: str
    settings: CompressLevel
    pressure: Pressure

    def target_tokens(self, input_tokens: int) -> int:
        """The input tokens to shrink a request of `input_tokens` to."""
        target = int(input_tokens * self.settings.target_ratio)
        if self.settings.target_tokens is not None:
            target = min(target, self.settings.target_tokens)
        return max(target, 1)


def compress_step(view: BudgetView, claims: list[Claim], now: float) -> CompressStep | None:
    """The strongest compression the `compress` budgets among `claims` ask for: a budget (or its
    task instance) that this call brings to a pressure point's `at` x limit. None: no rewrite."""
    best: CompressStep | None = None
    for claim in claims:
        spec = claim.budget
        if spec.action != "compress":
            continue
        standing = view.standing(claim)
        limit = spec.limit.amount
        ratio = (standing.used + standing.reserved + claim.amount) / limit
        instance = spec.per_task_instance
        if instance is not None and claim.task_id is not None:
            held = standing.instance_used + standing.instance_reserved + claim.instance_tokens
            ratio = max(ratio, held / instance.tokens)
        for level, settings in (
            ("aggressive", spec.compress.aggressive),
            ("moderate", spec.compress.moderate),
        ):
            if ratio >= settings.at:
                pressure = Pressure(
                    spec, scope_text(spec), standing.used, standing.reserved, limit, claim.amount,
                    spec.limit.unit, spec.window, now, None,
                )  # fmt: skip
                if best is None or settings.target_ratio < best.settings.target_ratio:
                    best = CompressStep(level, settings, pressure)
                break
    return best


def scope_text(spec: Budget) -> str:
    matchers = spec.scope.matchers()
    return ",".join(f"{k}={v}" for k, v in matchers.items()) or "global"


def pressure_of(view: BudgetView, claim: Claim, now: float) -> Pressure | None:
    """The pressure `claim` puts on its budget's window or task instance, or None if it fits."""
    spec = claim.budget
    standing = view.standing(claim)
    limit = spec.limit.amount
    if standing.used + standing.reserved + claim.amount > limit:
        room_in = _room_in(view, spec, limit, standing.reserved, claim.amount)
        return Pressure(
            spec, scope_text(spec), standing.used, standing.reserved, limit, claim.amount,
            spec.limit.unit, spec.window, now, room_in,
        )  # fmt: skip
    instance = spec.per_task_instance
    if instance is None or claim.task_id is None:
        return None
    if standing.instance_used + standing.instance_reserved + claim.instance_tokens > instance.tokens:
        return Pressure(
            spec, f"task_id={claim.task_id}", standing.instance_used, standing.instance_reserved,
            float(instance.tokens), claim.instance_tokens, "tokens", "task instance", now, None,
        )  # fmt: skip
    return None


def _room_in(view: BudgetView, spec: Budget, limit: float, reserved: float, amount: float) -> float | None:
    if amount > limit:
        return None  # the call alone is larger than the whole budget
    wait = view.seconds_until_used_at_most(spec, limit - reserved - amount)
    if wait is not None:
        return wait
    # Only calls in flight stand in the way once the window has aged: when that is, and a short
    # retry for the in-flight calls to settle.
    wait = view.seconds_until_used_at_most(spec, limit - amount)
    return None if wait is None else max(wait, IN_FLIGHT_RETRY_S)


def resolve(
    pressures: list[Pressure], *, model: str, tiers: dict[str, str], relieved: set[str], tried: set[str]
) -> Admit | Refuse | Reroute:
    """The outcome for a call under `pressures`. `relieved`: budgets whose downgrade was already
    applied to this call; `tried`: models this call was already evaluated with."""
    for p in pressures:
        if p.budget.action == "downgrade" and p.budget.name not in relieved:
            target = tiers.get(model) or p.budget.downgrade_to
            if target is not None and target not in tried:
                return Reroute(target, Decision("downgrade", "downgraded", p, model=target))
    blocks = [p for p in pressures if p.budget.action == "block"]
    defers = [p for p in pressures if p.budget.action == "defer"]
    never = [p for p in defers if p.room_in is None]  # deferring cannot help: refuse as a block
    if blocks or never:
        p = (blocks or never)[0]
        return Refuse(p.exceeded(), [Decision(p.budget.action, "blocked", p)])
    if defers:
        p = max(defers, key=lambda d: d.room_in or 0.0)
        retry_after = p.room_in or 0.0
        error = p.exceeded(retry_after)
        wait_s = min(parse_duration(d.budget.defer_wait or "0s") for d in defers)
        return Refuse(error, [Decision("defer", "deferred", p, retry_after=retry_after)], wait_s)
    return Admit([_going_on(p, relieved) for p in pressures])


def _going_on(p: Pressure, relieved: set[str]) -> Decision:
    action = p.budget.action
    if action == "warn":
        outcome = "warned"
    elif action == "downgrade":
        outcome = "over_limit_after_downgrade" if p.budget.name in relieved else "no_cheaper_model"
    else:  # `compress`: the shrunk call (or one with nothing left to shrink) still passes the limit
        outcome = "over_limit_after_compress" if p.budget.name in relieved else "not_compressible"
    return Decision(action, outcome, p)
