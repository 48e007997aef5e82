"""Migrating a memory store between engines (freehold_serving.memory.migrate): a real
SQLite file to a real PostgreSQL (tests/pg_server.py) and back, with key files as KEKs.

Vectors are deterministic bag-of-words hashes (tests/unit/test_memory_store.py's): a
migration copies vectors and never embeds.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from freehold_serving.memory import bundle, crypto
from freehold_serving.memory.database import SqliteDatabase
from freehold_serving.memory.migrate import MigrationError, Side, migrate
from freehold_serving.memory.postgres import Credentials, PostgresDatabase
from freehold_serving.memory.records import RecordFields, SearchRequest
from freehold_serving.memory.store import Store
from freehold_serving.signing import DocumentSignatureError, FileSigner, verify_document
from tests.pg_server import Postgres
from tests.unit.test_memory_store import DIM, Clock, add, vec


def side(tmp_path: Path, name: str, database: SqliteDatabase | PostgresDatabase) -> Side:
    keys = tmp_path / "keys" / name
    store = Store(
        database,
        crypto.FileKeyWrapper(keys / "store.key"),
        embedding_model="test-bow",
        dimension=DIM,
        clock=Clock(),
    )
    return Side(store, FileSigner(keys / "signing.pem"), database.engine, name)


def sqlite_side(tmp_path: Path, name: str) -> Side:
    (tmp_path / name).mkdir()
    return side(tmp_path, name, SqliteDatabase(tmp_path / name / "memory.db"))


def postgres_side(tmp_path: Path, pg: Postgres, name: str) -> Side:
    database = pg.create_database("m" + uuid.uuid4().hex[:12])
    db = PostgresDatabase(
        pg.conninfo(database),
        schema="store",
        credentials=lambda: Credentials(pg.user, pg.password),
    )
    return side(tmp_path, name, db)


def fill(store: Store) -> dict[str, str]:
    """Two tenants, updates, a deletion (tombstone), agent-scoped records, a subject all
    of whose records were deleted."""
    ids = {
        "lyon": add(store, "alice", "Alice lives in Lyon"),
        "cello": add(store, "alice", "Alice plays the cello", type="preference"),
        "tea": add(store, "alice", "Alice drinks green tea", agent_id="planner"),
        "bob": add(store, "bob", "Bob is allergic to cats", type="fact"),
        "globex": add(store, "alice", "Globex's Alice likes chess", tenant="globex"),
        "gone": add(store, "carol", "Carol moved away"),
    }
    store.update(
        "acme", ids["lyon"], "alice", RecordFields(text="Alice lives in Nice"), vec("Nice")
    )
    store.delete("acme", ids["cello"])
    store.delete("acme", ids["gone"])
    return ids


def snapshot(store: Store) -> dict[str, object]:
    def found(tenant: str, subject: str, query: str, **kw: object) -> list[str]:
        request = SearchRequest(subject=subject, query=query, **kw)  # type: ignore[arg-type]
        return [r.text or "" for r in store.search(tenant, request, vec(query))]

    return {
        "alice": store.subject_versions("acme", "alice"),
        "bob": store.subject_versions("acme", "bob"),
        "carol": store.subject_versions("acme", "carol"),
        "globex": store.subject_versions("globex", "alice"),
        "vector": found("acme", "alice", "where does Alice live", mode="vector"),
        # Keyword scores differ between engines (FTS5's bm25, ts_rank): same hits.
        "hybrid": sorted(found("acme", "alice", "where does Alice live")),
        "keyword": found("acme", "alice", "tea", mode="keyword"),
        "agent": found("acme", "alice", "tea", agent_id="planner"),
        "pseudonym": store.pseudonym("subject", "alice"),
    }


def test_sqlite_to_postgres_and_back_is_verified_and_loses_nothing(
    tmp_path: Path, postgres: Postgres
) -> None:
    source = sqlite_side(tmp_path, "sqlite")
    ids = fill(source.store)
    before = snapshot(source.store)
    assert before["carol"] and all(r.deleted or r.valid_to for r, _ in before["carol"])  # type: ignore[attr-defined]

    target = postgres_side(tmp_path, postgres, "postgres")
    report = migrate(source, target, bundles_dir=tmp_path / "bundles")
    assert snapshot(target.store) == before
    assert target.store.history("acme", ids["cello"])[-1].subject == "alice"  # tombstone named
    assert target.store.get("globex", ids["globex"]).text == "Globex's Alice likes chess"
    assert report["totals"] == {"subjects": 4, "versions": 9, "added": 9}
    assert report["source"]["engine"] == "sqlite" and report["target"]["engine"] == "postgres"
    # The report is the target's attestation; each bundle verifies against the source key.
    assert verify_document(report, [target.signer.public_key()]) == report["signature"]["keyId"]
    with pytest.raises(DocumentSignatureError):
        verify_document({**report, "totals": {}}, [target.signer.public_key()])
    for entry in report["subjects"]:
        data = (tmp_path / "bundles" / entry["file"]).read_bytes()
        assert bundle.Bundle(data, {}).digest == entry["bundle"]
        assert len(bundle.read(data, [source.signer.public_key()]).versions) == entry["versions"]

    # Writes keep working in the migrated store, under the same subject keys' tags.
    add(target.store, "alice", "Alice learns the viola")
    assert "Alice learns the viola" in [
        r.text for r, _ in target.store.subject_versions("acme", "alice")
    ]

    # And back, into a new SQLite store: what the first one held, plus the new record.
    back = sqlite_side(tmp_path, "back")
    migrate(target, back)
    assert snapshot(back.store) == snapshot(target.store)


def test_a_rerun_resumes_and_a_foreign_target_is_refused(
    tmp_path: Path, postgres: Postgres
) -> None:
    source = sqlite_side(tmp_path, "sqlite")
    fill(source.store)
    target = postgres_side(tmp_path, postgres, "postgres")
    migrate(source, target)
    add(source.store, "dave", "Dave arrived after the first run")
    again = migrate(source, target)  # resumed: checked, only the new subject added
    assert again["totals"]["added"] == 1 and again["storeKeyAdopted"] is False
    assert target.store.subject_versions("acme", "dave")

    other = sqlite_side(tmp_path, "other")
    add(other.store, "erin", "Erin belongs to another store")
    with pytest.raises(MigrationError, match="new, empty store"):
        migrate(other, target)
    empty = sqlite_side(tmp_path, "empty")
    with pytest.raises(MigrationError, match="holds no records"):
        migrate(empty, target)


def test_a_source_erasure_after_a_run_is_not_silently_kept(
    tmp_path: Path, postgres: Postgres
) -> None:
    source = sqlite_side(tmp_path, "sqlite")
    fill(source.store)
    target = postgres_side(tmp_path, postgres, "postgres")
    migrate(source, target)
    source.store.erase_subject("acme", "bob")
    with pytest.raises(MigrationError, match="erase them in the target"):
        migrate(source, target)
