"""`PrometheusBudgetState`: budgets read from a Prometheus-compatible query API (read-only).

For a fleet of collectors behind one OTLP endpoint, Prometheus (or any engine speaking its HTTP
query API) is the global view: this state reads every budget's use as the rendered rules do —
`sum by (budget) (llm_budget_used)` over all collectors — and the stop orders as the alerts that
act currently firing (`ALERTS{alertstate="firing", action=~"..."}`, every `mn.STOP_ACTIONS` value),
every `sync_interval_seconds`, in the background. A call never waits on the network.

Decisions combine that figure with this process's own use since it was read, and this process's
own calls in flight (a `LocalBudgetState` underneath, with the reported use of everyone else as
an external amount per budget). It is read-only: no reservations, so the overshoot bound across
processes is what the other processes send between their use reaching the collector and the next
read — export delay (the span exporter's batch, 5 s by default) plus Prometheus' scrape interval
plus `sync_interval_seconds` — on top of the estimates' own error. Where that is too loose, share
budgets through one collector (`CollectorBudgetState`), which reserves.

Unreachable: `on_unreachable: open` keeps deciding on the last figure plus own use (logged once
per outage); `closed` refuses covered calls with `CollectorUnavailable`.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from otel_tokens import metric_names as mn
from otel_tokens.budgets.spec import Budget, BudgetFile, GuardCollector
from otel_tokens.guard.collector_client import CollectorClient, CollectorError
from otel_tokens.guard.errors import CollectorUnavailable
from otel_tokens.guard.policy import scope_text
from otel_tokens.guard.state import (
    BudgetView,
    Claim,
    LocalBudgetState,
    Reservation,
    Standing,
    StateUnavailable,
)
from otel_tokens.guard.stops import KILL_AGENT_TASK, PAUSE_NONCRITICAL, StopOrder

__all__ = ["ALERTS_QUERY", "USED_QUERY", "PrometheusBudgetState"]

logger = logging.getLogger("otel_tokens.guard")

USED_QUERY = f"sum by ({mn.BUDGET}) ({mn.BUDGET_USED})"
ALERTS_QUERY = f'ALERTS{{alertstate="firing", {mn.ACTION}=~"{"|".join(mn.STOP_ACTIONS)}"}}'
_SCOPE_LABELS = (mn.AGENT, mn.TASK, mn.USER, mn.MODEL, mn.PROVIDER)


def _vector(answer: Any) -> list[dict[str, Any]]:
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise CollectorError(f"query failed: {str(answer)[:300]}")
    result = (answer.get("data") or {}).get("result")
    return [r for r in result if isinstance(r, dict)] if isinstance(result, list) else []


def _orders(series: list[dict[str, Any]]) -> tuple[StopOrder, ...]:
    orders: list[StopOrder] = []
    for item in series:
        labels = item.get("metric") or {}
        action, name = labels.get(mn.ACTION), str(labels.get("alertname", ""))
        if action == KILL_AGENT_TASK and labels.get(mn.TASK_ID):
            orders.append(StopOrder(KILL_AGENT_TASK, name, "", labels[mn.TASK_ID], {}, labels.get(mn.BUDGET)))
        elif action in mn.PAUSE_ACTIONS:
            scope = {k: str(labels[k]) for k in _SCOPE_LABELS if k in labels}
            orders.append(StopOrder(PAUSE_NONCRITICAL, name, "", None, scope, labels.get(mn.BUDGET)))
    return tuple(orders)


class PrometheusBudgetState(LocalBudgetState):
    """Own use + everyone's use as a Prometheus query API reports it. `close()` stops the poller."""

    def __init__(
        self,
        budget_file: BudgetFile,
        url: str,
        *,
        token: str | None = None,
        settings: GuardCollector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(budget_file, clock)
        self.settings = settings or budget_file.guard.collector
        self.url = url
        self._orders: tuple[StopOrder, ...] = ()
        self._down: str | None = None
        self._stop = threading.Event()
        self._client = CollectorClient(url, token, self.settings.timeout_seconds)
        self._poller = threading.Thread(target=self._poll, name="otel-tokens-guard-prometheus", daemon=True)
        self._poller.start()

    def stop_orders(self) -> Sequence[StopOrder]:
        return self._orders

    def transaction(self) -> AbstractContextManager[BudgetView]:
        if self._down is not None and self.settings.on_unreachable == "closed":
            return _Refusing(self)
        return super().transaction()

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=5)

    def sync(self) -> None:
        """Read everyone's use and the firing alerts now (the poller calls it)."""
        used = {
            str(r["metric"].get(mn.BUDGET)): float(r["value"][1])
            for r in _vector(self._query(USED_QUERY))
            if isinstance(r.get("metric"), dict) and isinstance(r.get("value"), list)
        }
        orders = _orders(_vector(self._query(ALERTS_QUERY)))
        with self._lock:
            now = self._clock()
            for name, account in self._accounts.items():
                if name in used:  # the reported figure already holds this process's older calls
                    account.external = used[name] - account.window.used(now)
        self._orders = orders

    def _query(self, query: str) -> Any:
        return self._client.request("GET", "/api/v1/query?" + urllib.parse.urlencode({"query": query}))

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                if self._down is not None:
                    logger.warning("otel-tokens guard: the query API at %s answers again", self.url)
                    self._down = None
            except CollectorError as exc:
                if self._down is None:
                    then = (
                        "deciding on its last figures plus this process's own calls (fail-open)"
                        if self.settings.on_unreachable == "open"
                        else "refusing every call a budget covers (fail-closed)"
                    )
                    logger.warning("otel-tokens guard: the query API at %s is unreachable (%s); %s",
                                   self.url, exc, then)  # fmt: skip
                self._down = str(exc)
            except Exception:
                logger.exception("otel-tokens guard: reading budgets from %s failed", self.url)
            self._stop.wait(self.settings.sync_interval_seconds)
        self._client.close()


class _Refusing:
    """The view while the source is down and the policy is fail-closed: every covered call refused
    (standings still read, for the error)."""

    def __init__(self, state: PrometheusBudgetState) -> None:
        self._state = state
        self._inner = LocalBudgetState.transaction(state)
        self._view: BudgetView | None = None

    def __enter__(self) -> _Refusing:
        self._view = self._inner.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._inner.__exit__(*exc_info)

    @property
    def now(self) -> float:
        assert self._view is not None
        return self._view.now

    def standing(self, claim: Claim) -> Standing:
        assert self._view is not None
        return self._view.standing(claim)

    def seconds_until_used_at_most(self, budget: Budget, target: float) -> float | None:
        assert self._view is not None
        return self._view.seconds_until_used_at_most(budget, target)

    def reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation:
        spec = claims[0].budget
        raise StateUnavailable(CollectorUnavailable(
            budget=spec.name, scope=scope_text(spec), window=spec.window, limit=spec.limit.amount,
            estimate=claims[0].amount, unit=spec.limit.unit, url=self._state.url,
            reason=self._state._down or "unreachable",
        ))  # fmt: skip

    def try_reserve(self, claims: Sequence[Claim], agent: str, task: str) -> Reservation | None:
        return self.reserve(claims, agent, task)
