"""MemoryStore on the real API server: its children (StatefulSet with its volume, Service,
ServiceAccount, NetworkPolicies), its Vault transit keys and role, truthful status, and
deletion by policy: Retain keeps the volume and keys, Destroy deletes both (the volume
through kube-controller-manager's StatefulSet controller, the keys through the finalizer).
Vault is tests/vault_server.py (it cannot be installed here)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    Operator,
    apply,
    condition,
    eventually,
    get,
    kubectl,
    set_status,
)
from tests.paths import EXAMPLES
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]


def store(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "memorystore.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"].update(spec)
    return doc


def owned(namespace: str, uid: str) -> dict[str, dict[str, Any]]:
    listed = json.loads(
        kubectl(
            "get",
            "serviceaccounts,services,statefulsets,networkpolicies,configmaps",
            "-n",
            namespace,
            "-l",
            f"freehold.dev/owner-uid={uid}",
            "-o",
            "json",
        ).stdout
    )["items"]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in listed}


def claims(namespace: str) -> list[str]:
    listed = json.loads(kubectl("get", "pvc", "-n", namespace, "-o", "json").stdout)["items"]
    return [o["metadata"]["name"] for o in listed]


@pytest.mark.parametrize("policy", ["Retain", "Destroy"])
def test_memory_store_lifecycle(
    namespace: str, operator: Operator, vault: VaultServer, policy: str
) -> None:
    name = f"mem-{policy.lower()}"
    apply(store(namespace, name, deletionPolicy=policy))
    key = f"freehold-{namespace}-{name}"
    role = f"freehold.{namespace}.{name}"
    eventually(lambda: role in vault.state.roles)
    assert vault.state.transit[key]["type"] == "aes256-gcm96"
    assert vault.state.transit[f"{key}-signing"]["type"] == "ed25519"
    assert vault.state.roles[role]["bound_service_account_names"] == [f"{name}-memory"]
    assert f'path "transit/decrypt/{key}"' in vault.state.policies[role]
    uid = get("memorystore", name, namespace)["metadata"]["uid"]  # type: ignore[index]
    expected = {
        f"ServiceAccount/{name}-memory",
        f"Service/{name}",
        f"StatefulSet/{name}",
        f"NetworkPolicy/{name}-default-deny",
        f"NetworkPolicy/{name}-allow",
    }
    eventually(lambda: expected <= set(owned(namespace, uid)))
    sts = owned(namespace, uid)[f"StatefulSet/{name}"]
    assert sts["spec"]["replicas"] == 1
    # kube-controller-manager's StatefulSet controller makes the pod's volume claim.
    eventually(lambda: f"data-{name}-0" in claims(namespace))

    ms = get("memorystore", name, namespace)
    assert condition(ms, "Ready")["reason"] in ("Creating", "Starting")
    assert condition(ms, "SecretsUnavailable")["status"] == "False"
    assert ms["status"]["endpoint"] == f"http://{name}.{namespace}.svc:8000/v1/memory"  # type: ignore[index]
    assert ms["metadata"]["finalizers"] == ["freehold.dev/vault-cleanup"]  # type: ignore[index]
    # kube-controller-manager's StatefulSet controller owns the StatefulSet's status; with
    # no kubelet here, the pod is made Ready by writing its status as a kubelet would.
    eventually(lambda: get("pod", f"{name}-0", namespace))
    now = "2026-01-01T00:00:00Z"
    set_status(
        "pod",
        f"{name}-0",
        namespace,
        {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        },
    )
    eventually(
        lambda: condition(get("memorystore", name, namespace), "Ready").get("status") == "True"
    )
    columns = kubectl("get", "memorystore", name, "-n", namespace).stdout
    assert "True" in columns and f"{name}.{namespace}.svc" in columns

    kubectl("delete", "memorystore", name, "-n", namespace, "--wait=true", "--timeout=60s")
    assert role not in vault.state.roles and role not in vault.state.policies
    if policy == "Destroy":
        # Crypto-shredded: the keys are gone from Vault, and the volume with the StatefulSet.
        assert key not in vault.state.transit and f"{key}-signing" not in vault.state.transit
        eventually(lambda: f"data-{name}-0" not in claims(namespace), timeout=60)
    else:
        assert key in vault.state.transit and f"{key}-signing" in vault.state.transit
        eventually(lambda: owned(namespace, uid) == {}, timeout=60)
        assert f"data-{name}-0" in claims(namespace)


def test_bad_memory_store_specs_are_refused_by_the_api_server(namespace: str) -> None:
    bad = store(namespace, "bad", retention={"perType": [{"type": "mood", "ttl": "1d"}]})
    answer = kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert answer.returncode != 0 and "spec.retention.perType[0].type" in answer.stderr
    bad = store(namespace, "bad", portability={"trustedSigners": ["not-a-key"]})
    answer = kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert answer.returncode != 0 and "trustedSigners[0]" in answer.stderr
