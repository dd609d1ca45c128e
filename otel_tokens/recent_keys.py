"""The dedupe memory's building block: keys with the time they were counted, oldest first.

An LRU by time (a key seen again moves to the end) that forgets past a window (`expire`) or a size
cap (`add`: the oldest goes, counted in `evicted_early` because the window had not passed). `add_many`
does what `add` of each key in order does, with bulk dict operations when that provably ends the
same (order, evictions, `evicted_early`), which is what a batch of new keys usually allows.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice, repeat

__all__ = ["RecentKeys"]


class RecentKeys(OrderedDict[int, float]):
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

    def add_many(self, keys: list[int], now: float, *, new: bool = False, distinct: bool = False) -> None:
        """`add` of each key in order, with the same outcome (order, evictions, `evicted_early`)
        computed by C-level bulk operations when that is provably the same; per key otherwise.
        `new`: the caller knows the keys are distinct and none is remembered yet; `distinct`: only
        that they are distinct."""
        if len(self) > self.max:  # over the cap already (a restored larger memory): per key
            for key in keys:
                self.add(key, now)
            return
        if new:
            ordered, known = keys, set()
        else:  # `add` moves a key seen again to the end: they end up ordered by their last occurrence
            unique = distinct or len(set(keys)) == len(keys)
            ordered = keys if unique else list(dict.fromkeys(reversed(keys)))[::-1]
            known = self.keys() & ordered  # each moves to the end instead of growing the memory
        evict = len(self) + len(ordered) - len(known) - self.max
        # each insert past the cap pops the front; a key this batch adds again, popped before it
        # comes again (then inserted anew, popping another one): only per key is exact then
        if evict > 0 and (
            (known and not known.isdisjoint(islice(self, evict)))
            or (ordered is not keys and evict > len(self) - len(known))
        ):
            for key in keys:
                self.add(key, now)
            return
        for key in known:
            del self[key]
        self.update(zip(ordered, repeat(now)))
        if evict > 0:  # the front: the oldest untouched keys, then (a batch past the cap) its first
            for key in list(islice(self, evict)):
                del self[key]
            self.evicted_early += evict

    def expire(self, before: float) -> None:
        """Forget keys counted before `before` (the window's start)."""
        while self:
            key, at = next(iter(self.items()))
            if at >= before:
                return
            del self[key]
