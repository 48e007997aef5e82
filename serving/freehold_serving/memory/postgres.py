"""PostgreSQL under a memory store: what lets a store run several replicas and outlive a node.

What the database holds is what SQLite holds: sealed text, metadata and vectors, keyed
hashes for keywords (a tsvector of blinded tokens, keyed per subject), the subject keys
wrapped by the KEK. Vector and keyword search of current records run in each replica's
memory (store.py, keywords.py), kept in step through the subjects' revisions: nothing
readable is in the database without the KEK.

Why these choices:
- psycopg 3 (binary: libpq bundled), one connection per store object, autocommit with
  explicit transactions: the store serialises its calls and keeps each write one
  transaction; synchronous_commit stays on (an acknowledged record is on disk).
- Schema migrations run under a transaction-scoped advisory lock: replicas starting
  together neither race nor half-apply.
- A store lives in its own PostgreSQL schema (a namespace in one database), so several
  stores can share a database and never see each other's rows.
- A lost connection (failover, a restart) is reopened on the next call with fresh
  credentials (Vault's database engine issues short-lived ones); the call that saw the
  failure answers 503 and the client retries.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from freehold_serving.memory.database import SCHEMA_VERSION, Row
from freehold_serving.memory.store import StoreError

log = logging.getLogger(__name__)

# An advisory lock key of ours for migrations (any constant; the schema name is hashed in).
_MIGRATION_LOCK = 0x46524545484F4C44  # "FREEHOLD"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    tag TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revision BIGINT NOT NULL DEFAULT 0,
    epoch BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS subjects_tenant ON subjects (tenant);
CREATE TABLE IF NOT EXISTS versions (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    subject TEXT NOT NULL REFERENCES subjects(tag),
    type TEXT NOT NULL,
    agent TEXT,
    session TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_to BIGINT,
    expires_at BIGINT,
    deleted INTEGER NOT NULL DEFAULT 0,
    payload BYTEA,
    vector BYTEA,
    vector_model TEXT,
    vector_dim INTEGER,
    seq BIGINT NOT NULL DEFAULT 0,
    closed_seq BIGINT,
    terms TSVECTOR,
    UNIQUE (id, version)
);
CREATE INDEX IF NOT EXISTS versions_current ON versions (subject, valid_to);
CREATE INDEX IF NOT EXISTS versions_expiry ON versions (expires_at) WHERE valid_to IS NULL;
CREATE INDEX IF NOT EXISTS versions_seq ON versions (subject, seq);
CREATE INDEX IF NOT EXISTS versions_closed ON versions (subject, closed_seq)
    WHERE closed_seq IS NOT NULL;
DROP INDEX IF EXISTS versions_terms;
CREATE TABLE IF NOT EXISTS replicas (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    seen_at BIGINT NOT NULL
)
"""
# versions_terms (GIN over every row's terms) went with keyword ranking in the replicas'
# memory: only a search `as_of` a past time reads terms in the database, from the rows of
# one subject, which versions_current finds; ingest no longer maintains a GIN index.
# replicas: who serves the store now, for subject affinity (affinity.py).

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


