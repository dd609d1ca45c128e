"""The response cache: an exact repeat of a deterministic request answered without the provider.

What is the same request: the provider, the endpoint (server and API), and every request argument
that reaches the provider — model, messages, tools, parameters — in a canonical JSON form, hashed
(`request_key`). Transport-only arguments (`timeout`) are left out; a request whose arguments do not
serialise canonically (a Python class as `response_format`, as `parse()` sends) is not cached. By
default only requests that ask for a repeatable answer are cached (`temperature: 0`, or a `seed`).

Entries are opaque bytes to the store; what they hold (an SDK response or a recorded stream, and
the usage the original call had) is the instrumentation's business (`_cache_replay`).

`CacheStore` is the seam: `SQLiteStore` is the embedded default, one file shared by the agent's
processes on one machine (SQLite's own locking; WAL, so readers do not wait for a writer), bounded
by a TTL and a size in bytes (least recently used entries go first). A Redis store fits the same
three methods (`GET`, `SET ... PX ttl` with `maxmemory-policy allkeys-lru`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from otel_tokens.budgets.spec import CacheSettings, parse_duration

__all__ = ["CacheStore", "ResponseCache", "SQLiteStore", "default_cache_path", "request_key"]

#: Request arguments that never reach the provider as part of the request.
_TRANSPORT_ONLY = frozenset({"timeout"})
#: An entry larger than this is not stored (a single huge response must not evict everything).
_MAX_ENTRY_FRACTION = 0.25


class CacheStore(Protocol):
    """Where cached responses live. Implementations are safe to share between threads."""

    def get(self, key: str) -> bytes | None:
        """The live entry under `key` (marking it recently used), or None."""
        ...

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store `value` under `key` for `ttl_s` seconds, within the store's size bound."""
        ...

    def close(self) -> None: ...


def default_cache_path() -> Path:
    """`$XDG_CACHE_HOME/otel-tokens/responses.sqlite3` (or `~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "otel-tokens" / "responses.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_used_at ON responses (used_at);
"""


class SQLiteStore:
    """An on-disk `CacheStore` with a TTL per entry and a bound on the total size of the values."""

    def __init__(self, path: str | Path, max_bytes: int, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used under our lock from any thread; other processes share the file.
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def get(self, key: str) -> bytes | None:
        now = self._clock()
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM responses WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE responses SET used_at = ? WHERE key = ?", (now, key))
        return bytes(row[0])

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes * _MAX_ENTRY_FRACTION:
            return
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one writer at a time across processes
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                    (key, value, len(value), now + ttl_s, now),
                )
                self._db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _evict(self) -> None:
        """Least recently used entries out until the values fit `max_bytes` (inside the write)."""
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
        if total <= self.max_bytes:
            return
        excess = total - self.max_bytes
        doomed: list[str] = []
        for key, size in self._db.execute("SELECT key, size FROM responses ORDER BY used_at, key"):
            if excess <= 0:
                break
            doomed.append(key)
            excess -= size
        self._db.executemany("DELETE FROM responses WHERE key = ?", [(k,) for k in doomed])

    def total_bytes(self) -> int:
        with self._lock:
            (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
        return int(total)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def request_key(provider: str, endpoint: str, request: Mapping[str, Any]) -> str | None:
    """The hash naming one exact request, or None when it cannot be put in canonical form."""
    body = {k: v for k, v in request.items() if k not in _TRANSPORT_ONLY and not _is_omitted(v)}
    try:
        text = json.dumps(
            [provider, endpoint, body], sort_keys=True, default=_canonical, separators=(",", ":")
        )
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _is_omitted(value: Any) -> bool:
    """The SDKs' "argument not given" sentinels (`NOT_GIVEN`, `omit`)."""
    return type(value).__name__ in ("NotGiven", "Omit")


def _canonical(value: Any) -> Any:
    if isinstance(value, type):
        raise TypeError("a class is not a request value")  # parse(response_format=Model)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_unset=True)
    if isinstance(value, (tuple, set, frozenset)):
        return sorted(value, key=repr) if not isinstance(value, tuple) else list(value)
    raise TypeError(f"not serialisable: {type(value).__name__}")


def is_deterministic(request: Mapping[str, Any]) -> bool:
    """The request asks for a repeatable answer: temperature 0, or a seed (also when passed in
    `extra_body`, the only way to send a temperature with an SDK that dropped the argument)."""
    extra = request.get("extra_body")
    for source in (request, extra if isinstance(extra, Mapping) else {}):
        if source.get("temperature") == 0 or isinstance(source.get("seed"), int):
            return True
    return False


class ResponseCache:
    """The guard's cache: which requests it may answer, and the store behind it."""

    def __init__(self, settings: CacheSettings, store: CacheStore | None = None) -> None:
        self.settings = settings
        self.ttl_s = parse_duration(settings.ttl)
        self._store = store
        self._store_lock = threading.Lock()

    @property
    def store(self) -> CacheStore:
        """Opened on first use: a guard whose budgets never cache never creates the file."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    path = Path(self.settings.path) if self.settings.path else default_cache_path()
                    self._store = SQLiteStore(path, self.settings.max_bytes)
        return self._store

    def key(self, provider: str, endpoint: str, request: Mapping[str, Any]) -> str | None:
        """The request's key, or None when this request is not to be cached."""
        if self.settings.deterministic_only and not is_deterministic(request):
            return None
        return request_key(provider, endpoint, request)

    def get(self, key: str) -> bytes | None:
        return self.store.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.store.put(key, value, self.ttl_s)
