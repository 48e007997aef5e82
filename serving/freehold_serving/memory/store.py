"""The memory store: records and history in SQL (SQLite or PostgreSQL, database.py),
search indexes per subject in this process's memory.

Why this shape:
- Record text, metadata and vectors are AES-GCM ciphertext under the subject's data key
  (see crypto.py); the keyword index holds keyed hashes of words, so ranking works and no
  word is in the database in the clear.
- Vectors live in the database (sealed) and in an in-memory index per subject, built on
  first use (vectors.py: exact for most subjects, HNSW for very large ones). One index
  per subject filters *inside* the index (a global index filtered afterwards loses
  recall: see ../shared/design/reference.md). No index file on disk: nothing to fall out
  of sync after a crash, nothing to scrub after an erasure. A budget bounds what the
  indexes hold (least recently searched subjects dropped first).
- Several processes may serve one store (PostgreSQL replicas): every write transaction
  on a subject takes the subject's row (serialising writers of that subject) and bumps
  its revision; rows carry the revision that wrote (seq) or closed (closed_seq) them. A
  search reads the subject's revision and the rows changed since its index's, in one
  statement, and applies them: any replica answers any request with every committed
  write, and a replica never rebuilds an index for someone else's single write. With
  subject affinity (affinity.py) a subject's searches go to one replica, so each holds
  only its share of the indexes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from freehold_serving.memory import crypto, vectors
from freehold_serving.memory.database import SCHEMA_VERSION, Database, Row, SqliteDatabase, first
from freehold_serving.memory.keywords import KeywordIndex
from freehold_serving.memory.records import (
    Provenance,
    Record,
    RecordFields,
    SearchRequest,
)
from freehold_serving.memory.vectors import VectorIndex

log = logging.getLogger(__name__)

_RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.): robust, no tuning


class StoreError(Exception):
    """A request the store refuses; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


class NotFoundError(StoreError):
    def __init__(self, what: str) -> None:
        # The same answer whether the record does not exist or belongs to another
        # tenant: a 403 would confirm that the id exists.
        super().__init__(f"{what} not found", status=404)


@dataclass(frozen=True)
class Retention:
    """Lifetimes in seconds: per record type, else the default (None: kept)."""

    default_seconds: float | None = 90 * 86400
    per_type: dict[str, float] = field(default_factory=dict)

    def seconds(self, record_type: str) -> float | None:
        return self.per_type.get(record_type, self.default_seconds)


@dataclass(frozen=True)
class Counts:
    records: int
    subjects: int
    user: int
    agent: int
    session: int


def micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


@dataclass
class _Subject:
    tag: str
    wrapped: str  # the wrapped key as stored: a subject erased and made again has another
    key: bytes
    words_key: bytes
    index: VectorIndex | None = None  # current versions' vectors, built on first search
    words: KeywordIndex | None = None  # their keyword terms, where the engine says so
    expiring: dict[int, int] = field(default_factory=dict)  # rowid -> expires_at, if any
    revision: int = -1  # the subject revision the indexes reflect
    epoch: int = -1
    nbytes: int = 0  # what the indexes held at their last change (the memory budget)


# What a record is read from (never the keyword terms; the vector only where asked).
_RECORD = (
    "rowid, id, version, subject, type, agent, session, created_at, updated_at, valid_from,"
    " valid_to, expires_at, deleted, payload"
)
_RECORD_V = ", ".join(f"v.{c.strip()}" for c in _RECORD.split(","))
# The columns a search needs to keep an index in step (never the payload).
_INDEX_COLUMNS = "v.rowid, v.id, v.version, v.vector, v.valid_to, v.deleted, v.expires_at"
_SIMPLE = "v.subject = ? AND v.deleted = 0 AND v.valid_to IS NULL"  # no filter but the subject


