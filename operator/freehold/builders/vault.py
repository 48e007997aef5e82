"""Vault objects for a workload: an ACL policy naming exactly its paths, and a
Kubernetes-auth role bound to exactly its ServiceAccount. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from freehold.api.base import ExternalSecret
from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.model_workload import VAULT_AUDIENCE, BuildContext, service_account_name
from freehold_serving.router.args import KeyInVault

TOKEN_TTL = "10m"
TOKEN_MAX_TTL = "30m"


def key_in_vault(secret: ExternalSecret | None) -> KeyInVault | None:
    """Where a workload reads a key from Vault itself (its args name the field, never
    the key)."""
    if secret is None:
        return None
    return KeyInVault(mount=secret.mount, path=secret.path, field=secret.key)


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
    s3 = spec.model.s3
    if s3 is not None and s3.credentials is not None:
        paths.add(f"{s3.credentials.mount}/data/{s3.credentials.path}")
    return sorted(paths)


def acl_policy(paths: Mapping[str, str]) -> str:
    """An ACL policy granting each path (sorted) its one capability."""
    blocks = [
        f'path "{path}" {{\n  capabilities = ["{capability}"]\n}}'
        for path, capability in sorted(paths.items())
    ]
    return "\n\n".join(blocks) + "\n"


def policy_hcl(spec: ModelDeploymentSpec) -> str:
    return acl_policy(dict.fromkeys(readable_paths(spec), "read"))


def role_body(name: str, service_account: str, namespace: str) -> dict[str, Any]:
    """A Kubernetes-auth role for exactly one ServiceAccount, with only its own policy."""
    return {
        "bound_service_account_names": [service_account],
        "bound_service_account_namespaces": [namespace],
        "audience": VAULT_AUDIENCE,
        "token_policies": [name],
        "token_ttl": TOKEN_TTL,
        "token_max_ttl": TOKEN_MAX_TTL,
        "token_no_default_policy": True,
    }


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
        body=role_body(name, service_account_name(ctx), ctx.namespace),
    )
