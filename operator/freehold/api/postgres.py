"""A connection to an existing PostgreSQL, as MemoryStores (their records) and
ModelRouters (their budgets) name one."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from freehold.api.base import ApiModel, LocalObjectReference, cel, rules

PG_IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"


class PostgresCredentials(ApiModel):
    """Where the PostgreSQL user comes from: Vault, never a Kubernetes Secret."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.databaseRole) != has(self.kvPath)",
                "set exactly one of credentials.databaseRole (Vault's database secrets "
                "engine, short-lived users) and credentials.kvPath (a KV v2 secret)",
            ),
        )
    )

    database_role: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="A role of Vault's database secrets engine: each replica gets a user of "
        "its own with a short lease, asked again on every reconnection (recommended).",
    )
    database_mount: str = Field(
        default="database",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._/-]*$",
        description="Mount of the database secrets engine.",
    )
    kv_path: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._/-]*$",
        description="A KV v2 secret with `username` and `password` fields (static credentials).",
    )
    kv_mount: str = Field(
        default="secret",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._/-]*$",
        description="Mount of the KV v2 engine.",
    )


class PostgresConnection(ApiModel):
    """An existing PostgreSQL (a CloudNativePG cluster's read-write Service, a managed
    database) and how to log in to it."""

    host: str = Field(
        max_length=253,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$",
        description="Host name or IP address, e.g. memory-db-rw.db.svc.",
    )
    port: int = Field(default=5432, ge=1, le=65535, description="Port.")
    database: str = Field(max_length=63, min_length=1, description="Database name.")
    schema_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=PG_IDENTIFIER,
        description="Its own PostgreSQL schema (created if absent; several resources can share "
        "a database); unset: the resource's name with '-' as '_'.",
    )
    owner_role: str | None = Field(
        default=None,
        max_length=63,
        pattern=PG_IDENTIFIER,
        description="Role that owns its tables (SET ROLE after connecting), which the "
        "users Vault issues are members of; unset: the connecting user owns them (static "
        "credentials).",
    )
    ssl_mode: Literal["disable", "require", "verify-ca", "verify-full"] = Field(
        default="verify-full",
        description="libpq sslmode. verify-full checks the server certificate and host name "
        "against caConfigMapRef's ca.crt.",
    )
    ca_config_map_ref: LocalObjectReference | None = Field(
        default=None,
        description="ConfigMap with the server's CA certificate under ca.crt (for verify-ca "
        "and verify-full).",
    )
    credentials: PostgresCredentials = Field(description="Its user, from Vault.")
