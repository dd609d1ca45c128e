"""One keyed family of series: label values → a value, bounded (the spanmetrics connector's shape).

Every bounded metric family of the aggregator is one of these (`get_or_create(key)` and the caller
adds to the value), so the series limit, the single `__overflow__` series, the overflow count, the
admission of budgeted names and the expiry of idle series are written once, here. No lock and no
exposition: the owner locks, the exposition reads copies.

At most `limit` keys; a record for a new key beyond them goes to the one overflow key (every
label `__overflow__`), and `overflowed` counts such records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from otel_tokens.metric_names import OVERFLOW

__all__ = ["Key", "KeyedFamily", "Timestamped"]

Key = tuple[str, ...]


class Timestamped(Protocol):
    """A family's value: it carries when it was last updated (set by `get_or_create`)."""

    last_seen: float


V = TypeVar("V", bound=Timestamped)


class KeyedFamily(Generic[V]):
    """label values → value, bounded. Not thread-safe: the owner holds its lock around every call.

    The state is plain data (`entries`, `overflowed`) so an owner can copy or persist it.
    """

    __slots__ = ("_limit", "_new", "entries", "overflow_key", "overflowed")

    def __init__(self, new: Callable[[], V], *, width: int, limit: int) -> None:
        self._new = new
        self._limit = limit
        self.overflow_key: Key = (OVERFLOW,) * width
        self.entries: dict[Key, V] = {}
        #: records sent to the overflow key because the family was full
        self.overflowed = 0

    def get_or_create(self, key: Key, now: float) -> V:
        """The value of `key` (or of the overflow key, when the family is full), marked as seen."""
        entry = self.entries.get(key)
        if entry is None:
            key = self._admit(key)
            entry = self.entries.get(key)
            if entry is None:
                entry = self.entries[key] = self._new()
        entry.last_seen = now
        return entry

    def _admit(self, key: Key) -> Key:
        """`key` if it may have a series of its own, else the overflow key (counted)."""
        if len(self.entries) - (self.overflow_key in self.entries) < self._limit:
            return key
        self.overflowed += 1
        return self.overflow_key
