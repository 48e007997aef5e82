"""MemoryStore: portable, encrypted memory that belongs to its users."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from freehold.api.base import (
    ApiModel,
    Condition,
    Duration,
    Ed25519PublicKey,
    LocalObjectReference,
    Quantity,
    Residency,
    cel,
    conditions_field,
    rules,
)
from freehold.api.model_deployment import Auth
from freehold.api.postgres import PostgresConnection

Scope = Literal["user", "agent", "session"]
ALL_SCOPES: list[Scope] = ["user", "agent", "session"]
BUILTIN_EMBEDDING_MODELS = ("all-minilm-l6-v2",)


class SqliteBackend(ApiModel):
    """Embedded SQLite on a PersistentVolume."""

    storage_size: Quantity = Field(default="1Gi", description="Size of the volume.")
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="StorageClass of the volume; unset: default."
    )


class PostgresBackend(PostgresConnection):
    """An existing PostgreSQL (a CloudNativePG cluster's read-write Service, a managed
    database): rows stay sealed as on SQLite; vector indexes live in the replicas' memory."""

    replicas: int = Field(
        default=2,
        ge=2,
        le=32,
        description="Store replicas (a Deployment): any replica takes any request; each "
        "subject's searches are answered by the replica that owns it.",
    )


class Backend(ApiModel):
    """Where records are stored."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.type != 'sqlite' || has(self.sqlite)",
                "backend.sqlite is required when backend.type is sqlite",
                field_path=".sqlite",
            ),
            cel(
                "self.type != 'postgres' || has(self.postgres)",
                "backend.postgres is required when backend.type is postgres",
                field_path=".postgres",
            ),
        )
    )

    type: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="Storage engine. sqlite: embedded, one writer (one replica), on a volume. "
        "postgres: an existing PostgreSQL, two or more replicas.",
    )
    sqlite: SqliteBackend | None = Field(
        default_factory=SqliteBackend,
        description="Settings of the sqlite backend.",
        json_schema_extra={"default": {}},
    )
    postgres: PostgresBackend | None = Field(
        default=None, description="Settings of the postgres backend."
    )


class Embedding(ApiModel):
    """The embedding model for semantic recall: built in, or a ModelDeployment."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.builtin) != has(self.modelDeploymentRef)",
                "set exactly one of embedding.builtin and embedding.modelDeploymentRef",
            ),
        )
    )

    builtin: Literal["all-minilm-l6-v2"] | None = Field(
        default=None, description="A built-in embedding model shipped with Freehold."
    )
    model_deployment_ref: LocalObjectReference | None = Field(
        default=None, description="A ModelDeployment in this namespace that serves embeddings."
    )


RecordType = Literal["preference", "fact", "task", "episode", "entity", "relation", "note"]


class TypeRetention(ApiModel):
    """Retention of one record type."""

    type: RecordType = Field(
        description="Record type: preference, fact, task, episode, entity, relation or note.",
    )
    ttl: Duration = Field(description="How long records of this type are kept.")


class Retention(ApiModel):
    """How long records are kept before they are deleted."""

    default_ttl: Duration = Field(
        default="90d",
        alias="defaultTTL",
        description="Lifetime of records with no type-specific retention.",
    )
    per_type: list[TypeRetention] = Field(
        default_factory=list,
        max_length=32,
        description="Lifetimes by record type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Encryption(ApiModel):
    """Envelope encryption of records with a Vault transit key."""

    transit_mount: str = Field(
        default="transit",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="Transit secrets engine mount.",
    )
    key_name: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="Transit key; unset: one created for this store (namespace and name).",
    )


class Portability(ApiModel):
    """Export and import of a user's memory as a signed bundle."""

    signing_key: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="Transit key that signs export bundles; unset: the store's own key.",
    )
    include_embeddings: bool = Field(
        default=False,
        description="Put embeddings in bundles (larger; avoids re-embedding on import).",
    )
    trusted_signers: list[Ed25519PublicKey] = Field(
        default_factory=list,
        max_length=32,
        description="Ed25519 public keys (base64 of the 32 raw bytes) whose bundles may be "
        "imported, besides this store's own signing key.",
    )


class Extraction(ApiModel):
    """The model that turns conversations into typed records (POST /v1/memory/extract)."""

    model_deployment_ref: LocalObjectReference = Field(
        description="A ModelDeployment in this namespace; it must support JSON-schema output "
        "(the llamacpp engine does)."
    )


