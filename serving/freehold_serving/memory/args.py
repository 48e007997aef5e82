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


class MemoryArgs(Strict):
    name: str
    namespace: str = "default"
    data_dir: str = Field(default="/data", description="Where the SQLite files live (a PVC).")
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
