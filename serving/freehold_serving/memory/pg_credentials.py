"""Who a memory replica is on PostgreSQL: credentials read when a connection opens.

vault-database (the default the operator writes) asks Vault's database secrets engine for
a user of its own with a short lease: nothing long-lived to leak, and revoking the lease
ends the access. Every (re)connection asks again, so a replica that lost its connection
comes back with a fresh user. vault-kv reads a static username and password; `file` is
local mode's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import hvac

from freehold_serving.args import VaultKeySource
from freehold_serving.memory.args import MemoryArgs, PostgresArgs
from freehold_serving.memory.postgres import Credentials, PostgresDatabase
from freehold_serving.memory.store import StoreError
from freehold_serving.vault_keys import VaultKeysError, read_as_workload, read_secret

log = logging.getLogger(__name__)


class CredentialsError(StoreError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


def conninfo(pg: PostgresArgs) -> str:
    parts = {
        "host": pg.host,
        "port": str(pg.port),
        "dbname": pg.database,
        "sslmode": pg.sslmode,
    }
    if pg.ca_cert:
        parts["sslrootcert"] = pg.ca_cert
    return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class VaultLogin(Protocol):
    """How a workload logs in to Vault (its Kubernetes auth role and projected token)."""

    @property
    def address(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def ca_cert(self) -> str | None: ...
    @property
    def auth_mount(self) -> str: ...
    @property
    def jwt_path(self) -> str: ...


def open_postgres(args: MemoryArgs) -> PostgresDatabase:
    assert args.postgres is not None
    return open_database(args.postgres, args.vault)


def open_database(
    pg: PostgresArgs, vault: VaultLogin | None, application_name: str = "freehold-memory"
) -> PostgresDatabase:
    """A connection to `pg` (a memory store's, or a router's shared ledger) whose
    credentials are read, from Vault or a file, each time it connects."""
    return PostgresDatabase(
        conninfo(pg),
        schema=pg.db_schema,
        credentials=credentials_for(pg, vault),
        connect_timeout=pg.connect_timeout_seconds,
        role=pg.owner_role,
        application_name=application_name,
    )


def credentials(args: MemoryArgs) -> Callable[[], Credentials | None]:
    assert args.postgres is not None
    return credentials_for(args.postgres, args.vault)


def credentials_for(pg: PostgresArgs, vault: VaultLogin | None) -> Callable[[], Credentials | None]:
    if pg.credentials == "file":

        def from_file() -> Credentials | None:
            if pg.user is None:
                return None  # the connection string's own (peer or trust auth)
            password = ""
            if pg.password_file:
                password = Path(pg.password_file).read_text(encoding="utf-8").strip()
            return Credentials(pg.user, password)

        return from_file
    if vault is None or not pg.vault_path:
        raise CredentialsError(
            f"postgres credentials {pg.credentials} need Vault (address and role) and a path"
        )
    source = VaultKeySource(
        mount=pg.vault_mount,
        path=pg.vault_path,
        address=vault.address,
        ca_cert=vault.ca_cert,
        role=vault.role,
        auth_mount=vault.auth_mount,
        jwt_path=vault.jwt_path,
    )

    def issued(client: hvac.Client) -> dict[str, object]:
        answer = client.secrets.database.generate_credentials(
            name=source.path, mount_point=source.mount
        )
        log.info(
            "PostgreSQL user from Vault's database engine (lease %ss)",
            answer.get("lease_duration"),
        )
        data: dict[str, object] = answer.get("data") or {}
        return data

    def from_vault() -> Credentials:
        try:
            if pg.credentials == "vault-database":
                data = read_as_workload(source, "PostgreSQL credentials", issued)
            else:
                data = read_secret(source, "PostgreSQL credentials")
        except VaultKeysError as exc:
            raise CredentialsError(str(exc)) from None
        user, password = data.get("username"), data.get("password")
        if not user or not password:
            raise CredentialsError(
                f"Vault's {source.mount}/{source.path} has no username and password fields"
            )
        return Credentials(str(user), str(password))

    return from_vault
