"""The memory application's arguments, built from a MemoryStore spec by the operator and by
`freehold up` (freehold.builders.memory_args). Imports pydantic only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from freehold_serving.args import ApiKeysConfig

IMPORT_PATH = "freehold_serving.memory.app:build_memory_app"
Scope = Literal["user", "agent", "session"]
ALL_SCOPES: tuple[Scope, ...] = ("user", "agent", "session")
ARGS_ENV = "FREEHOLD_MEMORY_ARGS"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddingSource(Strict):
    """Built in (loaded in the memory process) or an OpenAI-compatible /v1/embeddings."""

    builtin: Literal["all-minilm-l6-v2"] | None = "all-minilm-l6-v2"
    url: str | None = Field(default=None, description="Base URL ending in /v1.")
    model: str | None = Field(default=None, description="Model name at that URL.")


class ChatModel(Strict):
    """The served model that extracts records from conversations (JSON-schema output)."""

    url: str = Field(description="Base URL ending in /v1.")
    model: str | None = Field(default=None, description="Served name; unset: its only model.")
    digest: str | None = Field(default=None, description="sha256 of its model file.")


class VaultTransit(Strict):
    """The store's keys in Vault transit; the pod logs in with its projected token."""

    address: str
    role: str
    mount: str = "transit"
    key_name: str = Field(description="Wraps the store's data keys (aes256-gcm96).")
    signing_key_name: str = Field(description="Signs export bundles (ed25519).")
    auth_mount: str = "kubernetes"
    jwt_path: str = "/var/run/secrets/vault/token"
    ca_cert: str | None = None


class PostgresArgs(Strict):
    """An existing PostgreSQL (say, a CloudNativePG cluster's read-write Service) that holds
    the store's sealed rows; any number of replicas share it."""

    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    db_schema: str = Field(description="The store's own PostgreSQL schema in that database.")
    sslmode: Literal["disable", "require", "verify-ca", "verify-full"] = "verify-full"
    ca_cert: str | None = Field(default=None, description="CA bundle (a path) for its TLS.")
    credentials: Literal["vault-database", "vault-kv", "file"] = Field(
        description="vault-database: short-lived users from Vault's database secrets engine; "
        "vault-kv: username and password fields of a KV v2 secret; file: `user` and the "
        "password in `password_file` (local mode)."
    )
    vault_mount: str = Field(default="database", description="The Vault engine's mount.")
    vault_path: str | None = Field(
        default=None, description="vault-database: the role; vault-kv: the secret's path."
    )
    user: str | None = None
    password_file: str | None = None
    owner_role: str | None = Field(
        default=None,
        description="SET ROLE after connecting: the role that owns the store's tables, which "
        "every issued user is a member of (Vault's database engine issues one user per lease).",
    )
    connect_timeout_seconds: float = Field(default=10, gt=0)


class MemoryArgs(Strict):
    name: str
    namespace: str = "default"
    data_dir: str = Field(
        default="/data",
        description="Where the SQLite files and the audit log live (a PVC; with PostgreSQL, "
        "only the audit log).",
    )
    postgres: PostgresArgs | None = Field(
        default=None, description="Records in PostgreSQL; unset: SQLite in data_dir."
    )
    embedding: EmbeddingSource = Field(default_factory=EmbeddingSource)
    retention_default_seconds: float | None = Field(default=90 * 86400, gt=0)
    retention_per_type: dict[str, float] = Field(default_factory=dict)
    key_file: str | None = Field(
        default=None, description="Local mode: the key-encryption key file (created if absent)."
    )
    signing_key_file: str | None = Field(
        default=None, description="Local mode: the Ed25519 bundle-signing key (created if absent)."
    )
    vault: VaultTransit | None = None
    trusted_signers: list[str] = Field(
        default_factory=list,
        description="Ed25519 public keys (base64) whose bundles may be imported, besides "
        "this store's own.",
    )
    include_embeddings: bool = False
    scopes: list[Scope] = Field(
        default_factory=lambda: list(ALL_SCOPES),
        description="Scopes records may have: a record with an agent_id needs 'agent', one "
        "with a session_id needs 'session'.",
    )
    extraction: ChatModel | None = None
    api_keys: ApiKeysConfig | None = None
    sweep_seconds: float = Field(default=3600, gt=0, description="Retention sweep period.")
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP endpoint: audit events are also shipped as logs."
    )
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    index_budget_bytes: int | None = Field(
        default=None,
        ge=1024 * 1024,
        description="The most the subjects' in-memory search indexes may hold in this "
        "replica; past it the least recently searched are dropped and rebuilt on their next "
        "search. Unset: no bound.",
    )
    peer_address: str | None = Field(
        default=None,
        # On a cluster the operator writes $(FREEHOLD_POD_IP):8000; the kubelet expands it.
        pattern=r"^([A-Za-z0-9.:\[\]-]+|\$\([A-Z_]+\)):[0-9]{1,5}$",
        description="PostgreSQL replicas: host:port the other replicas reach this one at. "
        "Set, each subject's searches go to one replica (subject affinity); unset, every "
        "replica answers every search itself.",
    )
