"""A real PostgreSQL for the tests: Debian's postgresql-15 binaries, initdb into a temp
directory, a port of its own, password (SCRAM) authentication over TCP. Never a mock.

initdb and postgres refuse to run as root: as root, they run as the `postgres` user the
Debian package creates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
SUPERUSER = "postgres"
PASSWORD = "freehold-test"


def available() -> bool:
    return any((d / "postgres").exists() for d in BIN_DIRS)


def _bin(name: str) -> str:
    for d in BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    raise FileNotFoundError(f"PostgreSQL's {name} is not installed (Debian: postgresql-15)")


def _as_owner(argv: list[str]) -> list[str]:
    # setpriv execs the program itself (no process in between to forward signals).
    owner = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    return [*owner, *argv] if os.geteuid() == 0 else argv


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    data_dir: Path

    def conninfo(self, database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} dbname={database}"

    def dsn(self, database: str = "postgres") -> str:
        return (
            f"host={self.host} port={self.port} dbname={database} user={self.user}"
            f" password={self.password}"
        )

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def checkpoint(self) -> None:
        self.sql("CHECKPOINT")


@contextmanager
def postgres_server(also_listen: str | None = None) -> Iterator[Postgres]:
    """`also_listen`: one more address to serve on (the node's, for pods), with password
    (SCRAM) logins allowed from any address."""
    root = Path(tempfile.mkdtemp(prefix="freehold-pg-"))
    data = root / "data"
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_owner(
            [
                _bin("initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ]
        ),
        check=True,
        capture_output=True,
    )
    if also_listen is not None:
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
    log = root / "postgres.log"
    proc = subprocess.Popen(
        _as_owner(
            [
                _bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-h",
                ",".join(["127.0.0.1", *([also_listen] if also_listen else [])]),
                "-k",
                str(root),
                # Durable as in production: every commit flushed before it is acknowledged.
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "max_connections=50",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    server = Postgres("127.0.0.1", port, SUPERUSER, PASSWORD, data)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.sql("SELECT 1")
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:]
                    raise RuntimeError(f"postgres did not start: {tail}") from exc
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
