"""The store behind jobs: documents by (kind, key) with a version for compare-and-swap, a `due`
index (what is due to be looked at next: queued jobs in order of arrival, leases by when they
run out, webhook deliveries by their next attempt), expiry, and blobs (request rows, images).

Every state change is one `swap` that succeeds only if nobody changed the document since it was
read (and, for a lease taken over, only if the lease has run out), with the documents it causes
(webhook deliveries) inserted in the same transaction. Two implementations: `SQLiteStore`
(stdlib sqlite3 in WAL mode; one machine, the embedded default) and `redis_store.RedisStore`
(a Redis server, for a cluster). `open_store(uri)` picks one by scheme.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from darkroom.serve.jobs.insert import Insert

__all__ = ["Insert", "SQLiteStore", "Store", "StoreError", "open_store"]


class Store(Protocol):
    """Documents with versions, a due index, expiry and blobs; safe across processes."""

    def insert(self, item: Insert) -> tuple[dict[str, Any], int, bool]:
        """Insert `item` unless its key exists: (the stored doc, its version, inserted)."""

    def get(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        """The doc and its version; None when absent or expired."""

    def get_many(self, kind: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The docs of those keys that exist."""

    def swap(self, kind: str, key: str, version: int, doc: dict[str, Any], due: float | None,
             expires: float | None, if_due_by: float | None = None,
             inserts: tuple[Insert, ...] = ()) -> bool:
        """Replace the doc if its version is still `version` (and, with `if_due_by`, its due
        time is at most that), setting its due time and expiry, and insert `inserts`, in one
        transaction. False when someone changed it first."""

    def touch(self, kind: str, keys: list[str], due: float) -> None:
        """Move the due time of those keys still in the index (a lease's heartbeat)."""

    def due(self, kind: str, now: float, limit: int) -> list[str]:
        """Up to `limit` keys due by `now`, earliest first."""

    def rank(self, kind: str, key: str) -> int:
        """How many keys of `kind` are due before this one (a queued job's position)."""

    def put_blob(self, key: str, data: bytes, expires: float | None) -> None: ...

    def get_blob(self, key: str) -> bytes | None: ...

    def delete_blobs(self, keys: list[str]) -> None: ...

    def sweep(self, now: float) -> int:
        """Delete what expired; returns how many documents and blobs went."""

    def close(self) -> None: ...


class StoreError(ValueError):
    """A store URI that cannot be used."""


def open_store(uri: str, namespace: str = "darkroom") -> Store:
    """`sqlite:///ABSOLUTE/PATH.db` or `redis://[:password@]HOST:PORT/DB` (also `rediss://`;
    its keys under `namespace:`)."""
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        return SQLiteStore(uri.removeprefix("sqlite://"))
    if scheme in ("redis", "rediss"):
        from darkroom.serve.jobs.redis_store import RedisStore

        return RedisStore(uri, namespace)
    raise StoreError(f"unknown job store {uri!r}: use sqlite:///PATH.db or redis://HOST:PORT/0")


SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (kind TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
    doc TEXT NOT NULL, due REAL, expires REAL, PRIMARY KEY (kind, key));
CREATE INDEX IF NOT EXISTS docs_due ON docs (kind, due) WHERE due IS NOT NULL;
CREATE INDEX IF NOT EXISTS docs_expires ON docs (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, data BLOB NOT NULL, expires REAL);
"""


class SQLiteStore:
    """The store in one SQLite file (WAL: readers never wait for the writer), shared by every
    process of the deployment on one machine. A connection per thread; each call one
    transaction. `synchronous=NORMAL`: a killed process loses nothing committed."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def _db(self) -> _Transaction:
        return _Transaction(self._conn())

    def insert(self, item: Insert) -> tuple[dict[str, Any], int, bool]:
        now = time.time()
        with self._db() as db:
            db.execute("DELETE FROM docs WHERE kind=? AND key=? AND expires < ?",
                       (item.kind, item.key, now))
            inserted = _insert(db, item)
            version, doc = db.execute("SELECT version, doc FROM docs WHERE kind=? AND key=?",
                                      (item.kind, item.key)).fetchone()
        return json.loads(doc), version, inserted

    def get(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        row = self._conn().execute(
            "SELECT doc, version FROM docs WHERE kind=? AND key=? AND "
            "(expires IS NULL OR expires >= ?)", (kind, key, time.time())).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    def get_many(self, kind: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._conn().execute(
            f"SELECT key, doc FROM docs WHERE kind=? AND key IN ({marks}) AND (expires IS NULL "
            "OR expires >= ?)", (kind, *keys, time.time()))
        return {key: json.loads(doc) for key, doc in rows}

    def swap(self, kind: str, key: str, version: int, doc: dict[str, Any], due: float | None,
             expires: float | None, if_due_by: float | None = None,
             inserts: tuple[Insert, ...] = ()) -> bool:
        with self._db() as db:
            changed = db.execute(
                "UPDATE docs SET version=version+1, doc=?, due=?, expires=? WHERE kind=? AND "
                "key=? AND version=? AND (? IS NULL OR due <= ?)",
                (json.dumps(doc), due, expires, kind, key, version, if_due_by, if_due_by),
            ).rowcount
            if changed:
                for item in inserts:
                    _insert(db, item)
        return bool(changed)

    def touch(self, kind: str, keys: list[str], due: float) -> None:
        if keys:
            marks = ",".join("?" * len(keys))
            with self._db() as db:
                db.execute(f"UPDATE docs SET due=? WHERE kind=? AND due IS NOT NULL AND key IN "
                           f"({marks})", (due, kind, *keys))

    def due(self, kind: str, now: float, limit: int) -> list[str]:
        rows = self._conn().execute(
            "SELECT key FROM docs WHERE kind=? AND due <= ? ORDER BY due LIMIT ?",
            (kind, now, limit))
        return [key for (key,) in rows]

    def rank(self, kind: str, key: str) -> int:
        (count,) = self._conn().execute(
            "SELECT COUNT(*) FROM docs WHERE kind=? AND due < (SELECT due FROM docs WHERE "
            "kind=? AND key=?)", (kind, kind, key)).fetchone()
        return int(count)

    def put_blob(self, key: str, data: bytes, expires: float | None) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO blobs (key, data, expires) VALUES (?, ?, ?)",
                       (key, data, expires))

    def get_blob(self, key: str) -> bytes | None:
        row = self._conn().execute(
            "SELECT data FROM blobs WHERE key=? AND (expires IS NULL OR expires >= ?)",
            (key, time.time())).fetchone()
        return None if row is None else bytes(row[0])

    def delete_blobs(self, keys: list[str]) -> None:
        if keys:
            with self._db() as db:
                db.execute(f"DELETE FROM blobs WHERE key IN ({','.join('?' * len(keys))})",
                           keys)

    def sweep(self, now: float) -> int:
        with self._db() as db:
            gone = db.execute("DELETE FROM docs WHERE expires < ?", (now,)).rowcount
            gone += db.execute("DELETE FROM blobs WHERE expires < ?", (now,)).rowcount
        return gone

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _insert(db: sqlite3.Connection, item: Insert) -> bool:
    return bool(db.execute(
        "INSERT OR IGNORE INTO docs (kind, key, version, doc, due, expires) "
        "VALUES (?, ?, 1, ?, ?, ?)",
        (item.kind, item.key, json.dumps(item.doc), item.due, item.expires)).rowcount)


class _Transaction:
    """`with store._db() as db:` is one immediate (write) transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if kind else "COMMIT")
