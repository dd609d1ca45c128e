"""Bounded per-task-instance token totals, so the runaway rule can name the looping instance.

A task instance id is unbounded (one per run), so it never becomes a label of the main metrics.
Here it does, but only for the `top_n` biggest instances still active: an instance idle for
`idle_seconds` is forgotten (its run is over), and at most `max_tracked` are remembered at all —
on overflow the least recently active one goes first, which is never a running loop.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["InstanceTable"]


@dataclass
class _Instance:
    agent: str
    task: str
    tokens: float
    last_seen: float


class InstanceTable:
    """task_id → running token total, least recently active first. Not locked: the ledger locks."""

    def __init__(self, *, top_n: int = 20, idle_seconds: float = 3600.0, max_tracked: int = 10_000) -> None:
        self.top_n = top_n
        self.idle_seconds = idle_seconds
        self.max_tracked = max(max_tracked, top_n)
        self._items: OrderedDict[str, _Instance] = OrderedDict()

    def add(self, task_id: str, agent: str, task: str, tokens: float, now: float) -> None:
        item = self._items.pop(task_id, None)
        if item is None:
            item = _Instance(agent, task, 0.0, now)
        item.tokens += tokens
        item.last_seen = now
        self._items[task_id] = item  # most recently active last
        self._expire(now)
        while len(self._items) > self.max_tracked:
            self._items.popitem(last=False)

    def tokens_of(self, task_id: str, now: float) -> float:
        """The running total of one instance (0 when unknown or forgotten after idling)."""
        self._expire(now)
        item = self._items.get(task_id)
        return item.tokens if item is not None else 0.0

    def top(self, now: float) -> list[tuple[str, str, str, float]]:
        """(task_id, agent, task, tokens) of the largest active instances, largest first."""
        self._expire(now)
        ranked = sorted(self._items.items(), key=lambda kv: (-kv[1].tokens, kv[0]))[: self.top_n]
        return [(task_id, i.agent, i.task, i.tokens) for task_id, i in ranked]

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self, now: float) -> None:
        while self._items:
            oldest = next(iter(self._items.values()))
            if now - oldest.last_seen < self.idle_seconds:
                break
            self._items.popitem(last=False)
