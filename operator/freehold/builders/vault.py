"""Vault objects for a workload: an ACL policy naming exactly its paths, and a
Kubernetes-auth role bound to exactly its ServiceAccount. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.model_workload import VAULT_AUDIENCE, BuildContext, service_account_name

TOKEN_TTL = "10m"
TOKEN_MAX_TTL = "30m"


def vault_name(ctx: BuildContext) -> str:
    """Deterministic and collision-free: namespaces cannot contain dots, so
    freehold.<namespace>.<name> identifies one workload whatever the names hold."""
    return f"freehold.{ctx.namespace}.{ctx.name}"


def readable_paths(spec: ModelDeploymentSpec) -> list[str]:
    """KV v2 data paths the workload may read, sorted and unique (no wildcards: the CRD
    schema refuses glob characters)."""
    paths = {f"{s.mount}/data/{s.path}" for s in spec.secrets}
    if spec.auth.api_keys is not None:
        paths.add(f"{spec.auth.api_keys.mount}/data/{spec.auth.api_keys.path}")
    return sorted(paths)


def policy_hcl(spec: ModelDeploymentSpec) -> str:
    blocks = [f'path "{path}" {{\n  capabilities = ["read"]\n}}' for path in readable_paths(spec)]
    return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class VaultRole:
    name: str
    policy: str
    body: dict[str, Any]
    # Transit keys the workload uses, created when missing: (name, type).
    transit_mount: str = "transit"
    transit_keys: tuple[tuple[str, str], ...] = ()


TRANSIT_KEY = "transit-key:"


def transit_key_ref(mount: str, name: str) -> str:
    """An external name that means "this transit key" to VaultApi.remove: deleting it
    crypto-shreds what it wrapped."""
    return f"{TRANSIT_KEY}{mount}/{name}"


def build_role(spec: ModelDeploymentSpec, ctx: BuildContext) -> VaultRole:
    name = vault_name(ctx)
    return VaultRole(
        name=name,
        policy=policy_hcl(spec),
        body={
            "bound_service_account_names": [service_account_name(ctx)],
            "bound_service_account_namespaces": [ctx.namespace],
            "audience": VAULT_AUDIENCE,
            "token_policies": [name],
            "token_ttl": TOKEN_TTL,
            "token_max_ttl": TOKEN_MAX_TTL,
            "token_no_default_policy": True,
        },
    )
