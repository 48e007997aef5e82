"""create, update, drift repair, delete, bad spec, KubeRay present/absent, 409 and 500."""

from __future__ import annotations

import subprocess
from typing import Any

import jsonschema
import yaml

from tests.contracts.test_kubernetes_schemas import kuberay_schema, strict
from tests.integration.operator.conftest import MD_PATH, NS, Cluster, eventually, example

APPS = f"/apis/apps/v1/namespaces/{NS}"
CORE = f"/api/v1/namespaces/{NS}"
NET = f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"
PDB = f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"
RAY = f"/apis/ray.io/v1/namespaces/{NS}/rayservices"


def condition(md: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (md.get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return None


def owned_by(obj: dict[str, Any], name: str) -> bool:
    refs = obj["metadata"].get("ownerReferences", [])
    return any(
        r["kind"] == "ModelDeployment" and r["name"] == name and r.get("controller") for r in refs
    )


async def test_create_without_kuberay_makes_deployment_and_truthful_status(
    cluster: Cluster, operator: subprocess.Popen[str]
) -> None:
    await cluster.create_md(example())
    deployment = await eventually(lambda: cluster.get(f"{APPS}/deployments/gemma-270m"))
    assert owned_by(deployment, "gemma-270m")
    for path in (
        f"{CORE}/services/gemma-270m",
        f"{CORE}/serviceaccounts/gemma-270m-model",
        f"{NET}/gemma-270m-default-deny",
        f"{NET}/gemma-270m-allow",
        f"{PDB}/gemma-270m",
    ):
        child = await eventually(lambda p=path: cluster.get(p))
        assert owned_by(child, "gemma-270m"), path

    async def starting() -> dict[str, Any] | None:
        return condition(await cluster.md(), "Ready")

    ready = await eventually(starting)
    assert (ready["status"], ready["reason"]) == ("False", "Starting")
    md = await cluster.md()
    assert md["status"]["backend"] == "Deployment"
    assert md["status"]["endpoint"] == f"http://gemma-270m.{NS}.svc:8000/v1"
    assert md["status"]["servedName"] == "gemma-3-270m"
    assert "kopf" not in md["status"]  # kopf's bookkeeping stays in annotations

    # The Deployment controller (played by the test) reports a ready pod.
    await cluster.request(
        "PATCH",
        f"{APPS}/deployments/gemma-270m/status",
        {"status": {"readyReplicas": 1, "replicas": 1}},
        merge=True,
    )

    async def ready_now() -> bool:
        md = await cluster.md()
        ready = condition(md, "Ready")
        return bool(ready and ready["status"] == "True")

    await eventually(ready_now)
    md = await cluster.md()
    assert md["status"]["readyReplicas"] == 1
    assert condition(md, "ModelVerified")["status"] == "True"  # type: ignore[index]
    assert md["status"]["servedDigest"].startswith("sha256:a5fd3b62")


async def test_kuberay_present_makes_a_valid_rayservice(
    cluster: Cluster, operator: subprocess.Popen[str]
) -> None:
    cluster.declare_kuberay()
    await cluster.create_md(example())
    rayservice = await eventually(lambda: cluster.get(f"{RAY}/gemma-270m"))
    assert owned_by(rayservice, "gemma-270m")
    body = {k: v for k, v in rayservice.items() if k != "status"}
    body["metadata"] = {
        k: v
        for k, v in body["metadata"].items()
        if k in {"name", "namespace", "labels", "annotations", "ownerReferences"}
    }
    jsonschema.Draft7Validator(strict(kuberay_schema("rayservices"))).validate(body)
    assert await cluster.get(f"{APPS}/deployments/gemma-270m") is None
    await cluster.request(
        "PATCH",
        f"{RAY}/gemma-270m/status",
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "x",
                        "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
                "activeServiceStatus": {
                    "rayClusterStatus": {"readyWorkerReplicas": 2, "desiredWorkerReplicas": 2}
                },
            }
        },
        merge=True,
    )

    async def ready() -> bool:
        md = await cluster.md()
        return bool(
            (condition(md, "Ready") or {}).get("status") == "True"
            and md["status"].get("readyReplicas") == 2
        )

    await eventually(ready)
    md = await cluster.md()
    assert md["status"]["endpoint"] == f"http://gemma-270m-serve-svc.{NS}.svc:8000/v1"


