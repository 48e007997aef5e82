"""The memory store library on both engines: a real SQLite file and a real PostgreSQL
(tests/pg_server.py), with a key file (local mode's KEK).

Vectors here are deterministic bag-of-words hashes, not a model: the store's contract
is about any vector of its dimension, and the real embedder is exercised in the
integration tests.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from freehold_serving.memory import crypto
from freehold_serving.memory.database import Database, SqliteDatabase
from freehold_serving.memory.postgres import Credentials, PostgresDatabase
from freehold_serving.memory.records import RecordFields, SearchRequest
from freehold_serving.memory.store import (
    ImportConflictError,
    NotFoundError,
    Retention,
    Store,
    StoreError,
)
from tests.pg_server import Postgres

DIM = 32


def vec(text: str) -> list[float]:
    v = np.zeros(DIM, dtype=np.float32)
    for word in crypto.words(text):
        v[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
    return [float(x) for x in v]


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


# A place for a store: `where(name)` opens the same database each time for one name.
Where = Callable[[str], Database]


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    if request.param == "sqlite":

        def sqlite(name: str) -> Database:
            (tmp_path / name).mkdir(exist_ok=True)
            return SqliteDatabase(tmp_path / name / "memory.db")

        return sqlite
    pg: Postgres = request.getfixturevalue("postgres")
    database = pg.create_database("t" + uuid.uuid4().hex[:12])

    def postgres(name: str) -> Database:
        return PostgresDatabase(
            pg.conninfo(database),
            schema=name,
            credentials=lambda: Credentials(pg.user, pg.password),
        )

    return postgres


@pytest.fixture
def store(where: Where, tmp_path: Path, clock: Clock) -> Store:
    return store_at(where, tmp_path, clock)


def open_store(tmp_path: Path, clock: Clock, **kw: object) -> Store:
    """A store on SQLite in tmp_path (the tests of what is not about the engine)."""
    return Store(
        tmp_path / "memory.db",
        crypto.FileKeyWrapper(tmp_path / "keys" / "store.key"),
        embedding_model="test-bow",
        dimension=DIM,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def store_at(where: Where, tmp_path: Path, clock: Clock, name: str = "s", **kw: object) -> Store:
    wrapper = crypto.FileKeyWrapper(tmp_path / "keys" / name / "store.key")
    return Store(
        where(name),
        wrapper,
        embedding_model="test-bow",
        dimension=DIM,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def add(store: Store, subject: str, text: str, tenant: str = "acme", **fields: object) -> str:
    record = store.add(tenant, [(subject, RecordFields(text=text, **fields))], [vec(text)])[0]  # type: ignore[arg-type]
    return record.id


def search(store: Store, subject: str, query: str, tenant: str = "acme", **kw: object) -> list[str]:
    request = SearchRequest(subject=subject, query=query, **kw)  # type: ignore[arg-type]
    return [r.text or "" for r in store.search(tenant, request, vec(query))]


def test_add_get_and_hybrid_search(store: Store) -> None:
    add(store, "alice", "Alice prefers window seats on trains", type="preference")
    add(store, "alice", "Alice lives in Lyon")
    rid = add(store, "alice", "Alice is allergic to peanuts", type="fact")
    add(store, "bob", "Bob is allergic to cats")
    assert store.get("acme", rid).text == "Alice is allergic to peanuts"
    assert search(store, "alice", "allergic")[0] == "Alice is allergic to peanuts"
    assert "Bob is allergic to cats" not in search(store, "alice", "allergic")
    assert search(store, "alice", "allergic", types=["preference"]) == [
        "Alice prefers window seats on trains"
    ]
    assert search(store, "alice", "peanuts", mode="keyword") == ["Alice is allergic to peanuts"]


def test_tenants_never_see_each_other(store: Store) -> None:
    rid = add(store, "alice", "a secret of acme's alice", tenant="acme")
    add(store, "alice", "globex's alice likes tea", tenant="globex")
    with pytest.raises(NotFoundError):
        store.get("globex", rid)
    with pytest.raises(NotFoundError):
        store.delete("globex", rid)
    assert search(store, "alice", "secret", tenant="globex") == ["globex's alice likes tea"]
    assert search(store, "alice", "secret", tenant="acme") == ["a secret of acme's alice"]


def test_update_supersedes_and_as_of_sees_the_past(store: Store, clock: Clock) -> None:
    rid = add(store, "alice", "Alice lives in Lyon", type="fact")
    before = datetime.fromtimestamp(clock.t + 1, UTC)
    clock.t += 10
    store.update(
        "acme",
        rid,
        "alice",
        RecordFields(text="Alice lives in Geneva", type="fact"),
        vec("Alice lives in Geneva"),
    )
    assert store.get("acme", rid).text == "Alice lives in Geneva"
    history = store.history("acme", rid)
    assert [(h.version, h.text, h.valid_to is None) for h in history] == [
        (1, "Alice lives in Lyon", False),
        (2, "Alice lives in Geneva", True),
    ]
    assert search(store, "alice", "lives") == ["Alice lives in Geneva"]
    assert search(store, "alice", "lives", as_of=before) == ["Alice lives in Lyon"]
    clock.t += 10
    store.delete("acme", rid)
    with pytest.raises(NotFoundError):
        store.get("acme", rid)
    assert search(store, "alice", "lives") == []
    assert [h.deleted for h in store.history("acme", rid)] == [False, False, True]


def test_wrong_dimension_is_refused_and_nothing_changes(store: Store) -> None:
    with pytest.raises(StoreError, match=r"records\[1\]\.embedding has 3 dimensions"):
        store.add(
            "acme",
            [("alice", RecordFields(text="one")), ("alice", RecordFields(text="two"))],
            [vec("one"), [1.0, 2.0, 3.0]],
        )
    assert store.counts().records == 0


def raw_bytes(store: Store, tmp_path: Path) -> bytes:
    """Everything the engine has written to disk for this store."""
    if isinstance(store.database, SqliteDatabase):
        return b"".join(p.read_bytes() for p in tmp_path.glob("*/memory.db*"))
    assert isinstance(store.database, PostgresDatabase)
    pg = store.database
    pg.execute("CHECKPOINT")  # (superuser) the shared buffers written out to the files
    data_dir = Path(str(pg.rows("SHOW data_directory")[0]["data_directory"]))
    return b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())


def test_nothing_in_the_clear_and_erasure_leaves_no_trace(store: Store, tmp_path: Path) -> None:
    canary = "zebracanary4217"
    rid = add(store, "carol", f"Carol's passport number is {canary}")
    add(store, "dave", "Dave keeps a diary")
    assert canary.encode() not in raw_bytes(store, tmp_path)
    assert b"carol" not in raw_bytes(store, tmp_path).lower()
    # What would identify Carol's data even though it is encrypted: the record's
    # ciphertext, her keyword tokens and her wrapped key.
    payload = bytes(
        store.database.rows("SELECT payload FROM versions WHERE id = ?", (rid,))[0]["payload"]
    )
    carol = store._lookup("acme", "carol")
    assert carol is not None
    token = crypto.blind_tokens(carol.words_key, canary).encode()
    data = raw_bytes(store, tmp_path)
    assert payload[20:60] in data
    if isinstance(store.database, SqliteDatabase):
        assert token in data
    assert store.erase_subject("acme", "carol") == 1
    assert store.database.rows("SELECT * FROM versions WHERE subject = ?", (carol.tag,)) == []
    assert store.database.rows("SELECT * FROM subjects WHERE tag = ?", (carol.tag,)) == []
    if isinstance(store.database, SqliteDatabase):
        # Zeroed pages and a truncated WAL: not even the ciphertext stays on disk. (On
        # PostgreSQL dead rows keep ciphertext until autovacuum reuses their space; its
        # key went with the subject's row.)
        data = raw_bytes(store, tmp_path)
        assert payload[20:60] not in data and token not in data
    assert search(store, "carol", canary) == []
    assert search(store, "dave", "diary") == ["Dave keeps a diary"]
    assert store.counts().subjects == 1


def test_retention_sweep(where: Where, tmp_path: Path, clock: Clock) -> None:
    store = store_at(
        where,
        tmp_path,
        clock,
        retention=Retention(default_seconds=None, per_type={"episode": 3600}),
    )
    add(store, "alice", "We talked about the weather", type="episode")
    keep = add(store, "alice", "Alice is vegetarian", type="fact")
    clock.t += 3599
    assert store.sweep() == 0
    clock.t += 2
    assert store.sweep() == 1
    assert [
        r.id for r in store.search("acme", SearchRequest(subject="alice", query="a"), None)
    ] in (
        [],
        [keep],
    )
    assert store.counts().records == 1


def test_reopen_keeps_everything_and_reembeds_on_model_change(
    where: Where, tmp_path: Path, clock: Clock
) -> None:
    store = store_at(where, tmp_path, clock)
    add(store, "alice", "Alice likes jazz")
    store.close()
    again = store_at(where, tmp_path, clock)
    assert search(again, "alice", "jazz") == ["Alice likes jazz"]
    again.close()
    changed = Store(
        where("s"),
        crypto.FileKeyWrapper(tmp_path / "keys" / "s" / "store.key"),
        embedding_model="other-model",
        dimension=8,
        clock=clock,
    )
    assert changed.needs_reembed()
    assert changed.reembed(lambda texts: [[1.0] * 8 for _ in texts]) == 1
    assert not changed.needs_reembed()
    got = changed.search("acme", SearchRequest(subject="alice", mode="vector"), [1.0] * 8)
    assert [r.text for r in got] == ["Alice likes jazz"]


def test_wrong_key_file_cannot_open(where: Where, tmp_path: Path, clock: Clock) -> None:
    store_at(where, tmp_path, clock).close()
    (tmp_path / "keys" / "s" / "store.key").unlink()
    with pytest.raises(crypto.CryptoError, match="does not unwrap"):
        store_at(where, tmp_path, clock)


def test_import_round_trip_and_conflict(where: Where, tmp_path: Path, clock: Clock) -> None:
    source = store_at(where, tmp_path, clock, "a")
    rid = add(source, "alice", "Alice lives in Lyon")
    clock.t += 5
    source.update("acme", rid, "alice", RecordFields(text="Alice lives in Nice"), vec("Nice"))
    exported = source.subject_versions("acme", "alice")
    target = store_at(where, tmp_path, clock, "b")
    assert target.import_versions("acme", exported) == (2, [])
    assert target.subject_versions("acme", "alice") == exported
    assert target.import_versions("acme", exported) == (0, [])  # idempotent
    other = store_at(where, tmp_path, clock, "c")
    changed = [(r.model_copy(update={"text": "forged"}), v) for r, v in exported]
    other.import_versions("acme", exported[:1])
    with pytest.raises(ImportConflictError):
        other.import_versions("acme", changed)
    assert [r.text for r, _ in other.subject_versions("acme", "alice")] == ["Alice lives in Lyon"]


def test_a_deleted_record_travels_with_its_subject(
    where: Where, tmp_path: Path, clock: Clock
) -> None:
    """A tombstone has no sealed payload; exported, it still names its subject, so an
    import puts it back beside the record's other versions (not under a nameless one)."""
    source = store_at(where, tmp_path, clock, "a")
    rid = add(source, "alice", "Alice lives in Lyon")
    source.delete("acme", rid)
    exported = source.subject_versions("acme", "alice")
    assert [(r.subject, r.deleted) for r, _ in exported] == [("alice", False), ("alice", True)]
    target = store_at(where, tmp_path, clock, "b")
    assert target.import_versions("acme", exported) == (2, [])
    assert target.subject_versions("acme", "alice") == exported
    assert [r.subject for r in target.history("acme", rid)] == ["alice", "alice"]
    assert target.counts("acme").subjects == 1


