"""A MemoryStore on a real PostgreSQL (tests/pg_server.py), as its replicas run it: users
issued by Vault's database secrets engine (tests/vault_server.py stands in for Vault,
which cannot be installed here: each credentials read makes a real PostgreSQL user with
the role's creation statements), the role policy the operator writes, two replicas on
one schema, a replica killed mid-write.

The embedder is a deterministic bag-of-words function (the store's contract is about any
vector of its dimension; the real model is exercised in the serving tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from freehold.adapters.vault import VaultApi
from freehold.api.memory_store import MemoryStoreSpec
from freehold.builders.memory_args import memory_args_for
from freehold.builders.memory_store import build_vault_role
from freehold.builders.model_workload import BuildContext
from freehold.validation import defaulted
from freehold_serving.memory import affinity, crypto
from freehold_serving.memory.affinity import PEER_PATH, sign_peer
from freehold_serving.memory.args import MemoryArgs
from freehold_serving.memory.records import NewRecord, SearchRequest
from freehold_serving.memory.service import MemoryService, key_material
from freehold_serving.memory.store import StoreError
from tests.paths import EXAMPLES, ROOT
from tests.pg_server import Postgres
from tests.ports import free_port
from tests.vault_server import VaultServer

DIM = 32
NAMESPACE, NAME = "freehold-demo", "citizen-memory"


def bow(texts: list[str]) -> list[list[float]]:
    out = []
    for text in texts:
        v = np.zeros(DIM, dtype=np.float32)
        for word in crypto.words(text):
            v[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
        out.append([float(x) for x in v])
    return out


def spec_for(pg: Postgres, database: str) -> MemoryStoreSpec:
    manifest = defaulted(yaml.safe_load((EXAMPLES / "memorystore-postgres.yaml").read_text()))
    backend = manifest["spec"]["backend"]["postgres"]
    backend.update(host=pg.host, port=pg.port, database=database, sslMode="disable")
    backend.pop("caConfigMapRef")
    return MemoryStoreSpec.model_validate(manifest["spec"])


@pytest.fixture
def memory_db(postgres: Postgres) -> str:
    """A database owned by the role the store's tables belong to (as CloudNativePG's
    bootstrap makes it: examples/postgres/cnpg-cluster.yaml)."""
    name = "memory_" + uuid.uuid4().hex[:8]
    postgres.sql(
        "DO $$ BEGIN CREATE ROLE freehold_memory NOLOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    postgres.sql(f'CREATE DATABASE "{name}" OWNER freehold_memory')
    return name


def configure_vault(vault: VaultServer, pg: Postgres, database: str, spec: MemoryStoreSpec,
                    tmp_path: Path) -> MemoryArgs:  # fmt: skip
    """What a platform team and the operator set up: the database engine (examples/postgres/
    vault-database.sh, over Vault's HTTP API), the store's role and policy (the operator's
    builder), the pod's projected token."""
    root = {"X-Vault-Token": vault.state.root_token}
    url = f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg.host}:{pg.port}/{database}"
    for path, body in (
        (
            "database/config/memory-db",
            {
                "plugin_name": "postgresql-database-plugin",
                "connection_url": url,
                "username": pg.user,
                "password": pg.password,
                "allowed_roles": "freehold-demo-citizen-memory",
            },
        ),
        (
            "database/roles/freehold-demo-citizen-memory",
            {
                "db_name": "memory-db",
                "default_ttl": 3600,
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL "
                    "'{{expiration}}' IN ROLE freehold_memory;"
                ],
            },
        ),
    ):
        httpx.post(f"{vault.url}/v1/{path}", json=body, headers=root).raise_for_status()
    ctx = BuildContext(name=NAME, namespace=NAMESPACE, serving_image="-", ray_version="-",
                       api_server_cidr="10.0.0.1/32", vault_address=vault.url)  # fmt: skip
    role = build_vault_role(spec, ctx)
    VaultApi.connect(vault.url, vault.state.root_token).ensure(role)
    token = tmp_path / "token"
    token.write_text("projected-token-memory")
    vault.state.service_accounts["projected-token-memory"] = (f"{NAME}-memory", NAMESPACE)
    args = memory_args_for(
        spec, NAME, NAMESPACE, data_dir=str(tmp_path / "data"),
        vault_address=vault.url, vault_role=role.name,
    )  # fmt: skip
    assert args.vault is not None
    return args.model_copy(update={"vault": args.vault.model_copy(update={"jwt_path": str(token)})})


def replica(args: MemoryArgs, name: str) -> MemoryService:
    own = args.model_copy(update={"data_dir": str(Path(args.data_dir) / name)})
    return MemoryService(own, embedder=("bow-32", DIM, bow), keys=key_material(own))