class PostgresUnavailableError(StoreError):
    """The database cannot be reached now: the API answers 503 (retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


_LEXEME = re.compile(r"'((?:[^']|'')*)':([0-9A-D,]+)")


class PostgresDatabase:
    engine = "postgres"
    index_terms: str | None = "v.terms::text"
    for_update = " FOR UPDATE"

    def parse_terms(self, value: Any) -> dict[str, int]:
        """A tsvector's text ('token':1,4 ...): each token with its number of positions."""
        if not value:
            return {}
        return {m[1]: m[2].count(",") + 1 for m in _LEXEME.finditer(str(value))}

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str,
        credentials: Callable[[], Credentials | None] = lambda: None,
        connect_timeout: float = 10.0,
        role: str | None = None,
        application_name: str = "freehold-memory",
    ) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schema {schema!r}: lowercase letters, digits and _ only")
        if role is not None and not _IDENTIFIER.match(role):
            raise ValueError(f"role {role!r}: lowercase letters, digits and _ only")
        self._role = role
        self._application = application_name
        self._conninfo = conninfo
        self.schema = schema
        self._credentials = credentials
        self._timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: Any = None
        self._in_tx = False

    # -- connection ---------------------------------------------------------------------

    def _connection(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        extra: dict[str, Any] = {}
        creds = self._credentials()
        if creds is not None:
            extra = {"user": creds.user, "password": creds.password}
        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, int(self._timeout)),
                # Every table name resolves in the store's own schema.
                options=f"-c search_path={self.schema}",
                application_name=self._application,
                **extra,
            )
        except psycopg.OperationalError as exc:
            raise PostgresUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        if self._role is not None:
            # Short-lived users (Vault's database engine) come and go; what the store
            # creates belongs to the role they are all members of, so every replica's user
            # can use it and none takes it away when its lease ends.
            try:
                conn.execute(f'SET ROLE "{self._role}"'.encode())
            except psycopg.Error as exc:
                conn.close()
                raise PostgresUnavailableError(
                    f"cannot act as role {self._role!r} (is the user a member of it?): {exc}"
                ) from None
        self._conn = conn
        return conn

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        import psycopg

        conn = self._connection()
        try:
            return conn.execute(sql.replace("?", "%s"), tuple(params))
        except psycopg.OperationalError as exc:
            # The connection is gone (failover, restart, network): the next call reconnects.
            raise PostgresUnavailableError(f"PostgreSQL: {exc}") from exc

    # -- Database -----------------------------------------------------------------------

    def migrate(self) -> None:
        with self._lock, self.transaction():
            self._run(
                "SELECT pg_advisory_xact_lock(?, hashtext(?))", (_MIGRATION_LOCK >> 32, self.schema)
            )
            self._run(f"CREATE SCHEMA IF NOT EXISTS {self.schema}", ())
            row = self._run(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = ?"
                " AND table_name = 'meta'",
                (self.schema,),
            ).fetchone()
            if row is not None:
                found = self._run("SELECT value FROM meta WHERE key = 'schema'", ()).fetchone()
                if found is not None and int(found["value"]) > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"this memory store's schema is version {found['value']}; this "
                        f"release knows up to {SCHEMA_VERSION}: run a newer Freehold"
                    )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._run(statement, ())

    def ensure_schema(self, statements: str) -> None:
        """Create this connection's schema and run `statements` (idempotent DDL, `;`
        apart) under the migration lock: for tables that are not a memory store's (the
        router's budget ledger)."""
        with self._lock, self.transaction():
            self._run(
                "SELECT pg_advisory_xact_lock(?, hashtext(?))", (_MIGRATION_LOCK >> 32, self.schema)
            )
            self._run(f"CREATE SCHEMA IF NOT EXISTS {self.schema}", ())
            for statement in statements.split(";"):
                if statement.strip():
                    self._run(statement, ())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            self._run(sql, params)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return list(self._run(sql, params).fetchall())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._in_tx:  # nested (migrate's): one transaction
                yield
                return
            self._run("BEGIN", ())
            self._in_tx = True
            try:
                yield
            except BaseException:
                self._in_tx = False
                conn = self._conn
                if conn is not None and not conn.closed and not conn.broken:
                    conn.execute("ROLLBACK")
                raise
            self._in_tx = False
            self._run("COMMIT", ())

    def insert_versions(self, rows: Sequence[tuple[dict[str, Any], str | None]]) -> list[int]:
        if not rows:
            return []
        columns = list(rows[0][0])
        names = ", ".join([*columns, "terms"])
        marks = ", ".join(["%s"] * len(columns) + ["to_tsvector('simple', %s)"])
        params = [(*(c[k] for k in columns), terms) for c, terms in rows]
        import psycopg

        with self._lock:
            conn = self._connection()
            try:
                # One round trip for the batch (libpq's pipeline mode).
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO versions ({names}) VALUES ({marks}) RETURNING rowid",
                        params,
                        returning=True,
                    )
                    out = []
                    while True:
                        row = cur.fetchone()
                        assert row is not None
                        out.append(int(row["rowid"]))
                        if not cur.nextset():
                            break
            except psycopg.OperationalError as exc:
                raise PostgresUnavailableError(f"PostgreSQL: {exc}") from exc
        return out

    def keyword_hits(
        self, tokens: list[str], where: str, params: Sequence[Any], limit: int
    ) -> list[int]:
        # Searches of past versions (`as_of`) only: current ones rank in the replica's
        # memory (keywords.py). Filtered and ranked in one statement over one subject's
        # rows (versions_current finds them; tokens are keyed per subject), ts_rank
        # orders them (term frequency, length-normalised; no IDF in core). Fusion with
        # the vector ranks (RRF) uses ranks, not scores.
        with self._lock:
            rows = self._run(
                "SELECT v.rowid FROM versions v, to_tsquery('simple', ?) q"
                f" WHERE v.terms @@ q AND {where}"
                " ORDER BY ts_rank(v.terms, q, 1) DESC, v.rowid LIMIT ?",
                (" | ".join(tokens), *params, limit),
            ).fetchall()
        return [int(r["rowid"]) for r in rows]

    def forget_words(self, rowids: Sequence[int]) -> None:
        """The terms live in the rows themselves: deleted with them."""

    def reclaim(self) -> None:
        """Deleted rows' space is reclaimed by autovacuum. What stays in dead tuples, the
        WAL and backups is ciphertext under a subject key whose row is gone (see the
        README on backups: they hold the wrapped key until they expire)."""

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