class StoreResources(ApiModel):
    """Requests and limits (equal: a predictable pod) of the store's container."""

    cpu: Quantity = Field(default="1", description="CPU request and limit.")
    memory: Quantity = Field(default="2Gi", description="Memory request and limit.")


class MemoryStoreSpec(ApiModel):
    """Desired state of a MemoryStore."""

    backend: Backend = Field(default_factory=Backend, description="Storage backend.")
    embedding: Embedding = Field(
        default_factory=lambda: Embedding(builtin="all-minilm-l6-v2"),
        description="Embedding model for semantic recall.",
        json_schema_extra={"default": {"builtin": "all-minilm-l6-v2"}},
    )
    scopes: list[Scope] = Field(
        default_factory=lambda: list(ALL_SCOPES),
        min_length=1,
        max_length=3,
        description="Scopes records can belong to.",
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "default": ["user", "agent", "session"],
        },
    )
    retention: Retention = Field(default_factory=Retention, description="Record lifetimes.")
    encryption: Encryption = Field(
        default_factory=Encryption, description="Encryption at rest through Vault transit."
    )
    portability: Portability = Field(
        default_factory=Portability, description="Signed export and import."
    )
    resources: StoreResources = Field(
        default_factory=StoreResources,
        description="CPU and memory of the store's pod (it runs the built-in embedder).",
        json_schema_extra={"default": {"cpu": "1", "memory": "2Gi"}},
    )
    auth: Auth = Field(
        default_factory=Auth,
        description="API keys of the memory API, in Vault. A key's tenant (the secret field "
        "name up to its first '.') sees only its own subjects.",
    )
    extraction: Extraction | None = Field(
        default=None, description="Extraction of records from conversations; unset: off."
    )
    deletion_policy: Literal["Retain", "Destroy"] = Field(
        default="Retain",
        description="When the MemoryStore is deleted. Retain: the volume (or the PostgreSQL "
        "schema) and the transit keys stay (re-create the store to get its memory back). "
        "Destroy: the volume is deleted and the transit keys are deleted in Vault "
        "(crypto-shredding: backups, and a PostgreSQL schema's rows, become unreadable; the "
        "schema's tables stay for the database's owner to drop).",
    )
    residency: Residency | None = Field(
        default=None, description="Where the store and its volume may live."
    )


class RecordCounts(ApiModel):
    """Current records (not versions or tombstones), in total and by scope."""

    total: int = Field(default=0, ge=0, description="All records.")
    user: int = Field(default=0, ge=0, description="User-scoped records.")
    agent: int = Field(default=0, ge=0, description="Agent-scoped records.")
    session: int = Field(default=0, ge=0, description="Session-scoped records.")


class Transfer(ApiModel):
    """One export or import of a bundle, as the store last reported it."""

    time: str = Field(max_length=64, description="When it finished (RFC 3339).")
    records: int = Field(ge=0, description="Records in the bundle (or imported).")
    digest: str | None = Field(default=None, max_length=71, description="sha256 of the bundle.")


class MemoryStoreStatus(ApiModel):
    """Observed state of a MemoryStore."""

    conditions: list[Condition] = conditions_field(
        "Ready, Progressing, SecretsUnavailable, PolicyCompliant."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status describes."
    )
    endpoint: str | None = Field(
        default=None, max_length=2048, description="Base URL of the memory API."
    )
    backend: Literal["sqlite", "postgres"] | None = Field(
        default=None, description="The storage engine the store runs on."
    )
    ready_replicas: int | None = Field(
        default=None, ge=0, description="postgres: store replicas ready to answer."
    )
    records: RecordCounts | None = Field(
        default=None,
        description="Records held, read from the store every minute while it serves.",
    )
    subjects: int | None = Field(default=None, ge=0, description="Subjects with records.")
    last_export: Transfer | None = Field(
        default=None, description="The latest export since the store's pod started."
    )
    last_import: Transfer | None = Field(
        default=None, description="The latest import since the store's pod started."
    )
    signer: str | None = Field(
        default=None, max_length=64, description="Key id that signs this store's bundles."
    )
    signer_public_key: str | None = Field(
        default=None,
        max_length=64,
        description="The Ed25519 public key (base64) that signs this store's bundles and "
        "audit checkpoints: the trust anchor for `freehold audit verify --trusted-key`.",
    )