async def test_replicas_connect_as_short_lived_vault_users_and_share_the_store(
    postgres: Postgres, memory_db: str, tmp_path: Path
) -> None:
    spec = spec_for(postgres, memory_db)
    with VaultServer() as vault:
        args = configure_vault(vault, postgres, memory_db, spec, tmp_path)
        a, b = replica(args, "a"), replica(args, "b")
        added = await a.add("acme", [NewRecord(subject="alice", text="Alice rides a tandem")])
        request = SearchRequest(subject="alice", query="tandem")
        found = await b.search("acme", request)
        assert [r.id for r in found] == [added[0].id]

        # Each replica is a user of its own, issued by Vault, acting as the owner role.
        users = postgres.sql(
            "SELECT usename FROM pg_stat_activity WHERE application_name = 'freehold-memory'"
            " AND datname = current_database()",
            memory_db,
        )
        names = {str(u[0]) for u in users}
        assert len(names) == 2 and all(n.startswith("v-freehold-demo-") for n in names)
        owners = postgres.sql(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'citizen_memory'",
            memory_db,
        )
        assert owners == [("freehold_memory",)]

        # The database drops the replica's connection (a failover): that request answers
        # 503, the next one reconnects with a new user from Vault.
        postgres.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'freehold-memory' AND datname = current_database()",
            memory_db,
        )
        with pytest.raises(StoreError) as failed:
            await a.search("acme", request)
        assert failed.value.status == 503
        assert [r.id for r in await a.search("acme", request)] == [added[0].id]
        again = postgres.sql(
            "SELECT usename FROM pg_stat_activity WHERE application_name = 'freehold-memory'"
            " AND datname = current_database()",
            memory_db,
        )
        assert {str(u[0]) for u in again} - names  # a new user

        # The store's role may not read another team's database users.
        vault.state.db_roles["other-team-db"] = vault.state.db_roles["freehold-demo-citizen-memory"]
        client = httpx.post(
            f"{vault.url}/v1/auth/kubernetes/login",
            json={"role": f"freehold.{NAMESPACE}.{NAME}", "jwt": "projected-token-memory"},
        ).json()["auth"]["client_token"]
        denied = httpx.get(
            f"{vault.url}/v1/database/creds/other-team-db", headers={"X-Vault-Token": client}
        )
        assert denied.status_code == 403


WRITER = """
import sys
from pathlib import Path
from freehold_serving.memory import crypto
from freehold_serving.memory.postgres import Credentials, PostgresDatabase
from freehold_serving.memory.records import RecordFields, SearchRequest
from freehold_serving.memory.store import Store
conninfo, user, password, keys, own = sys.argv[1:6]
db = PostgresDatabase(conninfo, schema="memory",
                      credentials=lambda: Credentials(user, password))
store = Store(db, crypto.FileKeyWrapper(Path(keys)), embedding_model="m", dimension=4)
n = 0
while True:
    batch = [(s, RecordFields(text=f"{own} record {n + i}")) for i, s in
             enumerate(["shared", own, "shared", own, "shared"])]
    vectors = [[1.0, 0.0, float(n + i), 1.0] for i in range(5)]
    for record in store.add("t", batch, vectors):
        print(record.id, flush=True)  # acknowledged: committed (synchronous_commit=on)
    store.search("t", SearchRequest(subject="shared", mode="vector"), [1.0, 0.0, 1.0, 1.0])
    n += 5
"""


def test_a_replica_killed_mid_write_loses_no_acknowledged_record(
    postgres: Postgres, memory_db: str, tmp_path: Path
) -> None:
    """Two store processes write to one schema (one subject in common: writers queue on
    its row); one is killed with SIGKILL. Every record either acknowledged is there, and
    the other keeps answering."""
    from freehold_serving.memory.postgres import Credentials, PostgresDatabase
    from freehold_serving.memory.store import Store

    keys = tmp_path / "store.key"
    conninfo = postgres.conninfo(memory_db)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "serving"), str(ROOT / "operator")]),
    }

    def start(own: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, conninfo, postgres.user, postgres.password,
             str(keys), own],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    first = start("a")
    assert first.stdout is not None
    acked: dict[str, list[str]] = {"a": [first.stdout.readline().strip()], "b": []}
    second = start("b")  # the first made the schema and the store key: the second joins
    assert second.stdout is not None
    try:
        for line in first.stdout:
            acked["a"].append(line.strip())
            if len(acked["a"]) >= 200:
                break
        first.send_signal(signal.SIGKILL)
        acked["a"] += [line.strip() for line in first.stdout]
        first.wait()
        # The other replica keeps acknowledging after the kill.
        for line in second.stdout:
            acked["b"].append(line.strip())
            if len(acked["b"]) >= 150:
                break
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
    assert len(acked["b"]) >= 150
    store = Store(
        PostgresDatabase(
            conninfo,
            schema="memory",
            credentials=lambda: Credentials(postgres.user, postgres.password),
        ),
        crypto.FileKeyWrapper(keys),
        embedding_model="m",
        dimension=4,
    )
    present: set[str] = set()
    for subject in ("shared", "a", "b"):
        present |= {r.id for r, _ in store.subject_versions("t", subject)}
    missing = {k: [i for i in v if i and i not in present] for k, v in acked.items()}
    assert missing == {"a": [], "b": []}


