"""One LLM call, counted once, however many spans describe it.

Several spans can carry the usage of one call: our span and the anthropic SDK's own span nested
under it (we make ours current while the SDK runs), or two instrumentations of one SDK nested
either way. Rule: among usage spans linked parent↔child, count one — ours if present, else the
outermost. Children usually end, and are exported, before their parents, possibly in an earlier
batch, so:

- ours is counted at once; its span id and parent id are remembered (bounded LRUs keyed with the
  trace id), so a foreign usage span that is its child or its parent is a duplicate whenever it
  arrives;
- a foreign usage span with a parent is held for a short window and counted by `flush(now)`
  unless ours, or another usage span claiming it as child or parent, arrives first (the outer
  one wins);
- a foreign root span is counted at once.

Memory is bounded: past `max_held` a foreign span is counted at once rather than dropped (an
occasional double count beats a lost call). A span counted before its linked partner arrives
wins even over ours: totals stay exact, only the richer attribution is lost.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from otel_tokens.record import Attribution, UsageRecord

__all__ = ["DedupeConfig", "Deduper"]


@dataclass(frozen=True)
class DedupeConfig:
    """How long a foreign span waits for its duplicates and how much the deduper may remember."""

    hold_seconds: float = 2.0
    max_held_spans: int = 10_000
    max_remembered_spans: int = 100_000

    def validate(self) -> None:
        """Raise ValueError naming the first bad key, what was expected and what was given."""
        for key in ("max_held_spans", "max_remembered_spans"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        hold = self.hold_seconds
        if (
            isinstance(hold, bool)
            or not isinstance(hold, (int, float))
            or not math.isfinite(hold)
            or hold < 0
        ):
            raise ValueError(f"hold_seconds: expected a finite number >= 0, got {hold!r}")


class _RecentKeys(OrderedDict[int, None]):
    """A bounded set that forgets its oldest entries. An OrderedDict itself, not a wrapper, so `in`
    (several per record) stays a C call."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self._max = maxsize

    def add(self, key: int) -> None:
        self[key] = None
        if len(self) > self._max:
            self.popitem(last=False)


def _key(trace_id: int, span_id: int) -> int:
    """One int per (trace, span): cheaper to hash and store than a tuple."""
    return (trace_id << 64) | span_id


class Deduper:
    """Decides which usage records to count. Thread-safe; clock passed in by the caller."""

    def __init__(self, *, hold_seconds: float = 2.0, max_held: int = 10_000, max_remembered: int = 100_000):
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self._lock = threading.Lock()
        self._counted = _RecentKeys(max_remembered)  # span keys of counted spans
        self._counted_parents = _RecentKeys(max_remembered)  # parent keys of counted spans
        # held foreign spans in arrival (hence deadline) order: key → (record, deadline, parent key)
        self._held: OrderedDict[int, tuple[UsageRecord, float, int | None]] = OrderedDict()
        self._held_children: dict[int, list[int]] = {}  # parent key → held child keys
        self.duplicates_dropped = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def offer_many(self, records: Iterable[UsageRecord], now: float) -> tuple[list[UsageRecord], int]:
        """Records to count now (in order) and how many duplicates were dropped."""
        counted: list[UsageRecord] = []
        with self._lock:
            before = self.duplicates_dropped
            for record in records:
                if self._offer(record, now):
                    counted.append(record)
            return counted, self.duplicates_dropped - before

    def holds(self, record: UsageRecord) -> bool:
        """Whether this very record is held, waiting for its duplicates."""
        with self._lock:
            held = self._held.get(_key(record.trace_id, record.span_id))
            return held is not None and held[0] is record

    def amend_held(self, record: UsageRecord, attribution: Attribution) -> bool:
        """Give a record still held here a better attribution (an ancestor span named its agent);
        False when it was released or dropped already (too late: it was counted as it was)."""
        with self._lock:
            held = self._held.get(_key(record.trace_id, record.span_id))
            if held is None or held[0] is not record:
                return False
            record.attribution = attribution
            record.agent_from_resource = False
            return True

    def flush(self, now: float) -> list[UsageRecord]:
        """Held spans whose window has passed, to be counted now (nothing is dropped here)."""
        released: list[UsageRecord] = []
        with self._lock:
            while self._held:
                key, (record, deadline, _) = next(iter(self._held.items()))
                if deadline > now:
                    break
                self._pop_held(key)
                self._remember(key, record)
                released.append(record)
        return released

    # --- internals (lock held) -----------------------------------------------------------------
    def _offer(self, record: UsageRecord, now: float) -> bool:
        span_id = record.span_id
        if not span_id:
            return True  # no identity (a record built without a span): nothing to link it to
        trace_id = record.trace_id
        key = _key(trace_id, span_id)
        parent_span_id = record.parent_span_id
        parent = _key(trace_id, parent_span_id) if parent_span_id else None
        held = self._held
        if key in self._counted or key in held:  # the same span again (an exporter retry)
            return self._duplicate(1)
        if key in self._held_children:  # held children lose to this span: it is outer (or ours)
            self._duplicate(self._drop_held_children(key))
        if record.ours and parent is not None and parent in held:
            self._duplicate(self._pop_held(parent))  # a foreign outer span loses to ours
        if (parent is not None and parent in self._counted) or key in self._counted_parents:
            return self._duplicate(1)  # a linked span was already counted
        if not record.ours and parent is not None:
            if parent in held:
                return self._duplicate(1)  # the held outer span wins
            if self.hold_seconds > 0 and len(held) < self.max_held:
                self._hold(key, record, now + self.hold_seconds, parent)
                return False
        self._counted.add(key)  # == self._remember(key, record), inline on the hot path
        if parent is not None:
            self._counted_parents.add(parent)
        return True

    def _duplicate(self, n: int) -> bool:
        self.duplicates_dropped += n
        return False

    def _remember(self, key: int, record: UsageRecord) -> None:
        self._counted.add(key)
        if record.parent_span_id:
            self._counted_parents.add(_key(record.trace_id, record.parent_span_id))

    def _hold(self, key: int, record: UsageRecord, deadline: float, parent: int) -> None:
        self._held[key] = (record, deadline, parent)
        self._held_children.setdefault(parent, []).append(key)

    def _pop_held(self, key: int) -> int:
        """Forget a held span; returns 1 (for counting duplicates)."""
        _, _, parent = self._held.pop(key)
        if parent is not None:
            siblings = self._held_children.get(parent)
            if siblings is not None:
                siblings.remove(key)
                if not siblings:
                    del self._held_children[parent]
        return 1

    def _drop_held_children(self, key: int) -> int:
        children = self._held_children.get(key)
        if not children:
            return 0
        dropped = 0
        for child in list(children):
            dropped += self._pop_held(child)
        return dropped