def test_replicas_writing_batches_of_shared_subjects_never_deadlock(
    where: Where, tmp_path: Path, clock: Clock
) -> None:
    """Batches of many subjects, new and existing, shared between two replicas writing at
    once: every batch commits (PostgreSQL would abort one of two transactions waiting on
    each other), and every subject gets exactly one key."""
    if where("s").engine == "sqlite":
        pytest.skip("one writer per SQLite file: replicas are a PostgreSQL feature")
    import random
    import threading

    stores = [store_at(where, tmp_path, clock), store_at(where, tmp_path, clock)]
    errors: list[BaseException] = []

    def write(store: Store, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(30):
                subjects = rng.sample([f"user-{i}" for i in range(40)], 12)
                items = [(s, RecordFields(text=f"batch {seed}.{n} for {s}")) for s in subjects]
                store.add("acme", items, [vec(t.text) for _, t in items])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stores[0].counts("acme").records == 4 * 30 * 12
    keys = stores[0].database.rows("SELECT count(*) AS n, count(DISTINCT tag) AS d FROM subjects")
    assert keys[0]["n"] == keys[0]["d"] == stores[0].counts("acme").subjects


def test_a_search_skips_records_past_their_lifetime_before_the_sweep(
    where: Where, tmp_path: Path, clock: Clock
) -> None:
    """Expired records drop out of a search before the hourly sweep deletes them, and the
    answer is still filled from the next candidates: for records known when the index was
    built and for records the index followed later."""
    store = store_at(
        where, tmp_path, clock, retention=Retention(default_seconds=None, per_type={"episode": 60})
    )
    facts = {add(store, "alice", f"Alice fact {i} about green tea", type="fact") for i in range(3)}
    add(store, "alice", "Alice episode about green tea", type="episode")
    assert len(search(store, "alice", "green tea", mode="vector")) == 4  # the index is built
    add(store, "alice", "Alice episode two about green tea", type="episode")  # followed
    assert len(search(store, "alice", "green tea", mode="vector")) == 5
    clock.t += 61
    for mode in ("vector", "hybrid", "keyword"):
        request = SearchRequest(subject="alice", query="green tea", top_k=4, mode=mode)  # type: ignore[arg-type]
        found = store.search("acme", request, vec("green tea"))
        assert {r.id for r in found} == facts, mode


def test_the_index_budget_drops_the_least_recently_searched_subjects(
    where: Where, tmp_path: Path, clock: Clock
) -> None:
    """Past the budget, the indexes of the subjects searched longest ago go (and come back
    from the database on their next search, with the same answers)."""
    unbounded = store_at(where, tmp_path, clock)
    subjects = [f"user{i}" for i in range(4)]
    for subject in subjects:
        unbounded.add(
            "acme",
            [(subject, RecordFields(text=f"{subject} likes tea number {n}")) for n in range(40)],
            [vec(f"{subject} likes tea number {n}") for n in range(40)],
        )
    expected = {s: search(unbounded, s, "tea number 7") for s in subjects}
    one = unbounded.index_bytes // 4
    store = store_at(where, tmp_path, clock, index_budget_bytes=int(one * 2.5))
    for subject in subjects:
        assert search(store, subject, "tea number 7") == expected[subject]
    assert store.index_bytes <= int(one * 2.5)
    assert list(store._indexed) == [store.subject_tag("acme", s) for s in subjects[2:]]
    # user1 comes back (rebuilt), user2 goes: the least recently searched.
    assert search(store, "user1", "tea number 7") == expected["user1"]
    assert list(store._indexed) == [store.subject_tag("acme", s) for s in ("user3", "user1")]
    # A subject larger than the whole budget is still searched (and kept alone).
    tiny = store_at(where, tmp_path, clock, index_budget_bytes=1)
    assert search(tiny, "user0", "tea number 7") == expected["user0"]
    assert search(tiny, "user3", "tea number 7") == expected["user3"]
    assert len(tiny._indexed) == 1


def test_replicas_see_each_others_writes(where: Where, tmp_path: Path, clock: Clock) -> None:
    """Two store objects on one database (PostgreSQL replicas; on SQLite, a reopened
    file): each one's vector index follows the other's adds, updates, deletes and
    erasures, without a rebuild for each write."""
    if where("s").engine == "sqlite":
        pytest.skip("one writer per SQLite file: replicas are a PostgreSQL feature")
    a = store_at(where, tmp_path, clock)
    b = store_at(where, tmp_path, clock)
    first = add(a, "alice", "Alice plays the cello")
    assert search(b, "alice", "cello", mode="vector") == ["Alice plays the cello"]
    index = b._subjects[b._lookup("acme", "alice").tag].index  # type: ignore[union-attr]
    add(a, "alice", "Alice grows tomatoes")
    assert search(b, "alice", "tomatoes", mode="vector")[0] == "Alice grows tomatoes"
    a.update("acme", first, "alice", RecordFields(text="Alice plays the viola"), vec("viola"))
    assert "Alice plays the cello" not in search(b, "alice", "cello", mode="vector")
    assert search(b, "alice", "viola", mode="vector")[0] == "Alice plays the viola"
    # The same index object all along: followed, not rebuilt.
    assert b._subjects[b._lookup("acme", "alice").tag].index is index  # type: ignore[union-attr]
    # Keywords too (on PostgreSQL ranked in each replica's memory, following the same way).
    assert search(b, "alice", "viola", mode="keyword") == ["Alice plays the viola"]
    assert search(b, "alice", "cello", mode="keyword") == []
    a.delete("acme", first)
    assert search(b, "alice", "viola", mode="vector") == ["Alice grows tomatoes"]
    assert search(b, "alice", "viola", mode="keyword") == []
    a.erase_subject("acme", "alice")
    assert search(b, "alice", "tomatoes", mode="vector") == []
    add(a, "alice", "Alice started again")
    assert search(b, "alice", "again", mode="vector") == ["Alice started again"]
