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

import hvac

from freehold_serving.memory.args import MemoryArgs, PostgresArgs
from freehold_serving.memory.postgres import Credentials, PostgresDatabase
from freehold_serving.memory.store import StoreError

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


def open_postgres(args: MemoryArgs) -> PostgresDatabase:
    pg = args.postgres
    assert pg is not None
    return PostgresDatabase(
        conninfo(pg),
        schema=pg.db_schema,
        credentials=credentials(args),
        connect_timeout=pg.connect_timeout_seconds,
        role=pg.owner_role,
    )


def credentials(args: MemoryArgs) -> Callable[[], Credentials | None]:
    pg = args.postgres
    assert pg is not None
    if pg.credentials == "file":

        def from_file() -> Credentials | None:
            if pg.user is None:
                return None  # the connection string's own (peer or trust auth)
            password = ""
            if pg.password_file:
                password = Path(pg.password_file).read_text(encoding="utf-8").strip()
            return Credentials(pg.user, password)

        return from_file
    if args.vault is None or not pg.vault_path:
        raise CredentialsError(
            f"postgres credentials {pg.credentials} need Vault (address and role) and a path"
        )
    vault = args.vault
    path = pg.vault_path

    def from_vault() -> Credentials:
        try:
            jwt = Path(vault.jwt_path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialsError(f"cannot read the Vault token file {vault.jwt_path}") from exc
        client = hvac.Client(url=vault.address, verify=vault.ca_cert or True, timeout=10)
        try:
            client.auth.kubernetes.login(role=vault.role, jwt=jwt, mount_point=vault.auth_mount)
            if pg.credentials == "vault-database":
                answer = client.secrets.database.generate_credentials(
                    name=path, mount_point=pg.vault_mount
                )
                data = answer.get("data") or {}
                log.info(
                    "PostgreSQL user from Vault's database engine (lease %ss)",
                    answer.get("lease_duration"),
                )
            else:
                answer = client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=pg.vault_mount, raise_on_deleted_version=True
                )
                data = (answer.get("data") or {}).get("data") or {}
        except Exception as exc:  # hvac and requests errors alike; their text may quote input
            raise CredentialsError(
                f"reading PostgreSQL credentials from Vault ({pg.vault_mount}/{path} as role "
                f"{vault.role}) failed: {type(exc).__name__}"
            ) from None
        finally:
            client.adapter.close()
        user, password = data.get("username"), data.get("password")
        if not user or not password:
            raise CredentialsError(
                f"Vault's {pg.vault_mount}/{path} has no username and password fields"
            )
        return Credentials(str(user), str(password))

    return from_vault
