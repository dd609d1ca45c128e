"""Runaway detection in the agent: the loop patterns that burn tokens, seen call by call.

Four detectors, each keyed by the call's task instance (`task_id=...`) and session (`session=...`):

- `instance_over_limit` — a task instance would pass `runaway_factor` x its `per_task_instance`
  limit with this call (the guard checks it before sending, from its budget standings; the
  collector's `RunawayTask` alert fires only after the fact);
- `repeated_request` — the same request (a hash of model, system and messages) sent
  `repeated_requests` times by one key: an agent retrying the identical step;
- `rising_input` — input tokens larger than the call before, `rising_input_calls` calls in a row:
  the context is resent and grows without bound;
- `cache_expired` — a prompt of at least `cache_expiry_min_input_tokens` read nothing from the
  provider's prompt cache right after a call of the same key that did: the loop is slower than the
  cache's TTL, and every call now pays the whole prompt (the 136M-token incident's lesson).

The first two are seen before the call is sent (`before`), the last two only from its usage
(`after`). A finding becomes a span event; where a budget says `on_runaway: stop`, the key is
stopped: this call (if not yet sent) and every later call of that key raise `TaskStopped`.

Memory is bounded: at most `max_keys` keys (least recently used go first), and per key a bounded
set of request hashes. Thread-safe; nothing slow runs under the lock.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from otel_tokens import semconv as sc
from otel_tokens.budgets.spec import RunawaySettings
from otel_tokens.record import Attribution, UsageRecord

__all__ = ["Finding", "RunawayDetector", "instance_finding", "keys_of", "request_fingerprint"]

_MAX_KEYS = 10_000
_MAX_HASHES_PER_KEY = 256


@dataclass(frozen=True, slots=True)
class Finding:
    """One detector firing for one key, with the numbers (a span event)."""

    kind: str
    key: str
    value: float
    threshold: float
    detail: str
    budget: str | None = None  # the budget whose numbers it is (instance_over_limit)
    stopped: bool = False

    def attributes(self) -> dict[str, str | float | bool]:
        attributes: dict[str, str | float | bool] = {
            sc.OTEL_TOKENS_GUARD_RUNAWAY_KIND: self.kind, sc.OTEL_TOKENS_GUARD_RUNAWAY_KEY: self.key,
            sc.OTEL_TOKENS_GUARD_RUNAWAY_VALUE: self.value,
            sc.OTEL_TOKENS_GUARD_RUNAWAY_THRESHOLD: self.threshold,
            sc.OTEL_TOKENS_GUARD_RUNAWAY_STOPPED: self.stopped,
        }  # fmt: skip
        if self.budget is not None:
            attributes[sc.OTEL_TOKENS_GUARD_BUDGET] = self.budget
        return attributes


@dataclass(slots=True)
class _KeyState:
    hashes: OrderedDict[int, int] = field(default_factory=OrderedDict)  # fingerprint → times sent
    last_input: int | None = None
    rising: int = 1  # calls in the current run of rising input (the first counts as one)
    last_cache_read: int = 0
    last_end_ns: int = 0
    stop: Finding | None = None  # set once the key is stopped


def keys_of(attribution: Attribution) -> list[str]:
    """The keys a call is tracked under: its task instance and its session, when set."""
    keys = []
    if attribution.task_id:
        keys.append(f"task_id={attribution.task_id}")
    if attribution.session:
        keys.append(f"session={attribution.session}")
    return keys


def request_fingerprint(model: str, system: Any, prompt: Any) -> int:
    """A hash of what makes two requests "the same" for the repeat detector: model, system prompt
    and messages. The detector's memory is this process's, so Python's own 64-bit hash serves: a
    plain message (`{"role": str, "content": str}`) is hashed by its two strings, whose hashes
    Python caches — an agent resends its whole history on every call, so this walks cached hashes
    instead of serialising the request — and anything else by its canonical JSON."""
    about = None if system is None else _canonical(system)
    if type(prompt) is not list:
        return hash((model, about, _canonical(prompt)))
    parts = []
    for message in prompt:
        if type(message) is dict and len(message) == 2:
            role, content = message.get("role"), message.get("content")
            if type(role) is str and type(content) is str:
                parts.append(hash((role, content)))
                continue
        parts.append(hash(_canonical(message)))
    return hash((model, about, tuple(parts)))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_jsonable, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


class RunawayDetector:
    """The four detectors' per-key state (see the module docstring)."""

    def __init__(self, settings: RunawaySettings, *, max_keys: int = _MAX_KEYS) -> None:
        self.settings = settings
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()
        self._lock = threading.Lock()

    def stopped(self, keys: Iterable[str]) -> Finding | None:
        """The stop already in force for any of `keys`, if one is."""
        with self._lock:
            for key in keys:
                state = self._keys.get(key)
                if state is not None and state.stop is not None:
                    return state.stop
        return None

    def stop(self, finding: Finding) -> None:
        """Stop `finding.key` from now on."""
        with self._lock:
            self._state(finding.key).stop = finding

    def before(self, keys: list[str], fingerprint: int) -> list[Finding]:
        """Count this request for each key; a key reaching `repeated_requests` of it fires."""
        threshold = self.settings.repeated_requests
        findings = []
        with self._lock:
            for key in keys:
                hashes = self._state(key).hashes
                count = hashes.pop(fingerprint, 0) + 1
                hashes[fingerprint] = count  # most recent last
                if len(hashes) > _MAX_HASHES_PER_KEY:
                    hashes.popitem(last=False)
                if count >= threshold:
                    detail = f"the same request sent {count} times (threshold {threshold})"
                    findings.append(Finding(sc.RUNAWAY_REPEATED_REQUEST, key, count, threshold, detail))
        return findings

    def after(self, keys: list[str], record: UsageRecord) -> list[Finding]:
        """The usage-based detectors, from the call's record (failed calls tell nothing)."""
        if record.status != "ok" or record.tokens.input <= 0:
            return []
        findings: list[Finding] = []
        with self._lock:
            for key in keys:
                state = self._state(key)
                findings += self._rising(key, state, record.tokens.input)
                findings += self._cache(key, state, record)
                state.last_input = record.tokens.input
                state.last_cache_read = record.tokens.cache_read
                state.last_end_ns = record.end_time_ns
        return findings

    def _rising(self, key: str, state: _KeyState, tokens: int) -> list[Finding]:
        last = state.last_input
        state.rising = state.rising + 1 if last is not None and tokens > last else 1
        threshold = self.settings.rising_input_calls
        if state.rising < threshold or state.rising % threshold:
            return []  # fires at K, 2K, ... calls into one rising run, not on every call
        detail = (
            f"input tokens rose on {state.rising} consecutive calls (threshold {threshold}), now {tokens}"
        )
        return [Finding(sc.RUNAWAY_RISING_INPUT, key, state.rising, threshold, detail)]

    def _cache(self, key: str, state: _KeyState, record: UsageRecord) -> list[Finding]:
        minimum = self.settings.cache_expiry_min_input_tokens
        tokens = record.tokens
        if not (state.last_cache_read > 0 and tokens.cache_read == 0 and tokens.input >= minimum):
            return []
        gap_s = (record.end_time_ns - state.last_end_ns) / 1e9 if state.last_end_ns else 0.0
        detail = (
            f"{tokens.input} input tokens with no cache read, right after a call that read "
            f"{state.last_cache_read} from the cache ({gap_s:.0f}s before): the loop is slower "
            "than the provider's cache TTL"
        )
        return [Finding(sc.RUNAWAY_CACHE_EXPIRED, key, tokens.input, minimum, detail)]

    def _state(self, key: str) -> _KeyState:
        """The key's state, most recently used; the least recently used key goes when full."""
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        return state

    def __len__(self) -> int:
        return len(self._keys)


def instance_finding(
    key: str, budget: str, used: float, adding: float, limit: float, factor: float
) -> Finding | None:
    """`instance_over_limit` when `used + adding` would pass `factor` x `limit` (pure)."""
    threshold = factor * limit
    if used + adding <= threshold:
        return None
    detail = (
        f"{used:.0f} tokens used + ~{adding:.0f} this call would pass {factor:g} x the per-instance "
        f"limit {limit:.0f} of budget {budget!r}"
    )
    return Finding(sc.RUNAWAY_INSTANCE_OVER_LIMIT, key, used + adding, threshold, detail, budget)
