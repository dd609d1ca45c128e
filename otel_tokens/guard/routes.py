"""Which budgets a call claims from, resolved once per kind of call.

A kind of call is its (provider, model, attribution). An agent makes the same kind of call over
and over, so the guard resolves each kind once: the budgets whose scope matches it (by the
ledger's own matching), whether one of them is in USD (the estimate then needs a price), what
each claims of an estimate, and — when the state offers one and nothing but the budgets' standing
can decide such a call — the state's fast `Lane` through those budgets' accounts.

A call takes the lane only when no `compress` budget matches (a rewrite needs the general path,
`Guard._prepare`) and, when it has a task instance or session the runaway detectors watch, no
budget has a per-task-instance limit (the lane holds no task instance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from otel_tokens.budgets.ledger import record_labels, scope_matches
from otel_tokens.budgets.spec import Budget
from otel_tokens.guard.estimate import AmountForm, amount_form
from otel_tokens.guard.runaway import keys_of
from otel_tokens.guard.state import Lane
from otel_tokens.record import Attribution, UsageRecord

__all__ = ["Route", "Routes"]

#: Distinct (provider, model, attribution) kinds of call remembered (attribution values come from
#: the agent's code, usually a handful; past this the table starts over).
MAX_ROUTES = 4096


@dataclass(frozen=True, slots=True)
class Route:
    """One kind of call: the budgets it matches and how it claims from them."""

    budgets: list[Budget]
    #: whether a budget is in USD: the estimate must be priced
    priced: bool
    #: per budget, what it claims of an estimate (`estimate.amount_form`)
    forms: list[AmountForm]
    #: the state's fast path through these budgets, when such a call may take it
    lane: Lane | None = None
    #: whether a budget has a per-task-instance limit (the instance runaway check needs claims)
    instances: bool = False
    #: the runaway detectors' keys for such a call (`runaway.keys_of`): its task instance, session
    keys: list[str] = field(default_factory=list)

    def amounts(self, input_tokens: int, output_tokens: int, cost_usd: float | None) -> list[float]:
        """Each budget's claim on an estimate of `input_tokens` + `output_tokens` (`estimate_amount`)."""
        usd = cost_usd or 0.0
        return [usd if in_usd else float(i * input_tokens + o * output_tokens) for i, o, in_usd in self.forms]


_NOWHERE = Route([], False, [])


class Routes:
    """The routes of one budget file over one state. Thread-safe: a route is immutable, and the
    table is a dict read and replaced in single steps (a duplicate resolve is harmless)."""

    def __init__(
        self,
        budgets: Sequence[Budget],
        lanes: Callable[[Sequence[Budget], list[AmountForm]], Lane | None] | None,
        *,
        max_routes: int = MAX_ROUTES,
    ) -> None:
        self._scopes = [(spec, spec.scope.matchers()) for spec in budgets]
        self._lanes = lanes
        self._max_routes = max_routes
        self._table: dict[tuple[str, str, Attribution], Route] = {}
        #: (attribution, model, provider, route) of the last route asked for: an agent's next call
        #: is almost always the same kind, and the same `Attribution` object (its scope's), which
        #: is cheaper to compare than to hash; a caller on the hot path compares it before `get`
        self.last: tuple[Attribution | None, str, str, Route] = (None, "", "", _NOWHERE)

    def get(self, provider: str, model: str, attribution: Attribution) -> Route:
        last = self.last
        if last[0] is attribution and last[1] == model and last[2] == provider:
            return last[3]
        key = (provider, model, attribution)
        route = self._table.get(key)
        if route is None:
            route = self._resolve(provider, model, attribution)
            if len(self._table) >= self._max_routes:
                self._table = {}
            self._table[key] = route
        self.last = (attribution, model, provider, route)
        return route

    def _resolve(self, provider: str, model: str, attribution: Attribution) -> Route:
        labels = record_labels(UsageRecord(provider=provider, request_model=model, attribution=attribution))
        budgets = [spec for spec, matchers in self._scopes if scope_matches(matchers, labels)]
        priced = any(spec.limit.usd is not None for spec in budgets)
        forms = [amount_form(spec) for spec in budgets]
        instances = any(spec.per_task_instance is not None for spec in budgets)
        keys = keys_of(attribution)
        compressing = any(spec.action == "compress" for spec in budgets)
        if not budgets or compressing or (keys and instances) or self._lanes is None:
            return Route(budgets, priced, forms, None, instances, keys)
        return Route(budgets, priced, forms, self._lanes(budgets, forms), instances, keys)