async def test_spec_update_rolls_out_and_prunes(
    cluster: Cluster, operator: subprocess.Popen[str]
) -> None:
    await cluster.create_md(example())
    await eventually(lambda: cluster.get(f"{PDB}/gemma-270m"))
    await cluster.request(
        "PATCH",
        f"{MD_PATH}/gemma-270m",
        {
            "spec": {
                "scaling": {"minReplicas": 1, "maxReplicas": 1},
                "engine": {"contextLength": 2048},
            }
        },
        merge=True,
    )

    async def rolled_out() -> bool:
        dep = await cluster.get(f"{APPS}/deployments/gemma-270m")
        env = {
            e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        }  # type: ignore[index]
        return '"context_length":2048' in env["FREEHOLD_SERVING_ARGS"]

    await eventually(rolled_out)
    # one replica at most: no PodDisruptionBudget any more
    await eventually(lambda: _absent(cluster, f"{PDB}/gemma-270m"))


async def _absent(cluster: Cluster, path: str) -> bool:
    return await cluster.get(path) is None


async def test_drift_is_repaired(cluster: Cluster, operator: subprocess.Popen[str]) -> None:
    await cluster.create_md(example())
    await eventually(lambda: cluster.get(f"{CORE}/services/gemma-270m"))
    await cluster.request("DELETE", f"{CORE}/services/gemma-270m")
    await cluster.request(
        "PATCH",
        f"{NET}/gemma-270m-default-deny",
        {"spec": {"policyTypes": ["Ingress"]}},
        merge=True,
    )
    await eventually(lambda: cluster.get(f"{CORE}/services/gemma-270m"))

    async def deny_restored() -> bool:
        policy = await cluster.get(f"{NET}/gemma-270m-default-deny")
        return bool(policy and policy["spec"]["policyTypes"] == ["Ingress", "Egress"])

    await eventually(deny_restored)


async def test_bad_spec_is_reported_and_builds_nothing(
    cluster: Cluster, operator: subprocess.Popen[str]
) -> None:
    bad = example("bad")
    bad["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 1}
    await cluster.create_md(bad)

    async def reported() -> dict[str, Any] | None:
        return condition(await cluster.md("bad"), "Ready")

    ready = await eventually(reported)
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.scaling.minReplicas" in ready["message"]
    assert await cluster.get(f"{APPS}/deployments/bad") is None
    assert await cluster.get(f"{CORE}/serviceaccounts/bad-model") is None


async def test_delete_leaves_nothing_blocking(
    cluster: Cluster, operator: subprocess.Popen[str]
) -> None:
    await cluster.create_md(example())
    await eventually(lambda: cluster.get(f"{APPS}/deployments/gemma-270m"))
    md = await cluster.md()
    assert not md["metadata"].get("finalizers")  # nothing outside the cluster to clean up
    await cluster.request("DELETE", f"{MD_PATH}/gemma-270m")
    await eventually(lambda: _absent(cluster, f"{MD_PATH}/gemma-270m"))
    # children go with the owner through their ownerReferences (garbage collection is the
    # API server's; the e2e suite checks it on a real cluster)
    dep = await cluster.get(f"{APPS}/deployments/gemma-270m")
    assert dep is not None and owned_by(dep, "gemma-270m")
    assert operator.poll() is None


async def test_conflict_and_server_error_are_retried(
    cluster: Cluster, operator: subprocess.Popen[str]
) -> None:
    emulator = cluster.emulator
    conflict = emulator[f"post {APPS}/deployments"][:1] << 409
    failure = emulator[f"patch {MD_PATH}/gemma-270m/status"][:1] << 500
    await cluster.create_md(example())

    async def converged() -> bool:
        md = await cluster.md()
        return (
            await cluster.get(f"{APPS}/deployments/gemma-270m") is not None
            and condition(md, "Ready") is not None
        )

    await eventually(converged)
    assert len(list(conflict)) == 1 and len(list(failure)) == 1
    assert operator.poll() is None


def test_example_residency_reaches_the_pods() -> None:
    from freehold.validation import defaulted

    md = defaulted(yaml.safe_load(yaml.safe_dump(example())))
    assert md["spec"]["residency"]["region"] == "eu-central"
