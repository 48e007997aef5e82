"""The registered kinds. The operator's watches, the adapter's allowed resources, the
chart's RBAC (`freehold rbac`) and the tests derive from this list, not from tables."""

from __future__ import annotations

from typing import Any

from freehold.adapters.kubernetes import ResourceType
from freehold.builders.model_workload import ClusterConfig
from freehold.kinds.eval_job import EvalJobKind
from freehold.kinds.memory_store import MemoryStoreKind
from freehold.kinds.model_deployment import ModelDeploymentKind
from freehold.kinds.model_router import ModelRouterKind
from freehold.kinds.sovereignty_policy import SovereigntyPolicyKind
from freehold.reconciler import KindController


def registry(config: ClusterConfig | None = None) -> list[KindController[Any]]:
    config = config or ClusterConfig(serving_image="-", ray_version="-", api_server_cidr="-")
    return [
        ModelDeploymentKind(config),
        MemoryStoreKind(config),
        EvalJobKind(config),
        ModelRouterKind(config),
        SovereigntyPolicyKind(config),
    ]


def child_types(kinds: list[KindController[Any]]) -> list[ResourceType]:
    """Every child resource type of the registered kinds, once, in a stable order."""
    seen: dict[ResourceType, None] = {}
    for kind in kinds:
        for t in kind.child_types:
            seen.setdefault(t, None)
    return list(seen)


def lookup_types(kinds: list[KindController[Any]]) -> list[ResourceType]:
    """Types the kinds read (get, list) besides their own and their children."""
    seen: dict[ResourceType, None] = {}
    for kind in kinds:
        for t in getattr(kind, "lookup_types", ()):
            seen.setdefault(t, None)
    return list(seen)
