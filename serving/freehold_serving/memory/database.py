"""Where a memory store keeps its rows: the SQL engine under store.py.

The store speaks one portable SQL (`?` placeholders, RETURNING, ON CONFLICT, FILTER) and
asks its Database for what differs between engines: the schema and its migrations, write
transactions, the keyword index and reclaiming erased space. Two engines:
- SqliteDatabase (here): one file, one writer, one replica; nothing to run.
- PostgresDatabase (postgres.py): any number of replicas on an existing PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from freehold_serving.private_files import private_file

Row = dict[str, Any]

# Schema versions: 1 (first release), 2 (subject revisions and change sequence numbers, so
# replicas keep their in-memory vector indexes in step with writes made elsewhere).
SCHEMA_VERSION = 2


class Database(Protocol):
    """One connection's worth of SQL; the store holds its lock around every call."""

    engine: str
    # SQL reading a version's keyword terms beside the vector index's columns, when the
    # store ranks keywords in its own memory (PostgreSQL: keywords.py says why); None
    # when the engine ranks them well itself (SQLite's FTS5).
    index_terms: str | None
    # Appended to a SELECT that must lock its rows until the transaction ends (SQLite's
    # one writer holds the whole database: nothing to add).
    for_update: str

    def parse_terms(self, value: Any) -> dict[str, int]:
        """What index_terms read: token -> term frequency."""

    def migrate(self) -> None:
        """Create or upgrade the schema to SCHEMA_VERSION (safe when replicas race)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def transaction(self) -> Any:
        """A context manager: one write transaction, rolled back on any exception."""

    def insert_versions(self, rows: Sequence[tuple[dict[str, Any], str | None]]) -> list[int]:
        """Insert rows of `versions` (columns, keyword terms), in order: their rowids. The
        rows of one call have the same columns."""

    def keyword_hits(
        self, tokens: list[str], where: str, params: Sequence[Any], limit: int
    ) -> list[int]:
        """Rowids of versions `v` that match `where` and whose terms match any token, best
        first."""

    def forget_words(self, rowids: Sequence[int]) -> None:
        """Drop the keyword entries of rows about to be deleted."""

    def reclaim(self) -> None:
        """After an erasure or a sweep: make freed space unreadable where the engine can."""

    def close(self) -> None: ...


def first(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    tag TEXT PRIMARY KEY,          -- HMAC(store key, tenant NUL subject)
    tenant TEXT NOT NULL,          -- HMAC(store key, tenant)
    wrapped_key TEXT NOT NULL,     -- the subject's data key, wrapped by the KEK
    created_at INTEGER NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,  -- +1 per write transaction on the subject
    epoch INTEGER NOT NULL DEFAULT 0      -- +1 when rows go without a trace (sweep, import)
);
CREATE TABLE IF NOT EXISTS versions (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    subject TEXT NOT NULL REFERENCES subjects(tag),
    type TEXT NOT NULL,
    agent TEXT,                    -- HMAC tags: equality filters without the ids
    session TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    valid_from INTEGER NOT NULL,
    valid_to INTEGER,
    expires_at INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    payload BLOB,                  -- AES-GCM(subject key, JSON)
    vector BLOB,                   -- AES-GCM(subject key, float32[])
    vector_model TEXT,
    vector_dim INTEGER,
    seq INTEGER NOT NULL DEFAULT 0, -- the subject revision that wrote the row
    closed_seq INTEGER,             -- the subject revision that closed it
    UNIQUE (id, version)
);
CREATE INDEX IF NOT EXISTS versions_current ON versions (subject, valid_to);
CREATE INDEX IF NOT EXISTS versions_expiry ON versions (expires_at) WHERE valid_to IS NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS keywords USING fts5 (terms, tokenize = 'ascii');
"""

_SQLITE_V2 = """
ALTER TABLE subjects ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subjects ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE versions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE versions ADD COLUMN closed_seq INTEGER;
"""

_SQLITE_CHANGES = """
CREATE INDEX IF NOT EXISTS versions_seq ON versions (subject, seq);
CREATE INDEX IF NOT EXISTS versions_closed ON versions (subject, closed_seq)
    WHERE closed_seq IS NOT NULL;
"""


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


