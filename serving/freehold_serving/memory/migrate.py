"""Moving a memory store to another engine (SQLite <-> PostgreSQL) through signed bundles.

A store names its subjects and tenants only by tags keyed with its store key, so the
target first adopts the source's store key (wrapped by the target's own KEK): tags, and
the pseudonyms audit trails and bundles use, then mean the same subjects in both stores.
Each subject then travels as the bundle an export would make (signed by the source's
key, vectors included), is verified as an import verifies it (signature, digests), is
imported, and is read back from the target and compared with the bundle version by
version. Content is unsealed in this process only, and sealed again under fresh subject
keys in the target. A run that stops half way is resumed by running it again: what is
already in the target is checked and skipped.

The report lists every subject's pseudonym, version count and bundle digest, and is
signed by the target's key: the target attests what it received, and each bundle (kept
with `bundles_dir`) can be verified on its own against the source's key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freehold_serving.memory import bundle
from freehold_serving.memory.args import MemoryArgs
from freehold_serving.memory.records import Record
from freehold_serving.memory.store import Store, StoreError
from freehold_serving.private_files import private_file
from freehold_serving.signing import Signer, canonical, key_id, sign_document

log = logging.getLogger(__name__)

REPORT_FORMAT = "freehold.dev/memory-migration"


class MigrationError(Exception):
    """The migration stopped; the message says where. The source is never changed."""


@dataclass
class Side:
    """One store of a migration, opened from its arguments."""

    store: Store
    signer: Signer
    engine: str
    where: str


@dataclass
class Report:
    source: dict[str, Any]
    target: dict[str, Any]
    subjects: list[dict[str, Any]] = field(default_factory=list)
    adopted_key: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "formatVersion": 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": self.source,
            "target": self.target,
            "storeKeyAdopted": self.adopted_key,
            "totals": {
                "subjects": len(self.subjects),
                "versions": sum(s["versions"] for s in self.subjects),
                "added": sum(s["added"] for s in self.subjects),
            },
            "subjects": self.subjects,
        }


def configured_embedding(args: MemoryArgs) -> str:
    """The embedding model a store's arguments name (without loading it)."""
    if args.embedding.builtin is not None:
        return args.embedding.builtin
    return args.embedding.model or "unknown"


def open_side(args: MemoryArgs, *, must_exist: bool) -> Side:
    """A store for migration: the database and keys its replicas use. The embedding model
    is the one its rows were made with (read from the store), never loaded."""
    from freehold_serving.memory.service import key_material, open_database

    if args.postgres is None:
        where = str(Path(args.data_dir) / "memory.db")
        if must_exist and not Path(where).is_file():
            raise MigrationError(f"no SQLite memory store at {where}")
    else:
        pg = args.postgres
        where = f"postgresql://{pg.host}:{pg.port}/{pg.database} schema {pg.db_schema}"
    try:
        wrapper, signer = key_material(args)
        database = open_database(args)
        store = Store(database, wrapper, embedding_model=configured_embedding(args), dimension=0)
    except StoreError as exc:
        raise MigrationError(f"{where}: {exc.message}") from None
    model, dimension = store.stored_embedding_model()
    if dimension:
        store.embedding_model, store.dimension = model, dimension
    return Side(store, signer, database.engine, where)


Versions = list[tuple[Record, list[float] | None]]


def _difference(a: Versions, b: Versions) -> str | None:
    """The first record id at which two version lists differ, or None."""
    if len(a) != len(b):
        return f"{len(a)} versions sent, {len(b)} read back"
    for (ra, va), (rb, vb) in zip(a, b, strict=True):
        if ra.model_dump(exclude={"score"}) != rb.model_dump(exclude={"score"}) or va != vb:
            return f"record {ra.id} version {ra.version}"
    return None


def migrate(
    source: Side,
    target: Side,
    *,
    bundles_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Copy every subject of `source` into `target` and verify it; returns the signed
    report. Raises MigrationError naming the subject (by pseudonym) where it stopped."""
    src, dst = source.store, target.store
    tags = src.subject_tags()
    if not tags:
        raise MigrationError(f"the source store at {source.where} holds no records")
    try:
        adopted = dst.adopt_store_key(src)
    except StoreError as exc:
        raise MigrationError(f"target {target.where}: {exc.message}") from None
    trusted = [source.signer.public_key()]
    report = Report(
        source={"engine": source.engine, "signer": key_id(trusted[0])},
        target={"engine": target.engine, "signer": key_id(target.signer.public_key())},
        adopted_key=adopted,
    )
    embedding = (src.embedding_model, src.dimension)
    for done, (tag, tenant) in enumerate(tags):
        versions = src.tagged_versions(tag)
        if not versions:
            continue  # every record expired: nothing an export would carry
        name = next((r.subject for r, _ in versions if r.subject), None)
        pseudonym = src.pseudonym("subject", name) if name else src.pseudonym("subject-tag", tag)
        made = bundle.write(
            versions,
            signer=source.signer,
            subject_id=pseudonym,
            embedding=embedding,
            producer=f"freehold memory migrate ({source.engine} to {target.engine})",
        )
        try:
            contents = bundle.read(made.data, trusted)
            added = dst.import_tagged(tag, tenant, contents.versions)
        except (bundle.BundleError, StoreError) as exc:
            message = exc.message if isinstance(exc, StoreError) else str(exc)
            raise MigrationError(f"subject {pseudonym}: {message}") from None
        differs = _difference(contents.versions, dst.tagged_versions(tag))
        if differs is not None:
            raise MigrationError(
                f"subject {pseudonym}: the target does not hold what was sent ({differs})"
            )
        entry: dict[str, Any] = {
            "subject": pseudonym,
            "versions": len(versions),
            "added": added,
            "bundle": made.digest,
        }
        if bundles_dir is not None:
            # A subject's pseudonym is the same in every tenant: files are numbered.
            entry["file"] = name = f"{len(report.subjects) + 1:06d}.tar.gz"
            private_file(bundles_dir / name).write_bytes(made.data)
        report.subjects.append(entry)
        if progress is not None:
            progress(done + 1, len(tags))
    extra = {t for t, _ in dst.subject_tags()} - {t for t, _ in tags}
    if extra:
        raise MigrationError(
            f"the target holds {len(extra)} subject(s) the source does not (erased in the "
            "source since an earlier run?): erase them in the target or migrate into a new store"
        )
    return sign_document(report.body(), target.signer)


def write_report(report: dict[str, Any], path: Path) -> None:
    private_file(path).write_bytes(canonical(report) + b"\n")
    log.info("migration report written to %s", path)
