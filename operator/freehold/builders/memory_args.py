"""MemoryStore spec -> memory application args: the one translation the operator (the
StatefulSet's env) and `freehold up` both use."""

from __future__ import annotations

import re

from freehold.api.memory_store import MemoryStoreSpec
from freehold.api.postgres import PostgresConnection
from freehold.builders.serving_args import api_keys_config
from freehold_serving.memory.args import (
    ChatModel,
    EmbeddingSource,
    MemoryArgs,
    PostgresArgs,
    VaultTransit,
)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> float:
    """`90d`, `1h30m`, `500ms` -> seconds (the API's Duration pattern)."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"{value!r} is not a duration such as 30m, 24h or 90d")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def transit_key_names(namespace: str, name: str, spec: MemoryStoreSpec) -> tuple[str, str]:
    """(key-encryption key, bundle-signing key) names in the transit mount."""
    base = spec.encryption.key_name or f"freehold-{namespace}-{name}"
    signing = spec.portability.signing_key or f"{base}-signing"
    return base, signing


def schema_of(name: str, pg: PostgresConnection | None) -> str:
    """A PostgreSQL schema: the spec's schemaName, else the resource's name as an
    identifier (a Kubernetes name may hold '-' and '.' and start with a digit)."""
    if pg is not None and pg.schema_name:
        return pg.schema_name
    ident = re.sub(r"[^a-z0-9_]", "_", name.lower())
    return (ident if re.match(r"[a-z_]", ident) else f"m_{ident}")[:63]


def postgres_schema(name: str, spec: MemoryStoreSpec) -> str:
    return schema_of(name, spec.backend.postgres)


def connection_args(pg: PostgresConnection, name: str, ca_cert: str | None = None) -> PostgresArgs:
    """What a workload needs to reach `pg` (its credentials it asks Vault for itself)."""
    creds = pg.credentials
    database = creds.database_role is not None
    return PostgresArgs(
        host=pg.host,
        port=pg.port,
        database=pg.database,
        db_schema=schema_of(name, pg),
        sslmode=pg.ssl_mode,
        ca_cert=ca_cert if pg.ca_config_map_ref is not None else None,
        credentials="vault-database" if database else "vault-kv",
        vault_mount=creds.database_mount if database else creds.kv_mount,
        vault_path=creds.database_role if database else creds.kv_path,
        owner_role=pg.owner_role,
    )


def postgres_args(
    spec: MemoryStoreSpec, name: str, ca_cert: str | None = None
) -> PostgresArgs | None:
    pg = spec.backend.postgres
    if spec.backend.type != "postgres" or pg is None:
        return None
    return connection_args(pg, name, ca_cert)


def memory_args_for(
    spec: MemoryStoreSpec,
    name: str,
    namespace: str,
    *,
    data_dir: str = "/data",
    model_urls: dict[str, tuple[str, str | None, str | None]] | None = None,
    api_keys_file: str | None = None,
    vault_address: str | None = None,
    vault_role: str | None = None,
    vault_ca_cert: str | None = None,
    otlp_endpoint: str | None = None,
    postgres_ca_cert: str | None = None,
    peer_address: str | None = None,
    index_budget_bytes: int | None = None,
) -> MemoryArgs:
    """`model_urls` maps ModelDeployment names to (base URL, served name, digest): where
    the embedding and extraction models named in the spec answer."""
    urls = model_urls or {}

    def model(ref: str, what: str) -> tuple[str, str | None, str | None]:
        if ref not in urls:
            raise ValueError(f"{what} names ModelDeployment {ref!r}, which is not available")
        return urls[ref]

    embedding = EmbeddingSource()
    if spec.embedding.model_deployment_ref is not None:
        url, _served, _digest = model(spec.embedding.model_deployment_ref.name, "embedding")
        embedding = EmbeddingSource(builtin=None, url=url, model="all-minilm-l6-v2")
    extraction = None
    if spec.extraction is not None:
        url, served, digest = model(spec.extraction.model_deployment_ref.name, "extraction")
        extraction = ChatModel(url=url, model=served, digest=digest)
    api_keys = api_keys_config(
        spec.auth,
        file=api_keys_file,
        vault_address=vault_address,
        vault_role=vault_role,
        vault_ca_cert=vault_ca_cert,
    )
    vault = None
    if vault_address is not None and vault_role is not None:
        key, signing = transit_key_names(namespace, name, spec)
        vault = VaultTransit(
            address=vault_address,
            role=vault_role,
            mount=spec.encryption.transit_mount,
            key_name=key,
            signing_key_name=signing,
            ca_cert=vault_ca_cert,
        )
    retention = spec.retention
    return MemoryArgs(
        otlp_endpoint=otlp_endpoint,
        name=name,
        namespace=namespace,
        data_dir=data_dir,
        postgres=postgres_args(spec, name, postgres_ca_cert),
        embedding=embedding,
        retention_default_seconds=duration_seconds(retention.default_ttl),
        retention_per_type={r.type: duration_seconds(r.ttl) for r in retention.per_type},
        vault=vault,
        trusted_signers=list(spec.portability.trusted_signers),
        include_embeddings=spec.portability.include_embeddings,
        scopes=list(spec.scopes),
        extraction=extraction,
        api_keys=api_keys,
        peer_address=peer_address if spec.backend.type == "postgres" else None,
        index_budget_bytes=index_budget_bytes,
    )
