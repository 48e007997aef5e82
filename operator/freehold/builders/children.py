"""Every object a ModelDeployment owns, for a given backend."""

from __future__ import annotations

from typing import Any, Literal

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.deployment import build_deployment, build_service
from freehold.builders.model_workload import (
    ROLE_LABEL,
    BuildContext,
    metadata,
    needs_vault,
    selector,
    service_account_name,
    vault_ca_name,
)
from freehold.builders.network import build_allow, build_autoscaler_egress, build_default_deny
from freehold.builders.rayservice import build_rayservice

Backend = Literal["RayService", "Deployment"]


def build_service_account(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(ctx, service_account_name(ctx)),
        # Pods get a Vault-audience projected token instead of an API token.
        "automountServiceAccountToken": False,
    }


def build_pdb(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, ctx.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {**selector(ctx), ROLE_LABEL: "model"}},
        },
    }


def build_children(
    spec: ModelDeploymentSpec, ctx: BuildContext, backend: Backend
) -> list[dict[str, Any]]:
    ray = backend == "RayService"
    children = [
        build_service_account(ctx),
        build_default_deny(ctx),
        build_allow(spec, ctx, ray=ray),
    ]
    if ray:
        children.append(build_rayservice(spec, ctx))
        if spec.scaling.max_replicas > spec.scaling.min_replicas:
            children.append(build_autoscaler_egress(ctx))
    else:
        children += [build_deployment(spec, ctx), build_service(ctx)]
    if spec.scaling.max_replicas > 1:
        children.append(build_pdb(ctx))
    if needs_vault(spec) and ctx.vault_ca_pem:
        children.append(build_vault_ca(ctx))
    return children


def build_vault_ca(ctx: BuildContext) -> dict[str, Any]:
    """Vault's private CA for the workload's Vault client (public data, not a secret)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, vault_ca_name(ctx)),
        "data": {"ca.crt": ctx.vault_ca_pem},
    }
