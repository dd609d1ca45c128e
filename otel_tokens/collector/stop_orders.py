"""Stop orders: firing alerts, received on Alertmanager's webhook, that guards obey.

Alertmanager posts its standard webhook JSON (`version: "4"`) to `POST /api/v1/alerts`. An alert
becomes an order by its `action` label, which `otel-tokens render` puts on the rules:

- `kill_agent_task` (on `RunawayTask`, which carries `task_id`): that task instance's next call
  raises `otel_tokens.TaskStopped`; other instances of the same task keep running;
- `pause_all_noncritical_agents` (on `BudgetExceeded` of a budget with `pause_noncritical: true`;
  the older label value `pause_noncritical` is accepted as the same): an order of kind
  `pause_noncritical` — every call in the budget's scope (the alert's agent/task/user/model/
  provider labels; none: everyone) from an agent not marked critical raises `TaskStopped`.

A resolved alert lifts its order (matched by Alertmanager's fingerprint, or by the alert's labels
when a sender leaves it out). Orders travel with the budget status (`GET /api/v1/budgets`).

With a data dir (`--data-dir`, the durable store) every change of the book is written to the
store before the webhook is answered, and a restarted collector starts with the orders in force;
without one they live in memory, and Alertmanager re-sends firing alerts every `repeat_interval`
(5m on the rendered collector route). The book is bounded; the webhook body is size-limited.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from otel_tokens import metric_names as mn

__all__ = [
    "KILL_AGENT_TASK",
    "MAX_ALERTS_PER_POST",
    "PAUSE_ACTIONS",
    "PAUSE_NONCRITICAL",
    "StopOrder",
    "StopOrderBook",
    "WebhookError",
]

KILL_AGENT_TASK = mn.KILL_AGENT_TASK
PAUSE_NONCRITICAL = mn.PAUSE_NONCRITICAL
#: Accepted spellings of the pause action: `pause_all_noncritical_agents`, which the rendered rules
#: carry (issue 6's name), and `pause_noncritical`, which rules rendered before it carried.
PAUSE_ACTIONS = frozenset(mn.PAUSE_ACTIONS)
#: Labels of an alert that narrow whom a pause applies to (the budget's scope keys).
SCOPE_LABELS = (mn.AGENT, mn.TASK, mn.USER, mn.MODEL, mn.PROVIDER)
MAX_ALERTS_PER_POST = 1000
MAX_ORDERS = 10_000


class WebhookError(ValueError):
    """The body is not Alertmanager's webhook JSON; the message says what is wrong."""


class _Alert(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""
    fingerprint: str = ""


class _Webhook(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str = "4"
    alerts: list[_Alert] = Field(max_length=MAX_ALERTS_PER_POST)


@dataclass(frozen=True)
class StopOrder:
    """One order as guards read it (the JSON of `GET /api/v1/budgets`' `stop_orders`)."""

    kind: Literal["kill_agent_task", "pause_noncritical"]
    alert: str
    since: str
    task_id: str | None = None
    scope: dict[str, str] = field(default_factory=dict)
    budget: str | None = None
    summary: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _order(alert: _Alert) -> StopOrder | None:
    labels = alert.labels
    action = labels.get(mn.ACTION, "")
    name, since = labels.get("alertname", ""), alert.startsAt
    budget, summary = labels.get(mn.BUDGET), alert.annotations.get("summary", "")[:1000]
    if action == KILL_AGENT_TASK and labels.get(mn.TASK_ID):
        return StopOrder("kill_agent_task", name, since, labels[mn.TASK_ID], {}, budget, summary)
    if action in PAUSE_ACTIONS:
        scope = {k: labels[k] for k in SCOPE_LABELS if k in labels}
        return StopOrder("pause_noncritical", name, since, None, scope, budget, summary)
    return None


def _key(alert: _Alert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    text = "\x00".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StopOrderBook:
    """The orders in force, by alert. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: dict[str, StopOrder] = {}
        #: called with `state()` after every change (the durable store's writer), under the lock so
        #: the last state written is the last state
        self.persist: Callable[[str], None] | None = None

    def state(self) -> str:
        """The orders as JSON text, for the store."""
        with self._lock:
            return self._state()

    def _state(self) -> str:
        return json.dumps({key: o.as_json() for key, o in sorted(self._orders.items())}, sort_keys=True)

    def restore(self, text: str) -> int:
        """Take back what `state()` wrote; returns how many orders are in force."""
        kept = json.loads(text)
        with self._lock:
            self._orders = {str(key): StopOrder(**value) for key, value in kept.items()}
            return len(self._orders)

    def apply(self, payload: Mapping[str, Any]) -> dict[str, int]:
        """Take one webhook body: firing alerts with an action add orders, resolved ones lift
        them. Returns counts (`placed`, `lifted`, `ignored`); raises `WebhookError`."""
        try:
            hook = _Webhook.model_validate(payload)
        except ValidationError as exc:
            raise WebhookError(f"not an Alertmanager webhook body: {exc.errors()[0]['msg']} at "
                               f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])}") from None  # fmt: skip
        counts = {"placed": 0, "lifted": 0, "ignored": 0}
        with self._lock:
            for alert in hook.alerts:
                order = _order(alert)
                if order is None:
                    counts["ignored"] += 1
                elif alert.status == "resolved":
                    counts["lifted"] += self._orders.pop(_key(alert), None) is not None
                elif len(self._orders) < MAX_ORDERS or _key(alert) in self._orders:
                    self._orders[_key(alert)] = order
                    counts["placed"] += 1
                else:
                    counts["ignored"] += 1
            if self.persist is not None and (counts["placed"] or counts["lifted"]):
                self.persist(self._state())
        return counts

    def orders(self) -> list[StopOrder]:
        with self._lock:
            return sorted(self._orders.values(), key=lambda o: (o.kind, o.task_id or "", o.alert))
