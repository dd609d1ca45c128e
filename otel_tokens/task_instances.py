"""Running totals per task instance, bounded: the one table both the aggregator and the ledger keep.

A task instance id is unbounded (one per run), so it never becomes a label of the main metrics. The
aggregator keeps each instance's totals until its task span says it completed (then observes them
into the task histograms); the budget ledger keeps them per budget so the runaway rule can name the
looping instance (`llm_task_instance_tokens` for the top few). Both need the same thing: totals by
instance id, least recently active forgotten first when more than `max_tracked` are active, and,
for the ledger, instances idle for `idle_seconds` forgotten (their run is over).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["TaskInstanceTable", "TaskTotals"]


@dataclass(slots=True)
class TaskTotals:
    """Running totals of one task instance (plain data: what a snapshot copies)."""

    task_id: str
    agent: str | None
    task: str | None
    tokens: float = 0.0
    cost_usd: float = 0.0
    last_seen: float = 0.0
    #: tokens by model (a task may call several): the task histograms label it with the main one
    by_model: dict[str, float] = field(default_factory=dict)

    def main_model(self) -> str | None:
        """The model that did most of the work (most tokens; ties by name), None without calls."""
        if not self.by_model:
            return None
        return min(self.by_model.items(), key=lambda item: (-item[1], item[0]))[0]


class TaskInstanceTable:
    """task_id → TaskTotals, least recently active first. Not locked: the owner locks."""

    __slots__ = ("_items", "idle_seconds", "max_tracked")

    def __init__(self, *, max_tracked: int, idle_seconds: float = 0.0) -> None:
        self.max_tracked = max_tracked
        #: 0: never forget an instance for being idle (only for the count limit)
        self.idle_seconds = idle_seconds
        self._items: OrderedDict[str, TaskTotals] = OrderedDict()

    def add(
        self,
        task_id: str,
        agent: str | None,
        task: str | None,
        tokens: float,
        cost_usd: float,
        now: float,
        model: str | None = None,
    ) -> None:
        """Add one call's tokens and cost to its instance (created on its first call). An instance
        idle for `idle_seconds` is over, whether or not a read forgot it yet: a call after that
        starts a new one (so when reads happen never changes the totals)."""
        if self.idle_seconds > 0:
            self.expire(now)
        items = self._items
        totals = items.get(task_id)
        if totals is None:
            totals = items[task_id] = TaskTotals(task_id, agent, task)
            if len(items) > self.max_tracked:
                items.popitem(last=False)  # the least recently active: never a running loop
        else:
            items.move_to_end(task_id)
        totals.tokens += tokens
        totals.cost_usd += cost_usd
        totals.last_seen = now
        if model is not None:
            totals.by_model[model] = totals.by_model.get(model, 0.0) + tokens
        if self.idle_seconds > 0:
            self.expire(now)

    def get(self, task_id: str, now: float) -> TaskTotals | None:
        """One active instance's totals (None when unknown or forgotten), without touching its
        recency: the budget guard reads before it reserves."""
        self.expire(now)
        return self._items.get(task_id)

    def pop(self, task_id: str) -> TaskTotals | None:
        """Forget an instance (it completed) and return its totals, if it was known."""
        return self._items.pop(task_id, None)

    def top(self, n: int, now: float) -> list[TaskTotals]:
        """The `n` largest active instances by tokens, largest first (ties by id)."""
        self.expire(now)
        return sorted(self._items.values(), key=lambda t: (-t.tokens, t.task_id))[:n]

    def expire(self, now: float) -> None:
        """Forget instances idle for `idle_seconds` or longer (none when it is 0)."""
        if self.idle_seconds <= 0:
            return
        items = self._items
        while items:
            oldest = next(iter(items.values()))
            if now - oldest.last_seen < self.idle_seconds:
                break
            items.popitem(last=False)

    def state(self) -> list[list[object]]:
        """(task_id, agent, task, tokens, cost_usd, last_seen, by_model), least recently active first."""
        return [
            [t.task_id, t.agent, t.task, t.tokens, t.cost_usd, t.last_seen, dict(t.by_model)]
            for t in self._items.values()
        ]

    def restore(self, state: list[list[object]]) -> None:
        """Take back `state()` (entries kept before `by_model` existed have none)."""
        self._items = OrderedDict((str(t[0]), TaskTotals(*t)) for t in state)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._items)
