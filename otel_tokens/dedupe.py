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

Exactly once: an exporter re-sends a batch it got no answer for (backoff 1, 2, 4, ... s, for up to
its timeout), and a collector restarted from its data directory sees those resends too. So a
counted span is remembered for `window_seconds` (default 10 minutes, well past the exporters'
retry schedule) rather than for a number of spans: at a high ingest rate a count-bounded memory
forgot a span before its resend arrived. `max_remembered` still caps memory; a span it forgets
before its window has passed is counted in `evicted_early`, so an operator sees when the window
was not honoured. A span without a span id (some hand-written senders) is identified by its
content instead — trace id, times, model, tokens, cost, attribution — so its resend is dropped
too; records built in-process without a span keep the old rule (nothing to link them to).

`state()` / `restore()` copy everything out and back in, for the collector's durable store.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from otel_tokens.record import Attribution, UsageRecord

__all__ = ["DEFAULT_WINDOW_SECONDS", "DedupeConfig", "Deduper", "DeduperState"]

#: How long a counted span is remembered: the OTLP exporters retry for up to their timeout (10 s by
#: default, longer when configured) with backoff 1, 2, 4, ... s; ten minutes leaves a wide margin.
DEFAULT_WINDOW_SECONDS = 600.0


@dataclass(frozen=True)
class DedupeConfig:
    """How long a foreign span waits for its duplicates, how long and how many counted spans the
    deduper remembers (exactly once within `window_seconds`, memory capped by `max_remembered_spans`)."""

    hold_seconds: float = 2.0
    max_held_spans: int = 10_000
    #: Memory cap of the window (~150 bytes a span); at most this many spans are remembered.
    max_remembered_spans: int = 1_000_000
    #: A counted span is remembered this long, so an exporter's resend is dropped.
    window_seconds: float = DEFAULT_WINDOW_SECONDS

    def validate(self) -> None:
        """Raise ValueError naming the first bad key, what was expected and what was given."""
        for key in ("max_held_spans", "max_remembered_spans"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        for key, low in (("hold_seconds", "a finite number >= 0"), ("window_seconds", "a finite number > 0")):
            value = getattr(self, key)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            if bad or value < 0 or (key == "window_seconds" and value == 0):
                raise ValueError(f"{key}: expected {low}, got {value!r}")


#: Content keys live above every (trace << 64 | span) key, so the two kinds never collide.
_CONTENT_TAG = 1 << 192


class _RecentKeys(OrderedDict[int, float]):
    """Keys with the time they were counted, oldest first; forgets past a window or a size cap. An
    OrderedDict itself, not a wrapper, so `in` (several per record) stays a C call."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.max = maxsize
        self.evicted_early = 0  # forgotten by the size cap while still inside the window

    def add(self, key: int, now: float) -> None:
        if key in self:  # a parent seen again (siblings): keep the order by time for `expire`
            self.move_to_end(key)
        self[key] = now
        if len(self) > self.max:
            self.popitem(last=False)
            self.evicted_early += 1  # `expire(window start)` ran first: the oldest was still inside

    def expire(self, before: float) -> None:
        """Forget keys counted before `before` (the window's start)."""
        while self:
            key, at = next(iter(self.items()))
            if at >= before:
                return
            del self[key]


def _key(trace_id: int, span_id: int) -> int:
    """One int per (trace, span): cheaper to hash and store than a tuple."""
    return (trace_id << 64) | span_id


def content_key(record: UsageRecord) -> int:
    """A stable identity for a span without a span id: a digest of what tells one call from another
    (the same in every process, unlike `hash()`)."""
    t, a = record.tokens, record.attribution
    identity = (
        record.trace_id, record.parent_span_id, record.start_time_ns, record.end_time_ns,
        record.provider, record.request_model, record.response_model, record.operation,
        t.input, t.output, t.cache_read, t.cache_write, t.reasoning, record.estimated, record.cost_usd,
        a.items(), record.status, record.error_type, record.ours,
    )  # fmt: skip
    digest = hashlib.blake2b(repr(identity).encode(), digest_size=16).digest()
    return _CONTENT_TAG | int.from_bytes(digest, "big")


@dataclass
class DeduperState:
    """Everything a Deduper remembers, as plain values (see `Deduper.state`)."""

    counted: list[tuple[int, float]] = field(default_factory=list)  # (key, when), oldest first
    counted_parents: list[tuple[int, float]] = field(default_factory=list)
    #: (key, record, deadline, parent key), in arrival order
    held: list[tuple[int, UsageRecord, float, int | None]] = field(default_factory=list)
    duplicates_dropped: int = 0
    evicted_early: int = 0


class Deduper:
    """Decides which usage records to count. Thread-safe; clock passed in by the caller."""

    def __init__(
        self,
        *,
        hold_seconds: float = 2.0,
        max_held: int = 10_000,
        max_remembered: int = 1_000_000,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
    ):
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self.window_seconds = window_seconds
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

    @property
    def remembered(self) -> int:
        return len(self._counted)

    @property
    def evicted_early(self) -> int:
        """Spans forgotten by the size cap before their window passed (their resend would count)."""
        return self._counted.evicted_early

    def offer_many(
        self, records: Iterable[UsageRecord], now: float, *, by_content: bool = False
    ) -> tuple[list[UsageRecord], int]:
        """Records to count now (in order) and how many duplicates were dropped. `by_content`: the
        records came from spans, so one without a span id is identified by its content."""
        counted: list[UsageRecord] = []
        with self._lock:
            self._expire(now)
            before = self.duplicates_dropped
            for record in records:
                if self._offer(record, now, by_content):
                    counted.append(record)
            return counted, self.duplicates_dropped - before

    def holds(self, record: UsageRecord) -> bool:
        """Whether this very record is held, waiting for its duplicates."""
        with self._lock:
            held = self._held.get(_key(record.trace_id, record.span_id))
            return held is not None and held[0] is record

    def holding(self, records: Iterable[UsageRecord]) -> list[bool]:
        """`holds` of each record, under one acquisition of the lock."""
        with self._lock:
            get = self._held.get
            found = []
            for record in records:
                held = get(_key(record.trace_id, record.span_id))
                found.append(held is not None and held[0] is record)
            return found

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

    def state(self) -> DeduperState:
        """A copy of everything remembered (the durable store snapshots it)."""
        with self._lock:
            return DeduperState(
                counted=list(self._counted.items()),
                counted_parents=list(self._counted_parents.items()),
                held=[(k, r, d, p) for k, (r, d, p) in self._held.items()],
                duplicates_dropped=self.duplicates_dropped,
                evicted_early=self._counted.evicted_early,
            )

    def restore(self, state: DeduperState) -> None:
        """Replace what is remembered by `state` (from `state()`, possibly of an earlier process)."""
        with self._lock:
            self._counted.clear()
            self._counted.update(state.counted)
            self._counted.evicted_early = state.evicted_early
            self._counted_parents.clear()
            self._counted_parents.update(state.counted_parents)
            self._held.clear()
            self._held_children.clear()
            for key, record, deadline, parent in state.held:
                self._held[key] = (record, deadline, parent)
                if parent is not None:
                    self._held_children.setdefault(parent, []).append(key)
            self.duplicates_dropped = state.duplicates_dropped

    def flush(self, now: float) -> list[UsageRecord]:
        """Held spans whose window has passed, to be counted now (nothing is dropped here)."""
        with self._lock:
            if now != float("inf"):  # the final flush at shutdown keeps the memory for the snapshot
                self._expire(now)
            return self._release(now)

    # --- internals (lock held) -----------------------------------------------------------------
    def _release(self, now: float) -> list[UsageRecord]:
        """Pop the held spans due by `now` (the oldest first) and remember them as counted. Runs
        for every foreign span with a parent, so `_pop_held` and remembering are inline here: the
        oldest is popped (put back if not due yet), its parent key is the one stored with it, and
        `_RecentKeys.add`'s common case (a new key, memory not full) is a plain store."""
        released: list[UsageRecord] = []
        held, children = self._held, self._held_children
        counted, parents = self._counted, self._counted_parents
        popitem = held.popitem
        while held:
            key, entry = popitem(last=False)
            record, deadline, parent = entry
            if deadline > now:
                held[key] = entry  # not due: back to the front, where it was
                held.move_to_end(key, last=False)
                break
            if key in counted:
                counted.add(key, now)
            else:  # new: store, and at the size cap evict the oldest (the steady state of a busy collector)
                counted[key] = now
                if len(counted) > counted.max:
                    counted.popitem(last=False)
                    counted.evicted_early += 1
            if parent is not None:
                siblings = children.get(parent)
                if siblings is not None:
                    siblings.remove(key)
                    if not siblings:
                        del children[parent]
                if parent in parents:  # a sibling's parent: newest again (`add`'s known-key case)
                    parents.move_to_end(parent)
                    parents[parent] = now
                else:
                    parents[parent] = now
                    if len(parents) > parents.max:
                        parents.popitem(last=False)
                        parents.evicted_early += 1
            released.append(record)
        return released

    def _expire(self, now: float) -> None:
        """Forget spans counted before the window; called before every insertion, so whatever the
        size cap evicts afterwards was still inside its window (`evicted_early`)."""
        start = now - self.window_seconds
        self._counted.expire(start)
        self._counted_parents.expire(start)

    def _offer(self, record: UsageRecord, now: float, by_content: bool = False) -> bool:
        span_id = record.span_id
        trace_id = record.trace_id
        if span_id:
            key = _key(trace_id, span_id)
        elif by_content:
            key = content_key(record)
        else:
            return True  # no identity (a record built without a span): nothing to link it to
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
        # remembered as counted (as `_release` does), `_RecentKeys.add`'s common case inline (hot path)
        counted = self._counted
        if key in counted or len(counted) >= counted.max:
            counted.add(key, now)
        else:
            counted[key] = now
        if parent is not None:
            parents = self._counted_parents
            if parent in parents or len(parents) >= parents.max:
                parents.add(parent, now)
            else:
                parents[parent] = now
        return True

    def _duplicate(self, n: int) -> bool:
        self.duplicates_dropped += n
        return False

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
