"""One keyed family of series: label values → a value, bounded (the spanmetrics connector's shape).

Every bounded metric family of the aggregator is one of these (`get_or_create(key)` and the caller
adds to the value), so the series limit, the single `__overflow__` series, the overflow count, the
admission of budgeted names and the expiry of idle series are written once, here. No lock and no
exposition: the owner locks, the exposition reads copies.

- **Limit and overflow.** At most `limit` ordinary keys; a record for a new key beyond them goes
  to the one overflow key (every label `__overflow__`), and `overflowed` counts such records.
- **Budgeted names are always admitted.** Label values named by a budget's scope (`reserve()`)
  get a key of their own even when the ordinary keys are all taken (say by a cardinality attack of
  fake agents), from a separate quota of `admitted_limit` keys — separate, so that a sender
  spoofing a budgeted agent with endless task names cannot grow memory without bound either.
- **Idle series expire.** With `idle_seconds` > 0, a key not updated for that long is dropped (its
  series disappears from /metrics, the Prometheus exporter convention) so newcomers are not starved
  by series nobody updates. If it comes back it starts again from 0, which Prometheus' `rate()` and
  `increase()` read as a counter reset. Expired keys are swept when a new key finds the family
  full (at most every `idle_seconds / 8`), and by `expire()` before every snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from otel_tokens.metric_names import OVERFLOW

__all__ = ["Key", "KeyedFamily", "Timestamped"]

Key = tuple[str, ...]


class Timestamped(Protocol):
    """A family's value: it carries when it was last updated (set by `get_or_create`)."""

    last_seen: float


V = TypeVar("V", bound=Timestamped)


class KeyedFamily(Generic[V]):
    """label values → value, bounded. Not thread-safe: the owner holds its lock around every call.

    The state is plain data (`entries`, `admitted`, `overflowed`) so an owner can copy or persist it.
    """

    __slots__ = (
        "_admitted_limit",
        "_idle_seconds",
        "_limit",
        "_new",
        "_next_sweep",
        "_reserved",
        "admitted",
        "entries",
        "overflow_key",
        "overflowed",
    )

    def __init__(
        self,
        new: Callable[[], V],
        *,
        width: int,
        limit: int,
        admitted_limit: int = 0,
        idle_seconds: float = 0.0,
    ) -> None:
        self._new = new
        self._limit = limit
        self._admitted_limit = admitted_limit
        self._idle_seconds = idle_seconds
        self._next_sweep = float("-inf")
        #: per label position, the values always admitted (names from budgets.yaml)
        self._reserved: tuple[frozenset[str], ...] = (frozenset(),) * width
        self.overflow_key: Key = (OVERFLOW,) * width
        self.entries: dict[Key, V] = {}
        #: keys holding an admitted (budgeted) slot beyond the limit
        self.admitted: set[Key] = set()
        #: records sent to the overflow key because the family was full
        self.overflowed = 0

    def get_or_create(self, key: Key, now: float) -> V:
        """The value of `key` (or of the overflow key, when the family is full), marked as seen."""
        entry = self.entries.get(key)
        if entry is None:
            key = self._admit(key, now)
            entry = self.entries.get(key)
            if entry is None:
                entry = self.entries[key] = self._new()
        entry.last_seen = now
        return entry

    def reserve(self, values_by_position: Sequence[Iterable[str]]) -> None:
        """Always admit keys holding one of these values at that label position (adds to earlier
        reservations)."""
        self._reserved = tuple(
            old | frozenset(new) for old, new in zip(self._reserved, values_by_position, strict=True)
        )

    def sweep_due(self, now: float) -> bool:
        """An `expire(now)` would be the periodic sweep (a durable owner applies it as a change)."""
        return self._idle_seconds > 0 and now >= self._next_sweep

    def state(self, values: Callable[[V], list[Any]]) -> dict[str, Any]:
        """Entries (key + `values(entry)`), admitted keys, overflow count and sweep time as plain data."""
        return {
            "entries": [[list(k), *values(v)] for k, v in self.entries.items()],
            "admitted": [list(k) for k in self.admitted],
            "overflowed": self.overflowed,
            "next_sweep": self._next_sweep,
        }

    def restore(self, state: dict[str, Any], value: Callable[..., V]) -> None:
        """Take back `state()`, building each entry with `value(*values)`."""
        self.entries = {tuple(k): value(*v) for k, *v in state["entries"]}
        self.admitted = {tuple(k) for k in state["admitted"]}
        self.overflowed = int(state["overflowed"])
        self._next_sweep = float(state["next_sweep"])

    def expire(self, now: float) -> int:
        """Drop keys idle for `idle_seconds` or longer; returns how many."""
        if self._idle_seconds <= 0:
            return 0
        self._next_sweep = now + self._idle_seconds / 8
        cutoff = now - self._idle_seconds
        stale = [key for key, entry in self.entries.items() if entry.last_seen <= cutoff]
        for key in stale:
            del self.entries[key]
            self.admitted.discard(key)
        return len(stale)

    def _admit(self, key: Key, now: float) -> Key:
        """`key` if it may have a series of its own, else the overflow key (counted)."""
        if self._ordinary() < self._limit:
            return key
        if now >= self._next_sweep and self.expire(now) and self._ordinary() < self._limit:
            return key
        if len(self.admitted) < self._admitted_limit and self._is_reserved(key):
            self.admitted.add(key)
            return key
        self.overflowed += 1
        return self.overflow_key

    def _ordinary(self) -> int:
        """Keys counted against the limit: not the overflow key, not the admitted ones."""
        return len(self.entries) - len(self.admitted) - (self.overflow_key in self.entries)

    def _is_reserved(self, key: Key) -> bool:
        return any(value in names for value, names in zip(key, self._reserved, strict=True))