def test_an_owner_role_the_user_cannot_take_is_named(postgres: Postgres, memory_db: str) -> None:
    from freehold_serving.memory.postgres import Credentials, PostgresDatabase

    db = PostgresDatabase(
        postgres.conninfo(memory_db),
        schema="memory",
        credentials=lambda: Credentials(postgres.user, postgres.password),
        role="no_such_role",
    )
    with pytest.raises(StoreError, match="cannot act as role 'no_such_role'") as failed:
        db.migrate()
    assert failed.value.status == 503


@contextlib.contextmanager
def peer_server(service: MemoryService) -> Iterator[str]:
    """The service's peer route over real HTTP (uvicorn, a thread): the handler the Ray
    Serve app mounts at PEER_PATH is one call to service.peer_search, made here the same
    way; the Ray Serve route itself runs in the real-node suite."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def handle(request: Request) -> JSONResponse:
        try:
            found = await service.peer_search(request.headers, await request.body())
        except StoreError as exc:
            return JSONResponse({"error": {"message": exc.message}}, exc.status)
        return JSONResponse({"data": [r.model_dump(mode="json") for r in found]})

    port = free_port()
    app = Starlette(routes=[Route(PEER_PATH, handle, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_each_subject_is_searched_by_the_replica_that_owns_it(
    postgres: Postgres, memory_db: str, tmp_path: Path
) -> None:
    """Subject affinity: two replicas find each other in the database, every search of a
    subject is answered by its owner's indexes (forwarded over HTTP with the vector
    computed and the tenant MACed), each replica holds only its own subjects' indexes,
    and a replica that stops answering is passed over (its searches answered here)."""
    spec = spec_for(postgres, memory_db)
    with VaultServer() as vault:
        args = configure_vault(vault, postgres, memory_db, spec, tmp_path)
        a, b = replica(args, "a"), replica(args, "b")
        subjects = [f"user{i}" for i in range(12)]
        for s in subjects:
            await a.add(
                "acme",
                [
                    NewRecord(subject=s, text=f"{s} keeps bees and tea"),
                    NewRecord(subject=s, text=f"{s} rides a bike"),
                ],
            )
        tags = {a.store.subject_tag("acme", s): s for s in subjects}
        with peer_server(b) as b_address:
            with peer_server(a) as a_address:
                pa, pb = a.join(a_address), b.join(b_address)
                pa.beat(), pb.beat(), pa.beat()
                assert pa.members() == pb.members() == sorted([pa.me, pb.me])
                owners = {tag: affinity.owner(tag, [pa.me, pb.me]) for tag in tags}
                assert set(owners.values()) == {pa.me, pb.me}  # both own some
                for s in subjects:
                    owner = owners[a.store.subject_tag("acme", s)]
                    assert owner is not None
                    for service in (a, b):
                        found, who = await service.search_routed(
                            "acme", SearchRequest(subject=s, query="bees")
                        )
                        assert who == owner.name
                        assert [r.text for r in found][:1] == [f"{s} keeps bees and tea"]
                        # The tenant travels with the request: another sees nothing.
                        other = await service.search(
                            "other", SearchRequest(subject=s, query="bees")
                        )
                        assert other == []
                assert set(a.store._indexed) == {t for t, o in owners.items() if o == pa.me}
                assert set(b.store._indexed) == {t for t, o in owners.items() if o == pb.me}
                # A request not MACed with this store's key is refused.
                body = SearchRequest(subject="user0", query="bees").model_dump_json().encode()
                with pytest.raises(StoreError) as refused:
                    await b.peer_search(sign_peer(b"x" * 32, "acme", body, time.time()), body)
                assert refused.value.status == 401
            # a stops answering (its server is gone, its row not yet expired): b answers
            # a's subjects itself, with the same records.
            mine = next(s for s in subjects if owners[a.store.subject_tag("acme", s)] == pa.me)
            found, who = await b.search_routed("acme", SearchRequest(subject=mine, query="bees"))
            assert who == pb.me.name
            assert found[0].text == f"{mine} keeps bees and tea"
            pa.leave()
            assert pb.beat() == [pb.me]
