"""kmock's Kubernetes emulator set up for Freehold: the resources the operator and kopf
use, and a kubeconfig pointing at it. Shared by the operator tests and bench/operator.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]
# The emulator serves discovery only for declared resources; kopf waits for these.
RESOURCES = [
    ("freehold.dev/v1alpha1/modeldeployments", "ModelDeployment", True, ["status"]),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, []),
    ("v1/namespaces", "Namespace", False, []),
    ("v1/events", "Event", True, []),
    ("v1/serviceaccounts", "ServiceAccount", True, []),
    ("v1/services", "Service", True, []),
    ("apps/v1/deployments", "Deployment", True, []),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, []),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True, []),
]
KUBERAY = ("ray.io/v1/rayservices", "RayService", True, ["status"])


def _declare(emulator: Any, resources: list[tuple[str, str, bool, list[str]]]) -> None:
    for key, kind, namespaced, subresources in resources:
        emulator.resources[key] = {
            "namespaced": namespaced,
            "kind": kind,
            "verbs": VERBS,
            "subresources": subresources,
        }


def declare(emulator: Any) -> None:
    _declare(emulator, RESOURCES)


def declare_kuberay(emulator: Any) -> None:
    """KubeRay installed: its RayService CRD shows up in discovery."""
    _declare(emulator, [KUBERAY])


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "emulator", "user": {"token": "test"}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}
                ],
            }
        )
    )
    return path