class Store:
    """One memory store. Thread-safe; every write is one transaction."""

    def __init__(
        self,
        database: Database | Path,
        wrapper: crypto.KeyWrapper,
        *,
        embedding_model: str,
        dimension: int,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        index_budget_bytes: int | None = None,
    ) -> None:
        """`index_budget_bytes`: the most this replica's in-memory indexes may hold; past
        it the least recently searched subjects' indexes are dropped (rebuilt from the
        database on their next search). None: no bound."""
        self._db: Database = SqliteDatabase(database) if isinstance(database, Path) else database
        self._wrapper = wrapper
        self.embedding_model = embedding_model
        self.dimension = dimension
        self.retention = retention or Retention()
        self._clock = clock
        self._lock = threading.RLock()
        self._subjects: dict[str, _Subject] = {}
        # Subjects whose indexes are in memory, least recently searched first.
        self._indexed: OrderedDict[str, None] = OrderedDict()
        self._index_bytes = 0
        self._budget = index_budget_bytes
        self._db.migrate()
        self._store_key = self._load_store_key()
        self._pseudonym_key = crypto.derive(self._store_key, "audit-pseudonym")

    @property
    def database(self) -> Database:
        return self._db

    # -- keys ---------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = first(self._db.rows("SELECT value FROM meta WHERE key = ?", (key,)))
        return None if row is None else str(row["value"])

    def _load_store_key(self) -> bytes:
        with self._tx():
            # Replicas starting together: the first insert wins, every one reads it back.
            fresh = self._wrapper.wrap(os.urandom(32))
            for key, value in (
                ("store_key", fresh),
                ("schema", str(SCHEMA_VERSION)),
                ("embedding_model", self.embedding_model),
                ("dimension", str(self.dimension)),
            ):
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (key, value),
                )
            wrapped = self._meta("store_key")
        assert wrapped is not None
        return self._wrapper.unwrap(wrapped)

    def stored_embedding_model(self) -> tuple[str, int]:
        return str(self._meta("embedding_model")), int(self._meta("dimension") or 0)

    def _subject_tag(self, tenant: str, subject: str) -> str:
        return crypto.tag(self._store_key, f"{tenant}\0{subject}")

    def subject_tag(self, tenant: str, subject: str) -> str:
        """The subject's keyed tag: what replicas agree on to route its searches."""
        return self._subject_tag(tenant, subject)

    @property
    def peer_key(self) -> bytes:
        """The MAC key of requests between this store's replicas (affinity.py): derived
        from the store key, which only they hold."""
        return crypto.derive(self._store_key, "peer-requests")

    @property
    def index_bytes(self) -> int:
        """What the subjects' in-memory indexes hold now (about)."""
        return self._index_bytes

    def _tenant_tag(self, tenant: str) -> str:
        return crypto.tag(self._store_key, f"tenant\0{tenant}")

    def pseudonym(self, kind: str, value: str) -> str:
        """What audit events and bundle manifests call a subject or tenant: keyed by a
        secret of this store (derived from its store key, wrapped by the KEK), so a
        candidate name cannot be checked against them without that key. Erasure removes a
        subject's own key, not this one: the pseudonym stays stable for the trail, and
        only someone holding the store key and the name can link the two."""
        return crypto.tag(self._pseudonym_key, f"{kind}\0{value}")

    def _entry_for(self, tag: str, wrapped: str) -> _Subject:
        entry = self._subjects.get(tag)
        if entry is None or entry.wrapped != wrapped:
            self._drop_index(tag)
            key = self._wrapper.unwrap(wrapped)
            entry = _Subject(tag, wrapped, key, crypto.derive(key, "keywords"))
            self._subjects[tag] = entry
        return entry

    def _lookup(self, tenant: str, subject: str) -> _Subject | None:
        """The subject's keys as the database has them now (erased elsewhere: None)."""
        tag = self._subject_tag(tenant, subject)
        row = first(self._db.rows("SELECT wrapped_key FROM subjects WHERE tag = ?", (tag,)))
        if row is None:
            self._forget(tag)
            return None
        return self._entry_for(tag, str(row["wrapped_key"]))

    def _claim(self, tag: str, *, epoch: bool = False) -> tuple[_Subject, int] | None:
        """Inside a write transaction: take the subject's row (writers of one subject
        queue here, on every replica) and bump its revision. Returns its keys and the
        revision this transaction writes, or None if the subject does not exist."""
        bump = ", epoch = epoch + 1" if epoch else ""
        row = first(
            self._db.rows(
                f"UPDATE subjects SET revision = revision + 1{bump} WHERE tag = ?"
                " RETURNING wrapped_key, revision",
                (tag,),
            )
        )
        if row is None:
            return None
        return self._entry_for(tag, str(row["wrapped_key"])), int(row["revision"])

    def _claim_or_create(
        self, tenant: str, subjects: Iterable[str]
    ) -> dict[str, tuple[_Subject, int]]:
        """_claim_tags for subjects by name: keyed by name."""
        names = {self._subject_tag(tenant, s): s for s in subjects}
        tenant_tag = self._tenant_tag(tenant)
        claimed = self._claim_tags(dict.fromkeys(names, tenant_tag))
        return {names[tag]: c for tag, c in claimed.items()}

    def _claim_tags(self, tags: dict[str, str]) -> dict[str, tuple[_Subject, int]]:
        """Inside a write transaction: take (creating the missing ones) the subjects'
        rows, given as {subject tag: tenant tag}, and bump their revisions, in a few
        statements whatever their number. Only a new subject's key is made (and wrapped:
        a Vault call with transit)."""
        ordered = sorted(tags)
        marks = ",".join("?" * len(ordered))
        if len(ordered) == 1:
            # One row: the UPDATE below locks it, no cycle possible; usually it exists.
            claimed = self._claim(ordered[0])
            if claimed is not None:
                return {ordered[0]: claimed}
            present: set[str] = set()
        else:
            present = {
                str(r["tag"])
                for r in self._db.rows(f"SELECT tag FROM subjects WHERE tag IN ({marks})", ordered)
            }
        missing = [t for t in ordered if t not in present]
        if missing:
            now = self._now()
            self._db.execute(
                "INSERT INTO subjects (tag, tenant, wrapped_key, created_at) VALUES "
                + ",".join("(?,?,?,?)" for _ in missing)
                + " ON CONFLICT (tag) DO NOTHING",
                [
                    value
                    for tag in missing
                    for value in (tag, tags[tag], self._wrapper.wrap(os.urandom(32)), now)
                ],
            )
        if len(ordered) > 1:
            # Every writer inserts (in tag order) before it locks (in tag order): no wait
            # cycle between batches, whichever subjects they share.
            self._db.rows(
                f"SELECT tag FROM subjects WHERE tag IN ({marks})"
                f" ORDER BY tag{self._db.for_update}",
                ordered,
            )
        rows = self._db.rows(
            f"UPDATE subjects SET revision = revision + 1 WHERE tag IN ({marks})"
            " RETURNING tag, wrapped_key, revision",
            ordered,
        )
        return {
            str(r["tag"]): (
                self._entry_for(str(r["tag"]), str(r["wrapped_key"])),
                int(r["revision"]),
            )
            for r in rows
        }

    # -- plumbing -----------------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock, self._db.transaction():
            yield

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _check_vector(self, vector: list[float] | None, param: str) -> NDArray[np.float32] | None:
        if vector is None:
            return None
        if len(vector) != self.dimension:
            raise StoreError(
                f"{param} has {len(vector)} dimensions; this store's embedding model "
                f"({self.embedding_model}) has {self.dimension}",
                param=param,
            )
        array = np.asarray(vector, dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise StoreError(f"{param} holds a value that is not a finite number", param=param)
        return array

    def _expiry(self, fields: RecordFields, created: int) -> int | None:
        if fields.expires_at is not None:
            return micros(fields.expires_at)
        seconds = self.retention.seconds(fields.type)
        return None if seconds is None else created + int(seconds * 1_000_000)

    # -- writes -------------------------------------------------------------------------

    def add(
        self,
        tenant: str,
        items: list[tuple[str, RecordFields]],
        vectors: list[list[float] | None],
    ) -> list[Record]:
        """Add records (one transaction: all or nothing). `vectors[i]` is the embedding
        of items[i] (from the client or the API's embedder)."""
        checked = [self._check_vector(v, f"records[{i}].embedding") for i, v in enumerate(vectors)]
        now = self._now()
        out: list[Record] = []
        with self._tx():
            claimed = self._claim_or_create(tenant, {s for s, _ in items})
            rows = []
            for (subject, fields), vector in zip(items, checked, strict=True):
                entry, revision = claimed[subject]
                record_id = _new_id(now)
                rows.append(
                    self._version_row(
                        entry,
                        revision,
                        subject,
                        record_id,
                        1,
                        fields,
                        vector,
                        now,
                        now,
                        self._expiry(fields, now),
                    )
                )
                out.append(self._record(entry, subject, record_id, 1, fields, now, now, None))
            self._db.insert_versions(rows)
        return out

    def _version_row(
        self,
        entry: _Subject,
        revision: int,
        subject: str,
        record_id: str,
        version: int,
        fields: RecordFields,
        vector: NDArray[np.float32] | None,
        created: int,
        valid_from: int,
        expires: int | None,
        *,
        deleted: bool = False,
    ) -> tuple[dict[str, Any], str | None]:
        """A `versions` row, sealed, and its blinded keyword terms."""
        aad = f"{record_id}:{version}".encode()
        payload = None
        if not deleted:
            body = {
                "subject": subject,
                "text": fields.text,
                "metadata": fields.metadata,
                "agent_id": fields.agent_id,
                "session_id": fields.session_id,
                "confidence": fields.confidence,
                "sensitivity": fields.sensitivity,
                "provenance": fields.provenance.model_dump(),
            }
            payload = crypto.seal(entry.key, json.dumps(body).encode(), aad)
        sealed_vector = None
        if vector is not None:
            sealed_vector = crypto.seal(entry.key, vector.tobytes(), aad + b":vector")
        return (
            {
                "id": record_id,
                "version": version,
                "subject": entry.tag,
                "type": fields.type,
                "agent": self._scope_tag(entry, fields.agent_id),
                "session": self._scope_tag(entry, fields.session_id),
                "created_at": created,
                "updated_at": valid_from,
                "valid_from": valid_from,
                "expires_at": expires,
                "deleted": int(deleted),
                "payload": payload,
                "vector": sealed_vector,
                "vector_model": self.embedding_model if vector is not None else None,
                "vector_dim": len(vector) if vector is not None else None,
                "seq": revision,
            },
            None if deleted else crypto.blind_tokens(entry.words_key, fields.text),
        )

    def _scope_tag(self, entry: _Subject, value: str | None) -> str | None:
        return None if value is None else crypto.tag(entry.key, value)

    def _current(self, tenant: str, record_id: str) -> tuple[_Subject, Row]:
        row = first(
            self._db.rows(
                f"SELECT {_RECORD_V}, s.wrapped_key FROM versions v"
                " JOIN subjects s ON s.tag = v.subject"
                " WHERE v.id = ? AND v.valid_to IS NULL AND s.tenant = ?",
                (record_id, self._tenant_tag(tenant)),
            )
        )
        if row is None or row["deleted"] or self._expired(row):
            raise NotFoundError(f"record {record_id}")
        return self._entry_for(row["subject"], row["wrapped_key"]), row

    def _current_claimed(self, tenant: str, record_id: str) -> tuple[_Subject, int, Row]:
        """Inside a write transaction: the record's current version, read after taking its
        subject (so a writer elsewhere cannot close the same version meanwhile)."""
        entry, _ = self._current(tenant, record_id)
        claimed = self._claim(entry.tag)
        if claimed is None:
            raise NotFoundError(f"record {record_id}")
        entry, revision = claimed
        entry, row = self._current(tenant, record_id)
        return entry, revision, row

    def _expired(self, row: Row) -> bool:
        """Past its lifetime: gone for every read now, whatever the sweep's schedule."""
        return row["expires_at"] is not None and row["expires_at"] <= self._now()

    def _close(self, row: Row, now: int, revision: int) -> None:
        self._db.execute(
            "UPDATE versions SET valid_to = ?, closed_seq = ? WHERE rowid = ?",
            (now, revision, row["rowid"]),
        )

    def update(
        self,
        tenant: str,
        record_id: str,
        subject: str,
        fields: RecordFields,
        vector: list[float] | None,
    ) -> Record:
        """Supersede the current version: it keeps its text and gets valid_to = now."""
        checked = self._check_vector(vector, "embedding")
        now = self._now()
        with self._tx():
            entry, revision, row = self._current_claimed(tenant, record_id)
            if entry.tag != self._subject_tag(tenant, subject):
                raise NotFoundError(f"record {record_id} of subject {subject!r}")
            self._close(row, now, revision)
            version = int(row["version"]) + 1
            created = int(row["created_at"])
            self._db.insert_versions(
                [
                    self._version_row(
                        entry,
                        revision,
                        subject,
                        record_id,
                        version,
                        fields,
                        checked,
                        created,
                        now,
                        self._expiry(fields, created),
                    )
                ]
            )
        return self._record(entry, subject, record_id, version, fields, created, now, None)

    def delete(self, tenant: str, record_id: str) -> None:
        """Close the current version and write a tombstone: history stays, search and
        get no longer see it. (Erasing a subject removes everything, history included.)"""
        now = self._now()
        with self._tx():
            entry, revision, row = self._current_claimed(tenant, record_id)
            self._close(row, now, revision)
            self._db.execute(
                "INSERT INTO versions (id, version, subject, type, created_at, updated_at,"
                " valid_from, deleted, seq) VALUES (?,?,?,?,?,?,?,1,?)",
                (
                    record_id,
                    int(row["version"]) + 1,
                    entry.tag,
                    row["type"],
                    row["created_at"],
                    now,
                    now,
                    revision,
                ),
            )

    def erase_subject(self, tenant: str, subject: str) -> int:
        """Right to be forgotten: every version, keyword row and the subject's key go (on
        SQLite the freed pages are zeroed and the WAL truncated: no trace stays on disk;
        on PostgreSQL what stays in dead rows, WAL and backups is ciphertext whose key
        row is gone)."""
        tag = self._subject_tag(tenant, subject)
        with self._tx():
            if self._claim(tag) is None:
                rowids: list[int] = []
            else:
                rowids = [
                    int(r["rowid"])
                    for r in self._db.rows("SELECT rowid FROM versions WHERE subject = ?", (tag,))
                ]
                self._db.forget_words(rowids)
                self._db.execute("DELETE FROM versions WHERE subject = ?", (tag,))
                self._db.execute("DELETE FROM subjects WHERE tag = ?", (tag,))
        self._forget(tag)
        self._db.reclaim()
        return len(rowids)

    def sweep(self) -> int:
        """Delete records whose lifetime is over (every version). Returns how many."""
        now = self._now()
        with self._tx():
            expired = self._db.rows(
                "SELECT DISTINCT v.id, v.subject FROM versions v WHERE v.valid_to IS NULL"
                " AND v.expires_at IS NOT NULL AND v.expires_at <= ?",
                (now,),
            )
            # Rows go without a trace a replica could follow: a new epoch makes every
            # replica rebuild these subjects' indexes.
            for tag in sorted({str(r["subject"]) for r in expired}):
                self._claim(tag, epoch=True)
            for row in expired:
                rowids = [
                    int(r["rowid"])
                    for r in self._db.rows("SELECT rowid FROM versions WHERE id = ?", (row["id"],))
                ]
                self._db.forget_words(rowids)
                self._db.execute("DELETE FROM versions WHERE id = ?", (row["id"],))
        if expired:
            self._db.reclaim()
        return len(expired)

    # -- reads --------------------------------------------------------------------------

    def _decode(self, entry: _Subject, row: Row, subject: str = "") -> Record:
        """A row as a record. A tombstone has no payload: its subject is `subject`, the
        name the caller knows (from the request, or another version's payload)."""
        aad = f"{row['id']}:{row['version']}".encode()
        body: dict[str, Any] = {}
        if row["payload"] is not None:
            body = json.loads(crypto.open_sealed(entry.key, bytes(row["payload"]), aad))
        return Record(
            id=row["id"],
            version=row["version"],
            subject=body.get("subject", subject),
            type=row["type"],
            text=body.get("text"),
            metadata=body.get("metadata") or {},
            agent_id=body.get("agent_id"),
            session_id=body.get("session_id"),
            confidence=body.get("confidence", 1.0),
            sensitivity=body.get("sensitivity", "internal"),
            provenance=Provenance.model_validate(body.get("provenance") or {}),
            created_at=from_micros(row["created_at"]),
            updated_at=from_micros(row["updated_at"]),
            valid_from=from_micros(row["valid_from"]),
            valid_to=from_micros(row["valid_to"]),
            expires_at=from_micros(row["expires_at"]),
            deleted=bool(row["deleted"]),
        )

    def _record(
        self,
        entry: _Subject,
        subject: str,
        record_id: str,
        version: int,
        fields: RecordFields,
        created: int,
        valid_from: int,
        valid_to: int | None,
    ) -> Record:
        return Record(
            id=record_id,
            version=version,
            subject=subject,
            **fields.model_dump(exclude={"embedding", "expires_at"}),
            created_at=from_micros(created),
            updated_at=from_micros(valid_from),
            valid_from=from_micros(valid_from),
            valid_to=from_micros(valid_to),
            expires_at=from_micros(self._expiry(fields, created)),
        )

    def _rows(self, sql: str, params: Iterable[Any]) -> list[Row]:
        with self._lock:
            return self._db.rows(sql, tuple(params))

    def get(self, tenant: str, record_id: str) -> Record:
        with self._lock:
            entry, row = self._current(tenant, record_id)
            return self._decode(entry, row)

    def history(self, tenant: str, record_id: str) -> list[Record]:
        with self._lock:
            entry, _row = self._current_or_tombstone(tenant, record_id)
            rows = self._rows(
                f"SELECT {_RECORD} FROM versions WHERE id = ? ORDER BY version", (record_id,)
            )
            return _named([self._decode(entry, r) for r in rows])

    def _current_or_tombstone(self, tenant: str, record_id: str) -> tuple[_Subject, Row]:
        rows = self._rows(
            f"SELECT {_RECORD_V}, s.wrapped_key FROM versions v"
            " JOIN subjects s ON s.tag = v.subject"
            " WHERE v.id = ? AND s.tenant = ? ORDER BY v.version DESC LIMIT 1",
            (record_id, self._tenant_tag(tenant)),
        )
        if not rows or self._expired(rows[0]):
            raise NotFoundError(f"record {record_id}")
        return self._entry_for(rows[0]["subject"], rows[0]["wrapped_key"]), rows[0]

    def subject_versions(
        self, tenant: str, subject: str
    ) -> list[tuple[Record, list[float] | None]]:
        """Every version of every record of a subject, with vectors, in (id, version)
        order: what an export holds."""
        with self._lock:
            entry = self._lookup(tenant, subject)
            return [] if entry is None else self._versions_of(entry, subject)

    def _versions_of(
        self, entry: _Subject, subject: str = ""
    ) -> list[tuple[Record, list[float] | None]]:
        rows = self._rows(
            f"SELECT {_RECORD}, vector FROM versions WHERE subject = ? AND id NOT IN"
            " (SELECT id FROM versions"
            " WHERE subject = ? AND valid_to IS NULL AND expires_at IS NOT NULL"
            " AND expires_at <= ?) ORDER BY id, version",
            (entry.tag, entry.tag, self._now()),
        )
        records = _named([self._decode(entry, row, subject) for row in rows])
        return [(r, self._vector_of(entry, row)) for r, row in zip(records, rows, strict=True)]

    def _vector_of(self, entry: _Subject, row: Row) -> list[float] | None:
        array = self._array_of(entry, row)
        return None if array is None else [float(x) for x in array]

    def _array_of(self, entry: _Subject, row: Row) -> NDArray[np.float32] | None:
        if row["vector"] is None:
            return None
        aad = f"{row['id']}:{row['version']}:vector".encode()
        raw = crypto.open_sealed(entry.key, bytes(row["vector"]), aad)
        return np.frombuffer(raw, dtype=np.float32)

    def _matrix(self, entry: _Subject, rows: Sequence[Row]) -> NDArray[np.float32]:
        """The rows' vectors (every row has one), one per line."""
        arrays = [self._array_of(entry, r) for r in rows]
        return np.stack([a for a in arrays if a is not None])

    # -- import -------------------------------------------------------------------------

    def import_versions(
        self, tenant: str, items: list[tuple[Record, list[float] | None]]
    ) -> tuple[int, list[str]]:
        """Insert versions exactly as exported (ids, versions and times kept), in one
        transaction. Returns (versions added, conflicting ids): a version that is already
        here with the same content is skipped; with other content it is a conflict and
        the whole import is refused, changing nothing."""
        with self._tx():
            claimed = self._claim_or_create(tenant, {r.subject for r, _ in items})
            return self._insert_imported([(claimed[r.subject], r, v) for r, v in items])

    # -- migration: one store's subjects, by their keyed tags, into another -------------

    def subject_tags(self) -> list[tuple[str, str]]:
        """(subject tag, tenant tag) of every subject, in tag order."""
        rows = self._rows("SELECT tag, tenant FROM subjects ORDER BY tag", ())
        return [(str(r["tag"]), str(r["tenant"])) for r in rows]

    def tagged_versions(self, tag: str) -> list[tuple[Record, list[float] | None]]:
        """subject_versions for a subject known by its tag (a migration has no names)."""
        with self._lock:
            row = first(self._db.rows("SELECT wrapped_key FROM subjects WHERE tag = ?", (tag,)))
            if row is None:
                return []
            return self._versions_of(self._entry_for(tag, str(row["wrapped_key"])))

    def import_tagged(
        self, tag: str, tenant_tag: str, items: list[tuple[Record, list[float] | None]]
    ) -> int:
        """import_versions for one subject known by its tags: only between stores sharing
        a store key (adopt_store_key), where tags mean the same subject and tenant."""
        with self._tx():
            claimed = self._claim_tags({tag: tenant_tag})[tag]
            added, _ = self._insert_imported([(claimed, r, v) for r, v in items])
            return added

    def adopt_store_key(self, source: Store) -> bool:
        """Make this store use `source`'s store key (wrapped by this store's KEK), so
        subject and tenant tags, and the pseudonyms in audit trails and bundles, mean the
        same in both: a migration copies subjects without knowing their names. Only an
        empty store adopts (its replicas stopped: a running replica keeps the key it read
        at start). Returns False when the keys are already the same (a resumed run)."""
        with self._tx():
            if self._store_key == source._store_key:
                return False
            if first(self._db.rows("SELECT tag FROM subjects LIMIT 1", ())) is not None:
                raise StoreError(
                    "the target store already holds another store's records: migrate into a "
                    "new, empty store",
                    status=409,
                )
            for key, value in (
                ("store_key", self._wrapper.wrap(source._store_key)),
                ("embedding_model", source.embedding_model),
                ("dimension", str(source.dimension)),
            ):
                self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        self._store_key = source._store_key
        self._pseudonym_key = crypto.derive(self._store_key, "audit-pseudonym")
        self.embedding_model, self.dimension = source.embedding_model, source.dimension
        for tag in list(self._subjects):
            self._forget(tag)
        return True

    def _insert_imported(
        self, items: list[tuple[tuple[_Subject, int], Record, list[float] | None]]
    ) -> tuple[int, list[str]]:
        """Inside a write transaction, the subjects claimed: insert what is not here yet;
        raise (rolling everything back) on a conflict."""
        conflicts: list[str] = []
        foreign = 0
        added = 0
        for tag in sorted({entry.tag for (entry, _), _, _ in items}):
            # Imported versions may be closed already: rebuild, not follow.
            self._claim(tag, epoch=True)
        for (entry, revision), record, vector in items:
            checked = self._check_vector(vector, f"record {record.id} embedding")
            existing = self._rows(
                f"SELECT {_RECORD} FROM versions WHERE id = ? AND version = ?",
                (record.id, record.version),
            )
            if existing:
                row = existing[0]
                if row["subject"] != entry.tag:
                    # Someone else's record (another subject, maybe another tenant):
                    # counted, never named, so an import cannot probe for ids.
                    foreign += 1
                    continue
                same = self._decode(entry, row, record.subject).model_dump(
                    exclude={"score"}
                ) == record.model_dump(exclude={"score"})
                if not same:
                    conflicts.append(record.id)
                continue
            fields = RecordFields(
                type=record.type,
                text=record.text or "-",
                metadata=record.metadata,
                agent_id=record.agent_id,
                session_id=record.session_id,
                confidence=record.confidence,
                sensitivity=record.sensitivity,
                provenance=record.provenance,
            )
            (rowid,) = self._db.insert_versions(
                [
                    self._version_row(
                        entry,
                        revision + 1,
                        record.subject,
                        record.id,
                        record.version,
                        fields,
                        checked,
                        micros(record.created_at),
                        micros(record.valid_from),
                        None if record.expires_at is None else micros(record.expires_at),
                        deleted=record.deleted,
                    )
                ]
            )
            self._db.execute(
                "UPDATE versions SET updated_at = ?, valid_to = ? WHERE rowid = ?",
                (
                    micros(record.updated_at),
                    None if record.valid_to is None else micros(record.valid_to),
                    rowid,
                ),
            )
            added += 1
        if conflicts or foreign:
            raise ImportConflictError(conflicts, foreign)
        return added, conflicts

    # -- search -------------------------------------------------------------------------

    def search(
        self, tenant: str, request: SearchRequest, query_vector: list[float] | None
    ) -> list[Record]:
        vector = self._check_vector(query_vector, "embedding")
        with self._lock:
            wants_vectors = vector is not None and request.mode in ("hybrid", "vector")
            wants_words = bool(request.query) and request.mode in ("hybrid", "keyword")
            in_memory = wants_vectors or (wants_words and self._db.index_terms is not None)
            synced = in_memory and request.as_of is None
            entry = (
                self._synced(tenant, request.subject)
                if synced
                else self._lookup(tenant, request.subject)
            )
            if entry is None:
                return []
            where, params = self._filters(entry, request)
            pool = request.top_k * 4
            ranked: dict[int, float] = {}
            if wants_vectors:
                assert vector is not None
                if request.as_of is None:
                    hits = self._vector_hits(entry, vector, where, params, pool)
                else:
                    hits = self._exact_hits(entry, vector, where, params, pool)
                for rank, rowid in enumerate(hits):
                    ranked[rowid] = ranked.get(rowid, 0.0) + 1.0 / (_RRF_K + rank + 1)
            if wants_words:
                assert request.query is not None
                for rank, rowid in enumerate(
                    self._keyword_hits(
                        entry, request.query, where, params, pool, past=request.as_of is not None
                    )
                ):
                    ranked[rowid] = ranked.get(rowid, 0.0) + 1.0 / (_RRF_K + rank + 1)
            if not ranked:
                return []
            return self._best(entry, ranked, request.top_k, synced=synced)

    def _best(
        self, entry: _Subject, ranked: dict[int, float], top_k: int, *, synced: bool
    ) -> list[Record]:
        """The `top_k` best candidates that still exist and have not expired (the hourly
        sweep may not have deleted them yet), decoded. A synced subject knows its
        records' lifetimes, so only the rows returned are read (one statement, unless a
        candidate was erased or swept since the ranking); otherwise every candidate is
        read at once."""
        now = self._now()
        order = sorted(ranked.items(), key=lambda kv: (-kv[1], kv[0]))
        if synced:
            order = [kv for kv in order if entry.expiring.get(kv[0], now + 1) > now]
        out: list[Record] = []
        at = 0
        while len(out) < top_k and at < len(order):
            batch = order[at : at + (top_k - len(out) if synced else len(order))]
            at += len(batch)
            rows = {
                r["rowid"]: r
                for r in self._rows(
                    f"SELECT {_RECORD} FROM versions WHERE rowid IN ({','.join('?' * len(batch))})",
                    [rowid for rowid, _ in batch],
                )
            }
            for rowid, score in batch:
                row = rows.get(rowid)
                if row is None or (row["expires_at"] is not None and row["expires_at"] <= now):
                    continue
                record = self._decode(entry, row)
                record.score = round(score, 6)
                out.append(record)
                if len(out) == top_k:
                    break
        return out

    def _filters(self, entry: _Subject, request: SearchRequest) -> tuple[str, list[Any]]:
        where = ["v.subject = ?", "v.deleted = 0"]
        params: list[Any] = [entry.tag]
        if request.as_of is None:
            where.append("v.valid_to IS NULL")
        else:
            t = micros(request.as_of)
            where.append("v.valid_from <= ? AND (v.valid_to IS NULL OR v.valid_to > ?)")
            params += [t, t]
        if request.types:
            where.append(f"v.type IN ({','.join('?' * len(request.types))})")
            params += list(request.types)
        for column, value in (("agent", request.agent_id), ("session", request.session_id)):
            if value is not None:
                where.append(f"v.{column} = ?")
                params.append(self._scope_tag(entry, value))
        if request.created_after is not None:
            where.append("v.created_at >= ?")
            params.append(micros(request.created_after))
        if request.created_before is not None:
            where.append("v.created_at < ?")
            params.append(micros(request.created_before))
        return " AND ".join(where), params

    def _keyword_hits(
        self,
        entry: _Subject,
        query: str,
        where: str,
        params: list[Any],
        limit: int,
        *,
        past: bool,
    ) -> list[int]:
        """`past`: a search as of a past time, which the in-memory index (current
        versions only) cannot answer."""
        tokens = list(dict.fromkeys(crypto.blind_tokens(entry.words_key, query).split()))
        if not tokens:
            return []
        words = entry.words
        if words is None or past:
            return self._db.keyword_hits(tokens, where, params, limit)
        if where == _SIMPLE:
            return words.search(tokens, limit)
        # With filters, look deeper and keep the matching ones (as for vectors).
        return self._keep(words.search(tokens, max(limit * 10, 256)), where, params, limit)

    def _keep(self, ranked: list[int], where: str, params: list[Any], limit: int) -> list[int]:
        """The first `limit` of `ranked` (version rowids) that the filters admit."""
        if not ranked:
            return []
        allowed = {
            int(r["rowid"])
            for r in self._db.rows(
                f"SELECT v.rowid FROM versions v WHERE {where} AND v.rowid IN"
                f" ({','.join('?' * len(ranked))})",
                (*params, *ranked),
            )
        }
        return [rowid for rowid in ranked if rowid in allowed][:limit]

    def _vector_hits(
        self,
        entry: _Subject,
        vector: NDArray[np.float32],
        where: str,
        params: list[Any],
        limit: int,
    ) -> list[int]:
        index = entry.index
        if index is None or len(index) == 0:
            return []
        simple = where == _SIMPLE
        # With filters, look deeper and keep the matching ones: one subject's records
        # are few enough that even the whole index is a cheap search.
        keys = index.search(vector, limit if simple else max(limit * 10, 256))
        if simple:
            return keys[:limit]
        return self._keep(keys, where, params, limit)

    def _exact_hits(
        self,
        entry: _Subject,
        vector: NDArray[np.float32],
        where: str,
        params: list[Any],
        limit: int,
    ) -> list[int]:
        """Past versions are not in the live index: score them exactly."""
        rows = self._rows(
            f"SELECT v.rowid, v.id, v.version, v.vector FROM versions v WHERE {where}"
            " AND v.vector IS NOT NULL",
            params,
        )
        if not rows:
            return []
        matrix = self._matrix(entry, rows)
        scores = _cosine(matrix, vector)
        order = np.argsort(-scores, kind="stable")[:limit]
        return [int(rows[i]["rowid"]) for i in order]

    def _synced(self, tenant: str, subject: str) -> _Subject | None:
        """The subject with its vector index as of now: built on first use, then kept in
        step with the rows written since (here or by another replica), read in the same
        statement as the subject's revision so the two agree."""
        tag = self._subject_tag(tenant, subject)
        entry = self._subjects.get(tag)
        follow = entry is not None and entry.index is not None
        columns = _INDEX_COLUMNS
        if self._db.index_terms is not None:
            columns += f", {self._db.index_terms} AS terms"
        if follow:
            assert entry is not None
            rows = self._db.rows(
                f"SELECT s.wrapped_key, s.revision, s.epoch, {columns} FROM subjects s"
                " LEFT JOIN versions v ON v.subject = s.tag AND (v.seq > ? OR v.closed_seq > ?)"
                " WHERE s.tag = ?",
                (entry.revision, entry.revision, tag),
            )
            if rows and rows[0]["wrapped_key"] == entry.wrapped and rows[0]["epoch"] == entry.epoch:
                self._follow(entry, rows)
                self._used(entry)
                return entry
        rows = self._db.rows(
            f"SELECT s.wrapped_key, s.revision, s.epoch, {columns} FROM subjects s"
            " LEFT JOIN versions v ON v.subject = s.tag AND v.valid_to IS NULL"
            " AND v.deleted = 0 WHERE s.tag = ?",
            (tag,),
        )
        if not rows:
            self._forget(tag)
            return None
        self._drop_index(tag)
        entry = self._entry_for(tag, str(rows[0]["wrapped_key"]))
        self._build(entry, rows)
        self._used(entry)
        return entry

    def _used(self, entry: _Subject) -> None:
        """Account for `entry`'s indexes as the most recently searched, and drop the
        least recently searched others' while the budget is exceeded."""
        assert entry.index is not None
        size = entry.index.nbytes + (entry.words.nbytes if entry.words is not None else 0)
        self._index_bytes += size - entry.nbytes
        entry.nbytes = size
        self._indexed[entry.tag] = None
        self._indexed.move_to_end(entry.tag)
        if self._budget is None:
            return
        while self._index_bytes > self._budget and len(self._indexed) > 1:
            oldest = next(iter(self._indexed))
            if oldest == entry.tag:
                break
            self._drop_index(oldest)

    def _forget(self, tag: str) -> None:
        self._drop_index(tag)
        self._subjects.pop(tag, None)

    def _drop_index(self, tag: str) -> None:
        self._indexed.pop(tag, None)
        entry = self._subjects.get(tag)
        if entry is None or entry.index is None:
            return
        self._index_bytes -= entry.nbytes
        entry.index, entry.words, entry.expiring, entry.nbytes = None, None, {}, 0

    def _build(self, entry: _Subject, rows: Sequence[Row]) -> None:
        live = [r for r in rows if r["rowid"] is not None and r["vector"] is not None]
        matrix = self._matrix(entry, live) if live else np.zeros((0, self.dimension), np.float32)
        entry.index = vectors.build(self.dimension, [int(r["rowid"]) for r in live], matrix)
        if self._db.index_terms is not None:
            entry.words = KeywordIndex(
                {
                    int(r["rowid"]): self._db.parse_terms(r["terms"])
                    for r in rows
                    if r["rowid"] is not None
                }
            )
        entry.expiring = {
            int(r["rowid"]): int(r["expires_at"])
            for r in rows
            if r["rowid"] is not None and r["expires_at"] is not None
        }
        entry.revision = int(rows[0]["revision"])
        entry.epoch = int(rows[0]["epoch"])

    def _follow(self, entry: _Subject, rows: Sequence[Row]) -> None:
        index = entry.index
        assert index is not None
        for row in rows:
            if row["rowid"] is None:
                continue
            key = int(row["rowid"])
            index.remove(key)
            entry.expiring.pop(key, None)
            live = row["valid_to"] is None and not row["deleted"]
            if live and row["vector"] is not None:
                vector = self._array_of(entry, row)
                assert vector is not None
                index.add(key, vector)
            if live and row["expires_at"] is not None:
                entry.expiring[key] = int(row["expires_at"])
            if entry.words is not None:
                if live:
                    entry.words.add(key, self._db.parse_terms(row["terms"]))
                else:
                    entry.words.remove(key)
        entry.index = vectors.grown(index, self.dimension)
        entry.revision = int(rows[0]["revision"])

    # -- re-embedding and stats ---------------------------------------------------------

    def needs_reembed(self) -> bool:
        model, dim = self.stored_embedding_model()
        return (model, dim) != (self.embedding_model, self.dimension)

    def reembed(self, embed: Callable[[list[str]], list[list[float]]], batch: int = 64) -> int:
        """Re-embed every current record with the configured model: vectors from two models
        are never mixed in one index. Runs before the store serves."""
        done = 0
        with self._tx():
            # Every subject: a new epoch (replicas rebuild), and its row taken (writers wait).
            self._db.execute("UPDATE subjects SET revision = revision + 1, epoch = epoch + 1")
            rows = self._rows(
                "SELECT v.rowid, v.id, v.version, v.payload, v.subject, s.wrapped_key FROM"
                " versions v JOIN subjects s ON s.tag = v.subject WHERE v.deleted = 0",
                (),
            )
            self._db.execute(
                "UPDATE versions SET vector = NULL, vector_model = NULL, vector_dim = NULL"
            )
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                texts = []
                for row in chunk:
                    entry = self._entry_for(row["subject"], row["wrapped_key"])
                    aad = f"{row['id']}:{row['version']}".encode()
                    texts.append(
                        json.loads(crypto.open_sealed(entry.key, bytes(row["payload"]), aad))[
                            "text"
                        ]
                    )
                for row, vector in zip(chunk, embed(texts), strict=True):
                    entry = self._entry_for(row["subject"], row["wrapped_key"])
                    array = self._check_vector(vector, "embedding")
                    assert array is not None
                    aad = f"{row['id']}:{row['version']}:vector".encode()
                    self._db.execute(
                        "UPDATE versions SET vector = ?, vector_model = ?, vector_dim = ?"
                        " WHERE rowid = ?",
                        (
                            crypto.seal(entry.key, array.tobytes(), aad),
                            self.embedding_model,
                            self.dimension,
                            row["rowid"],
                        ),
                    )
                    done += 1
            for key, value in (
                ("embedding_model", self.embedding_model),
                ("dimension", str(self.dimension)),
            ):
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        for tag in list(self._indexed):
            self._drop_index(tag)
        return done

    def counts(self, tenant: str | None = None) -> Counts:
        """Live records and subjects: one tenant's (what its keys may see), or the whole
        store's (None: for the operator, which sees no tenant)."""
        join, where = "", ""
        params: tuple[str, ...] = ()
        if tenant is not None:
            join = " JOIN subjects s ON s.tag = v.subject"
            where = " AND s.tenant = ?"
            params = (self._tenant_tag(tenant),)
        with self._lock:
            row = self._db.rows(
                "SELECT count(*) AS records,"
                " count(*) FILTER (WHERE v.agent IS NULL AND v.session IS NULL) AS user_scope,"
                " count(*) FILTER (WHERE v.agent IS NOT NULL AND v.session IS NULL) AS agent,"
                " count(*) FILTER (WHERE v.session IS NOT NULL) AS session"
                f" FROM versions v{join} WHERE v.valid_to IS NULL AND v.deleted = 0{where}",
                params,
            )[0]
            subjects = self._db.rows(
                "SELECT count(*) AS n FROM subjects" + (" WHERE tenant = ?" if tenant else ""),
                params,
            )[0]["n"]
        return Counts(
            int(row["records"]),
            int(subjects),
            int(row["user_scope"]),
            int(row["agent"]),
            int(row["session"]),
        )


class ImportConflictError(StoreError):
    def __init__(self, ids: list[str], foreign: int = 0) -> None:
        """`ids`: the subject's own versions that differ; `foreign`: versions whose ids
        belong to another subject here (counted only: naming them would tell one tenant
        which ids another holds)."""
        parts = []
        if ids:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            parts.append(
                f"{len(ids)} record version(s) already exist here with different content ({shown})"
            )
        if foreign:
            parts.append(f"{foreign} record version(s) use ids this store already holds")
        super().__init__("; ".join(parts) + "; nothing was imported", status=409)
        self.ids = ids


def _new_id(now_micros: int) -> str:
    """A record id ordered by time (48 bits of milliseconds, then 80 random bits, as in a
    UUIDv7): new rows land at the end of the id index instead of on a random page of
    it, which at a million records kept PostgreSQL rewriting old index pages. It tells
    no more than `created_at`, which every record shows."""
    return f"mem_{(now_micros // 1000) & 0xFFFFFFFFFFFF:012x}{os.urandom(10).hex()}"


def _named(records: list[Record]) -> list[Record]:
    """Tombstones (no payload) named after their record's other versions."""
    names = {r.id: r.subject for r in records if r.subject}
    return [
        r if r.subject or r.id not in names else r.model_copy(update={"subject": names[r.id]})
        for r in records
    ]


def _cosine(matrix: NDArray[np.float32], vector: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(vector) or 1.0)
    norms[norms == 0] = 1.0
    result: NDArray[np.float32] = (matrix @ vector) / norms
    return result
