"""The chart's RBAC grants exactly the API calls the operator makes.

The calls are derived, not listed: a real operator runs a scenario through every code
path that touches the API (create on both backends, the switch between them, pruning,
drift repair, status, events) against the emulator, which records every request.
"""

from __future__ import annotations

import subprocess

import yaml

from tests.integration.operator.conftest import MD_PATH, NS, Cluster, eventually, example
from tests.paths import CHART
from tests.tools import binary

# Rules no API call exercises, each with its reason.
WITHOUT_CALLS = {
    # blockOwnerDeletion on children needs it under OwnerReferencesPermissionEnforcement.
    ("freehold.dev", "modeldeployments/finalizers", "update"),
}


def call_of(method: str, path: str, params: dict[str, str]) -> tuple[str, str, str] | None:
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None  # discovery: allowed to every authenticated user
    if rest[:1] == ["namespaces"]:
        rest = rest[2:]
    if not rest:
        return None
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method)
    if method == "GET":
        verb = "get" if named else ("watch" if params.get("watch") in ("true", "1") else "list")
    return (group, resource, verb) if verb else None


async def tamper(cluster: Cluster, path: str) -> None:
    label = "freehold.dev/model-deployment"
    await cluster.request("PATCH", path, {"metadata": {"labels": {label: "edited"}}}, merge=True)

    async def restored() -> bool:
        obj = await cluster.get(path)
        return bool(obj and obj["metadata"]["labels"][label] == "gemma-270m")

    await eventually(restored)


def chart_rules(*sets: str) -> set[tuple[str, str, str]]:
    args = [str(binary("helm")), "template", "t", str(CHART), "-n", "freehold-system"]
    for s in sets:
        args += ["--set", s]
    rendered = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    grants = set()
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        grants |= {(group, resource, verb) for verb in rule["verbs"]}
    return grants


async def test_chart_rbac_covers_exactly_the_calls_made(
    cluster: Cluster, operator: subprocess.Popen[str]
) -> None:
    apps = f"/apis/apps/v1/namespaces/{NS}"
    await cluster.create_md(example())
    await eventually(lambda: cluster.get(f"{apps}/deployments/gemma-270m"))
    # drift: edited children of every kind are patched back
    for path in (
        f"/api/v1/namespaces/{NS}/serviceaccounts/gemma-270m-model",
        f"/api/v1/namespaces/{NS}/services/gemma-270m",
        f"{apps}/deployments/gemma-270m",
        f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/gemma-270m-allow",
        f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/gemma-270m",
    ):
        await tamper(cluster, path)
    # drift: a deleted child is restored by the resync pass
    await cluster.request("DELETE", f"/api/v1/namespaces/{NS}/services/gemma-270m")
    await eventually(lambda: cluster.get(f"/api/v1/namespaces/{NS}/services/gemma-270m"))
    # KubeRay appears: the next passes switch backends and prune the Deployment
    cluster.declare_kuberay()
    rayservice = f"/apis/ray.io/v1/namespaces/{NS}/rayservices/gemma-270m"
    await eventually(lambda: cluster.get(rayservice), timeout=60)
    await tamper(cluster, rayservice)

    async def deployment_gone() -> bool:
        return await cluster.get(f"{apps}/deployments/gemma-270m") is None

    await eventually(deployment_gone)
    # scaling to one replica prunes the PDB and the autoscaler's egress policy
    await cluster.request(
        "PATCH",
        f"{MD_PATH}/gemma-270m",
        {"spec": {"scaling": {"minReplicas": 1, "maxReplicas": 1}}},
        merge=True,
    )

    async def pdb_gone() -> bool:
        return (
            await cluster.get(f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/gemma-270m")
            is None
        )

    await eventually(pdb_gone)

    calls: set[tuple[str, str, str]] = set()
    for request in list(cluster.emulator):
        if request.headers.get("User-Agent", "").startswith("python-httpx"):
            continue  # the test's own requests
        call = call_of(str(request.method.value).upper(), request.url.path, dict(request.params))
        if call is not None:
            calls.add(call)
    for mode in ("watch.mode=namespaced", "watch.mode=cluster"):
        granted = chart_rules(mode)
        assert sorted(calls - granted) == [], f"{mode}: calls without a rule"
        assert sorted(granted - calls - WITHOUT_CALLS) == [], f"{mode}: rules without a call"