class SqliteDatabase:
    """SQLite (WAL, synchronous=FULL, secure_delete): survives kill -9 with every
    acknowledged (committed) record; one writer, so one replica per store."""

    engine = "sqlite"
    index_terms: str | None = None
    for_update = ""

    def parse_terms(self, value: Any) -> dict[str, int]:
        return {}

    def __init__(self, path: Path) -> None:
        self.path = path
        # 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
        private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = _dict_row
        self._lock = threading.RLock()
        for pragma in (
            "journal_mode = WAL",
            "synchronous = FULL",  # a commit is on disk before add() returns
            "secure_delete = ON",  # freed pages are zeroed: erased data is gone
            "foreign_keys = ON",
        ):
            self._db.execute(f"PRAGMA {pragma}")

    def migrate(self) -> None:
        with self._lock:
            known = self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            version = None
            if known:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                version = int(row["value"]) if row else None
            if version is not None and version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"this memory store's schema is version {version}; this release knows up "
                    f"to {SCHEMA_VERSION}: run a newer Freehold"
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if version == 1:
                    for statement in _SQLITE_V2.strip().splitlines():
                        self._db.execute(statement)
                else:
                    for statement in _split(_SQLITE_SCHEMA):
                        self._db.execute(statement)
                for statement in _split(_SQLITE_CHANGES):
                    self._db.execute(statement)
                if version is not None:
                    self._db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(sql, tuple(params))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._db.execute(sql, tuple(params)).fetchall())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            # IMMEDIATE: take the write lock now, so the reads inside see what we write over.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def insert_versions(self, rows: Sequence[tuple[dict[str, Any], str | None]]) -> list[int]:
        out = []
        for columns, terms in rows:
            names = ", ".join(columns)
            rowid = int(
                self._db.execute(
                    f"INSERT INTO versions ({names}) VALUES ({', '.join('?' * len(columns))})"
                    " RETURNING rowid",
                    tuple(columns.values()),
                ).fetchone()["rowid"]
            )
            if terms is not None:
                self._db.execute(
                    "INSERT INTO keywords (rowid, terms) VALUES (?, ?)", (rowid, terms)
                )
            out.append(rowid)
        return out

    def keyword_hits(
        self, tokens: list[str], where: str, params: Sequence[Any], limit: int
    ) -> list[int]:
        # Rank inside FTS5 first (its own top-k by bm25, no join), then keep the current,
        # filtered versions among a generous pool: the tokens are the subject's own, so
        # every candidate already is this subject's. Joining before ranking cost ~5 ms on a
        # subject whose 1,000 records share every word (bench/memory.py).
        pool = [
            int(r["rowid"])
            for r in self._db.execute(
                "SELECT rowid FROM keywords WHERE keywords MATCH ? ORDER BY rank LIMIT ?",
                (" OR ".join(tokens), limit * 8),
            ).fetchall()
        ]
        if not pool:
            return []
        allowed = {
            int(r["rowid"])
            for r in self._db.execute(
                f"SELECT v.rowid FROM versions v WHERE {where} AND v.rowid IN"
                f" ({','.join('?' * len(pool))})",
                (*params, *pool),
            )
        }
        return [rowid for rowid in pool if rowid in allowed][:limit]

    def forget_words(self, rowids: Sequence[int]) -> None:
        self._db.executemany("DELETE FROM keywords WHERE rowid = ?", [(r,) for r in rowids])

    def reclaim(self) -> None:
        with self._lock:
            # Merging the FTS segments rewrites the index without the deleted rows (FTS5
            # keeps deleted entries in old segments until a merge); VACUUM and a truncated
            # WAL leave no freed page with old content on disk.
            self._db.execute("INSERT INTO keywords (keywords) VALUES ('optimize')")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def integrity(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()["integrity_check"])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _split(script: str) -> list[str]:
    """Statements of a schema script (no semicolons inside statements here)."""
    out = []
    for part in script.split(";"):
        lines = [line.split("--", 1)[0].rstrip() for line in part.strip().splitlines()]
        text = "\n".join(line for line in lines if line.strip())
        if text:
            out.append(text)
    return out
