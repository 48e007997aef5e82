"""`freehold memory migrate`, the real CLI in a subprocess: a store `freehold up` keeps on
SQLite (examples/memorystore.yaml) moved to one on a real PostgreSQL
(examples/memorystore-postgres.yaml, pointed at tests/pg_server.py's server, its user
from libpq's environment as in local mode), then the errors a user meets."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from freehold.local.up import load_stack, local_store_args
from freehold.settings import LocalSettings
from freehold_serving.memory.bundle import read as read_bundle
from freehold_serving.memory.crypto import FileKeyWrapper
from freehold_serving.memory.database import SqliteDatabase
from freehold_serving.memory.migrate import open_side
from freehold_serving.memory.records import RecordFields
from freehold_serving.memory.store import Store
from freehold_serving.signing import FileSigner, verify_document
from tests.pg_server import Postgres

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def manifests(tmp_path: Path, pg: Postgres) -> tuple[Path, Path]:
    database = "memory_" + uuid.uuid4().hex[:8]
    pg.sql(
        "DO $$ BEGIN CREATE ROLE freehold_memory NOLOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    pg.sql(f'CREATE DATABASE "{database}" OWNER freehold_memory')
    source = tmp_path / "sqlite.yaml"
    source.write_text((EXAMPLES / "memorystore.yaml").read_text())
    target = yaml.safe_load((EXAMPLES / "memorystore-postgres.yaml").read_text())
    postgres = target["spec"]["backend"]["postgres"]
    postgres.update(host=pg.host, port=pg.port, database=database, sslMode="disable")
    postgres.pop("caConfigMapRef")
    (tmp_path / "postgres.yaml").write_text(yaml.safe_dump(target))
    return source, tmp_path / "postgres.yaml"


def run(tmp_path: Path, pg: Postgres, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGUSER": pg.user, "PGPASSWORD": pg.password, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "freehold", "memory", "migrate", "--data-dir",
         str(tmp_path / "data"), *args],
        check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip


def test_a_local_store_moves_to_postgresql_verified(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = manifests(tmp_path, postgres)
    monkeypatch.setenv("PGUSER", postgres.user)
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    settings = LocalSettings(data_dir=tmp_path / "data")
    [store] = load_stack([source]).stores
    args = local_store_args(store, settings)
    assert args.key_file and args.signing_key_file
    Path(args.data_dir).mkdir(parents=True)
    # Where `freehold up` keeps this store; random vectors stand in for the embedder's.
    sqlite = Store(
        SqliteDatabase(Path(args.data_dir) / "memory.db"),
        FileKeyWrapper(Path(args.key_file)),
        embedding_model="all-minilm-l6-v2",
        dimension=384,
    )
    rng = np.random.default_rng(7)
    texts = [f"Record {n} about the citizen's case" for n in range(40)]
    for n, text in enumerate(texts):
        vector = [float(x) for x in rng.standard_normal(384)]
        sqlite.add("default", [(f"citizen-{n % 4}", RecordFields(text=text))], [vector])
    sqlite.close()
    source_key = FileSigner(Path(args.signing_key_file)).public_key()

    done = run(tmp_path, postgres, "--from", str(source), "--to", str(target),
               "--report", "report.json", "--bundles", "bundles")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "migrated 4 subject(s), 40 record version(s) (40 new) from sqlite to postgres" in (
        done.stdout
    )
    report = json.loads((tmp_path / "report.json").read_text())
    [pg_store] = load_stack([target]).stores
    moved = open_side(local_store_args(pg_store, settings), must_exist=True)
    assert verify_document(report, [moved.signer.public_key()])
    assert oct((tmp_path / "report.json").stat().st_mode & 0o777) == "0o600"
    for entry in report["subjects"]:
        data = (tmp_path / "bundles" / entry["file"]).read_bytes()
        assert len(read_bundle(data, [source_key]).versions) == 10
    assert sorted(r.text for r, _ in moved.store.subject_versions("default", "citizen-1")) == (
        sorted(texts[1::4])
    )

    key = base64.b64encode(moved.signer.public_key()).decode()
    verify = [sys.executable, "-m", "freehold", "memory", "verify-migration", "report.json"]
    ok = subprocess.run([*verify, "--public-key", key], cwd=tmp_path, capture_output=True,
                        text=True, check=False)  # fmt: skip
    assert ok.returncode == 0 and "4 subject(s), 40 record version(s)" in ok.stdout, ok.stderr
    report["totals"]["versions"] = 39
    (tmp_path / "report.json").write_text(json.dumps(report))
    forged = subprocess.run([*verify, "--public-key", key], cwd=tmp_path, capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert forged.returncode == 1 and "changed after signing" in forged.stderr
    keyless = subprocess.run(verify, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert keyless.returncode == 2 and "--public-key" in keyless.stderr

    again = run(tmp_path, postgres, "--from", str(source), "--to", str(target))
    assert again.returncode == 0, again.stderr
    assert "(0 new)" in again.stdout  # resumed: everything checked, nothing added


def test_errors_name_what_is_wrong(tmp_path: Path, postgres: Postgres) -> None:
    source, target = manifests(tmp_path, postgres)
    missing = run(tmp_path, postgres, "--from", str(source), "--to", str(target))
    assert missing.returncode == 1
    assert "no SQLite memory store at" in missing.stderr

    bad = tmp_path / "bad.yaml"
    body = yaml.safe_load(target.read_text())
    body["spec"]["backend"]["postgres"]["replicas"] = 1
    bad.write_text(yaml.safe_dump(body))
    refused = run(tmp_path, postgres, "--from", str(source), "--to", str(bad))
    assert refused.returncode == 2
    assert "spec.backend.postgres.replicas" in refused.stderr

    absent = run(tmp_path, postgres, "--from", "nope.yaml", "--to", str(target))
    assert absent.returncode == 2 and "nope.yaml: no such file" in absent.stderr
