"""The collector's embedded store: one SQLite database (WAL mode) in the data directory.

Owns the file, the lock that keeps a second collector off it, and the group commit. Two tables
matter: `journal` (one row per change to the pipeline's state, in the order it was applied) and
`snapshot` (the whole state as of one journal position; writing it deletes the journal up to
there). What the rows mean is `otel_tokens.collector.durable`'s business; here they are bytes.

Group commit: `append()` only queues an entry and returns its sequence number; one writer thread
commits everything queued in one transaction — one fsync (`synchronous=FULL`) for however many
exports arrived meanwhile — and `wait(seq)` returns once that entry is on disk. So an OTLP
response that says OK follows the fsync of its batch, and concurrent exports share the cost.

A failing disk does not drop entries: the writer retries the same transaction with backoff, and
the exports waiting on it wait (their exporters time out and resend; the resend is a duplicate
and is answered once the disk is back).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import IO

__all__ = ["DB_NAME", "Snapshot", "Store", "StoreError"]

logger = logging.getLogger("otel_tokens.collector")

DB_NAME = "otel-tokens.sqlite3"
_LOCK_NAME = "otel-tokens.lock"
SCHEMA_VERSION = 1
_RETRY_MAX_S = 5.0

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS snapshot (part TEXT PRIMARY KEY, seq INTEGER NOT NULL, data BLOB NOT NULL)",
)

Snapshot = tuple[int, dict[str, bytes]]  # (journal position, named parts)


class StoreError(OSError):
    """The data directory cannot be used; the message says which and why."""


class Store:
    """The SQLite file plus its writer thread. `start()` the writer after loading."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_file = self._lock(self.path / _LOCK_NAME)
            self._db = sqlite3.connect(self.path / DB_NAME, isolation_level=None, check_same_thread=False)
            self._setup()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"data dir {self.path}: cannot open the state database: {exc}") from exc
        self._cond = threading.Condition()
        self._queue: list[tuple[int, Callable[[], bytes]]] = []
        self._jobs: list[tuple[Callable[[sqlite3.Connection], None], Future[None]]] = []
        last = self._db.execute(
            "SELECT max(seq) FROM (SELECT seq FROM journal UNION SELECT seq FROM snapshot)"
        )
        self._last_seq = int(last.fetchone()[0] or 0)
        self._durable_seq = self._last_seq
        self._closing = False
        self.closed = False
        #: journal commits (fsyncs) and the entries they carried: entries / commits is the group size
        self.commits = self.entries_committed = 0
        self._broken: BaseException | None = None  # a bug in the writer: fail waiters, never hang them
        self._unwritable: set[int] = set()  # entries whose encoding failed (a bug): their waiters fail
        self._writer: threading.Thread | None = None

    @staticmethod
    def _lock(path: Path) -> IO[str]:
        """One collector per data directory: two would each replay and overwrite the other."""
        handle = path.open("a+")
        try:
            import fcntl  # POSIX; released by the OS when the process dies, kill -9 included
        except ImportError:  # pragma: no cover - Windows: no advisory lock, one collector by convention
            return handle
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StoreError(
                f"data dir {path.parent} is in use by another collector ({path} is locked)"
            ) from None
        return handle

    def _setup(self) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"data dir {self.path}: SQLite cannot use WAL mode here (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")  # fsync at every commit: durable before the OK
        for statement in _TABLES:
            db.execute(statement)
        version = self.meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif version != str(SCHEMA_VERSION):
            raise StoreError(
                f"data dir {self.path}: written by a collector with store schema {version}, "
                f"this one reads {SCHEMA_VERSION}; use a new --data-dir or the matching version"
            )

    # --- reading (before `start()`) ------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def snapshot(self) -> Snapshot | None:
        rows = self._db.execute("SELECT part, seq, data FROM snapshot").fetchall()
        if not rows:
            return None
        return int(rows[0][1]), {str(part): bytes(data) for part, _, data in rows}

    def journal(self, after: int) -> Iterator[tuple[int, bytes]]:
        """Journal entries past position `after`, in order."""
        rows = self._db.execute("SELECT seq, entry FROM journal WHERE seq > ? ORDER BY seq", (after,))
        for seq, entry in rows:
            yield int(seq), bytes(entry)

    # --- writing ---------------------------------------------------------------------------------
    def start(self) -> Store:
        self._writer = threading.Thread(target=self._write_loop, name="otel-tokens-store", daemon=True)
        self._writer.start()
        return self

    @property
    def last_seq(self) -> int:
        """The position of the newest entry appended (durable or not)."""
        return self._last_seq

    def append(self, entry: Callable[[], bytes]) -> int:
        """Queue an entry (encoded by the writer thread, off the caller's lock); returns its position."""
        with self._cond:
            self._last_seq += 1
            self._queue.append((self._last_seq, entry))
            self._cond.notify_all()
            return self._last_seq

    def wait(self, seq: int) -> None:
        """Return once entry `seq` is committed to disk."""
        with self._cond:
            while self._durable_seq < seq:
                if self._broken is not None:
                    raise StoreError(f"data dir {self.path}: the journal writer failed: {self._broken}")
                if self._writer is None:
                    raise StoreError(f"data dir {self.path}: the store is closed")
                self._cond.wait()
            if seq in self._unwritable:
                self._unwritable.discard(seq)
                raise StoreError(
                    f"data dir {self.path}: journal entry {seq} could not be encoded (see the log)"
                )

    def write_snapshot(self, seq: int, parts: dict[str, bytes]) -> None:
        """Replace the snapshot by `parts` as of position `seq` and drop the journal up to it;
        returns once committed (entries queued before it are committed first)."""

        def job(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM snapshot")
            rows = [(name, seq, data) for name, data in parts.items()]
            db.executemany("INSERT INTO snapshot (part, seq, data) VALUES (?, ?, ?)", rows)
            db.execute("DELETE FROM journal WHERE seq <= ?", (seq,))
            db.execute("COMMIT")

        self.run(job)

    def run(self, job: Callable[[sqlite3.Connection], None]) -> None:
        """Run `job` on the writer's connection, after every entry queued so far; wait for it."""
        if self.closed:
            raise StoreError(f"data dir {self.path}: the store is closed")
        if self._writer is None:
            job(self._db)
            return
        done: Future[None] = Future()
        with self._cond:
            self._jobs.append((job, done))
            self._cond.notify_all()
        done.result()

    def close(self) -> None:
        """Commit what is queued, stop the writer, release the directory."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=30)
        with self._cond:
            self._writer = None
            self.closed = True
            self._cond.notify_all()
        self._db.close()
        self._lock_file.close()

    def _write_loop(self) -> None:
        try:
            self._write_until_closed()
        except BaseException as exc:
            logger.exception("the journal writer of %s failed", self.path)
            with self._cond:
                self._broken = exc
                self._cond.notify_all()

    def _write_until_closed(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._jobs or self._closing):
                    self._cond.wait()
                if not (self._queue or self._jobs):
                    return
                entries, self._queue = self._queue, []
                jobs, self._jobs = self._jobs, []
            if entries:
                self._commit(entries)
            for job, done in jobs:
                try:
                    job(self._db)
                except BaseException as exc:
                    self._rollback()
                    done.set_exception(exc)
                else:
                    done.set_result(None)

    def _commit(self, entries: list[tuple[int, Callable[[], bytes]]]) -> None:
        rows, unwritable = [], []
        for seq, encode in entries:
            try:
                rows.append((seq, encode()))
            except Exception:  # a bug in one entry must not stop every later export
                logger.exception("cannot encode journal entry %d for %s; its export fails", seq, self.path)
                unwritable.append(seq)
        delay = 0.05
        while rows:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO journal (seq, entry) VALUES (?, ?)", rows)
                self._db.execute("COMMIT")
                break
            except (sqlite3.Error, OSError) as exc:
                self._rollback()
                logger.error("cannot write the journal in %s (retrying in %.2fs): %s", self.path, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        with self._cond:
            self._unwritable.update(unwritable)
            self._durable_seq = entries[-1][0]
            self.commits += 1
            self.entries_committed += len(rows)
            self._cond.notify_all()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
