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

A batch is decided at once (set and dict operations in C, `_offer_batch`, `_release`) when a cheap
check proves the rules above, applied span by span, would end the same way — no span of the batch
meets another or anything remembered; otherwise span by span. Either way the outcome, down to the
memory's order (what is evicted next) and `evicted_early`, is the same (tests/test_batch_paths.py).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress, islice, repeat
from operator import attrgetter, itemgetter

from otel_tokens.recent_keys import RecentKeys as _RecentKeys
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


_SPAN_MASK = (1 << 64) - 1
#: a held entry's (record, deadline, parent key) parts
_RECORD, _PARENT = itemgetter(0), itemgetter(2)
_SPAN_ID = attrgetter("span_id")

#: Content keys live above every (trace << 64 | span) key, so the two kinds never collide.
_CONTENT_TAG = 1 << 192


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
        #: no held span's deadline is later (while any is held): past it, `_release` takes them all
        self._latest_deadline = -math.inf
        self.duplicates_dropped = 0
        #: Whole-batch paths (`_offer_batch`, `_release`) where they provably give what the
        #: per-record rules give; False runs only the per-record rules (the tests compare the two).
        self.batch_paths = True

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
        self,
        records: Iterable[UsageRecord],
        now: float,
        *,
        by_content: bool = False,
        keys: tuple[list[int], list[int]] | None = None,
    ) -> tuple[list[UsageRecord], int]:
        """Records to count now (in order) and how many duplicates were dropped. `by_content`: the
        records came from spans, so one without a span id is identified by its content. `keys`:
        each record's span key and parent key (`ancestry.span_key`, span id 0 for a root's
        parent), when the caller has them already."""
        counted: list[UsageRecord] = []
        records = records if isinstance(records, list) else list(records)
        with self._lock:
            self._expire(now)
            if self.batch_paths:
                at_once = self._offer_batch(records, now, keys)
                if at_once is not None:
                    return at_once, 0
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

    def holding(self, records: Iterable[UsageRecord], keys: list[int] | None = None) -> list[bool]:
        """`holds` of each record, under one acquisition of the lock (`keys`: their span keys)."""
        with self._lock:
            get = self._held.get
            if keys is None:
                return [
                    (held := get((r.trace_id << 64) | r.span_id)) is not None and held[0] is r
                    for r in records
                ]  # `_key`, inline (per record)
            return [(held := get(k)) is not None and held[0] is r for k, r in zip(keys, records, strict=True)]

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
            self._latest_deadline = -math.inf
            for key, record, deadline, parent in state.held:
                self._held[key] = (record, deadline, parent)
                self._latest_deadline = max(self._latest_deadline, deadline)
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
        """Pop the held spans due by `now` (the oldest first) and remember them as counted."""
        counted, parents = self._counted, self._counted_parents
        if not self.batch_paths or len(counted) > counted.max or len(parents) > parents.max:
            return self._release_each(now)  # (a restored memory above the cap: the per-span rule)
        held = self._held
        if not held:
            return []
        if self._latest_deadline <= now:  # all due (the common case: a flush past every deadline)
            keys, entries = list(held), list(held.values())
        else:
            due = 0  # the held spans are in arrival order: the due ones are a prefix
            for _, deadline, _ in held.values():
                if deadline > now:
                    break
                due += 1
            if not due:
                return []
            keys, entries = list(islice(held, due)), list(islice(held.values(), due))
        return self._release_entries(keys, entries, now)

    def _release_entries(
        self, keys: list[int], entries: list[tuple[UsageRecord, float, int | None]], now: float
    ) -> list[UsageRecord]:
        """`_release_each` of these entries, the oldest held ones, in bulk: the same memory order."""
        held, children = self._held, self._held_children
        if len(entries) == len(held):
            held.clear()
            children.clear()
            self._latest_deadline = -math.inf
        else:
            popitem = held.popitem
            for _ in entries:
                popitem(False)
        parents = [parent for parent in map(_PARENT, entries) if parent is not None]
        if children:
            # each parent's child list is in arrival order too: its released children are a prefix
            for parent, n in Counter(parents).items():
                siblings = children.get(parent)
                if siblings is not None:
                    del siblings[:n]
                    if not siblings:
                        del children[parent]
        self._counted.add_many(keys, now, distinct=True)
        if parents:
            self._counted_parents.add_many(parents, now)
        return list(map(_RECORD, entries))

    def _release_each(self, now: float) -> list[UsageRecord]:
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
        if not held:
            self._latest_deadline = -math.inf
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
        if deadline > self._latest_deadline:
            self._latest_deadline = deadline

    def _offer_batch(
        self, records: list[UsageRecord], now: float, linked_keys: tuple[list[int], list[int]] | None = None
    ) -> list[UsageRecord] | None:
        """`_offer` of each record, in bulk, when no record can meet another or anything remembered:
        every key new and distinct, no key another's parent, nothing held or counted under a parent.
        Then each foreign record with a parent is held (while there is room, in order), every other
        one counted, and nothing is a duplicate. None when that is not proven: the caller goes per
        record. (A record without a span id, identified by content or by nothing, goes per record.)"""
        if not all(map(_SPAN_ID, records)):
            return None
        if linked_keys is None:
            keys = [(r.trace_id << 64) | r.span_id for r in records]  # `_key`, inline (per record)
            parents = [(r.trace_id << 64) | r.parent_span_id if r.parent_span_id else None for r in records]
        else:  # a root's parent key has span id 0: here None
            keys, parents = linked_keys[0], [p if p & _SPAN_MASK else None for p in linked_keys[1]]
        key_set = set(keys)
        if len(key_set) != len(keys):
            return None
        parent_set = set(parents)
        parent_set.discard(None)
        counted, held = self._counted, self._held
        linked = key_set | parent_set
        if (
            len(linked) != len(key_set) + len(parent_set)  # a key is a parent within the batch
            or not counted.keys().isdisjoint(linked)
            or not held.keys().isdisjoint(linked)
            or not self._held_children.keys().isdisjoint(key_set)
            or not self._counted_parents.keys().isdisjoint(key_set)
        ):
            return None
        room = self.max_held - len(held) if self.hold_seconds > 0 else 0
        hold = (
            [not r.ours and p is not None for r, p in zip(records, parents, strict=True)] if room > 0 else []
        )
        n_hold = sum(hold)
        if not n_hold:  # nothing to hold: every record counted, as it is
            self._remember(keys, parents, now)
            return records
        if n_hold == len(records) and n_hold <= room:  # every one held (foreign spans under a parent)
            self._hold_many(keys, records, parents, now)
            return []
        if n_hold > room:  # only the first `room` are held, the rest counted at once
            taken = 0
            for i, wants in enumerate(hold):
                if wants:
                    taken += 1
                    hold[i] = taken <= room
        self._hold_many(
            list(compress(keys, hold)), list(compress(records, hold)), list(compress(parents, hold)), now
        )
        if all(hold):
            return []
        rest = [not h for h in hold]
        self._remember(list(compress(keys, rest)), list(compress(parents, rest)), now)
        return list(compress(records, rest))

    def _remember(self, keys: list[int], parents: list[int | None], now: float) -> None:
        """Counted spans' keys and parent keys remembered, in order (as `_offer` does one by one)."""
        self._counted.add_many(keys, now, new=True)
        linked = [p for p in parents if p is not None]
        if linked:
            self._counted_parents.add_many(linked, now)

    def _hold_many(
        self, keys: list[int], records: list[UsageRecord], parents: list[int | None], now: float
    ) -> None:
        """`_hold` of each (new, distinct) key in order."""
        deadline = now + self.hold_seconds
        self._held.update(zip(keys, zip(records, repeat(deadline), parents), strict=True))
        if deadline > self._latest_deadline:
            self._latest_deadline = deadline
        children = self._held_children
        get = children.get
        for key, parent in zip(keys, parents, strict=True):
            siblings = get(parent)  # type: ignore[arg-type]  # held spans have a parent
            if siblings is None:
                children[parent] = [key]  # type: ignore[index]
            else:
                siblings.append(key)

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
