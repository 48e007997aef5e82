"""What every kind shares: the resource types it reads and writes (named once), and the
plumbing a kind would otherwise repeat (its config, build context and spec parsing). A kind
declares its API kind (`api`: the spec model, names, scope) and its child and lookup types;
the rest comes from here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel

from freehold.adapters.kubernetes import ResourceType
from freehold.api import kinds as api_kinds
from freehold.builders.model_workload import BuildContext, ClusterConfig


def freehold_type(api: api_kinds.Kind) -> ResourceType:
    return ResourceType(
        f"{api.group}/{api.version}", api.kind, api.plural, namespaced=api.scope == "Namespaced"
    )


# Kubernetes types the kinds build or read.
SERVICE_ACCOUNT = ResourceType("v1", "ServiceAccount", "serviceaccounts")
SERVICE = ResourceType("v1", "Service", "services")
CONFIG_MAP = ResourceType("v1", "ConfigMap", "configmaps")
POD = ResourceType("v1", "Pod", "pods")
PVC = ResourceType("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
DEPLOYMENT = ResourceType("apps/v1", "Deployment", "deployments")
STATEFULSET = ResourceType("apps/v1", "StatefulSet", "statefulsets")
JOB = ResourceType("batch/v1", "Job", "jobs")
NETWORK_POLICY = ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
PDB = ResourceType("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
RAYSERVICE = ResourceType("ray.io/v1", "RayService", "rayservices")
# Freehold's own, from their API definitions.
MODEL_DEPLOYMENT = freehold_type(api_kinds.MODEL_DEPLOYMENT)
EVAL_JOB = freehold_type(api_kinds.EVAL_JOB)
MEMORY_STORE = freehold_type(api_kinds.MEMORY_STORE)
MODEL_ROUTER = freehold_type(api_kinds.MODEL_ROUTER)
SOVEREIGNTY_POLICY = freehold_type(api_kinds.SOVEREIGNTY_POLICY)

# Kinds with a Vault role (or keys) keep this finalizer until Vault let them go.
VAULT_FINALIZER = "freehold.dev/vault-cleanup"
# Reasons that say Vault, not the spec, is why a resource waits.
VAULT_REASONS = {
    "VaultSealed",
    "VaultUnreachable",
    "VaultForbidden",
    "VaultNotConfigured",
    "VaultError",
}

SpecT = TypeVar("SpecT", bound=BaseModel)


class KindBase(Generic[SpecT]):
    """`api` names the kind; `resource` (its ResourceType) and `parse` follow from it."""

    api: api_kinds.Kind
    resource: ResourceType

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.resource = freehold_type(cls.api)

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config

    def context(self, meta: Mapping[str, Any]) -> BuildContext:
        return BuildContext.of(self.config, meta["name"], meta["namespace"])

    def parse(self, manifest: dict[str, Any]) -> SpecT:
        return cast(SpecT, self.api.spec.model_validate(manifest["spec"]))
