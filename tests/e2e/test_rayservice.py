"""KubeRay installed (its v1.7.0 RayService CRD, from ../shared/kuberay-crds): the operator
switches the backend, the real API server admits every RayService we build against
KubeRay's own schema, the Deployment and Service are pruned, and status follows the
RayService (no KubeRay controller runs here: the test writes the RayService status as
KubeRay would). Runs last (file order): it leaves KubeRay's CRD installed."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import (
    Operator,
    apply,
    condition,
    eventually,
    example,
    get,
    kubectl,
    kuberay_served,
    set_status,
)
from tests.paths import KUBERAY_CRDS

pytestmark = pytest.mark.e2e


def wake(namespace: str, name: str) -> None:
    """KubeRay appearing is not an event on our objects: the safety-net resync would see
    it; the test does not wait for that and touches the object instead."""
    kubectl(
        "annotate", "modeldeployment", name, "-n", namespace, f"poke={time.time()}", "--overwrite"
    )


def test_kuberay_appears_backend_switches_and_prunes(namespace: str, operator: Operator) -> None:
    if kuberay_served():
        pytest.skip("KubeRay was installed before the suite: no switch to watch")
    apply(example(namespace, "switch"))
    eventually(lambda: get("deployment", "switch", namespace))
    kubectl("apply", "--server-side", "-f", str(KUBERAY_CRDS / "ray.io_rayservices.yaml"))
    eventually(  # right after the apply the CRD may have no status yet to wait on
        lambda: (
            kubectl(
                "wait",
                "--for=condition=Established",
                "crd/rayservices.ray.io",
                "--timeout=5s",
                check=False,
            ).returncode
            == 0
        )
    )
    time.sleep(1.5)  # the operator's discovery cache (1 s in tests)
    wake(namespace, "switch")
    rayservice = eventually(lambda: get("rayservice", "switch", namespace), timeout=30)
    assert rayservice["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    config = rayservice["spec"]["serveConfigV2"]
    assert "freehold_serving.app:build_app" in config
    eventually(lambda: get("deployment", "switch", namespace) is None, timeout=30)
    eventually(lambda: get("service", "switch", namespace) is None, timeout=30)
    md = eventually(
        lambda: (
            (m := get("modeldeployment", "switch", namespace))
            and m["status"].get("backend") == "RayService"
            and m
        )
    )
    assert md["status"]["endpoint"] == f"http://switch-serve-svc.{namespace}.svc:8000/v1"


def test_status_follows_the_rayservice_and_kubectl_wait_sees_ready(
    namespace: str, operator: Operator
) -> None:
    if not kuberay_served():
        pytest.skip("needs KubeRay's CRD (installed by the test before)")
    # RayServices are watched from operator start: restart it now that KubeRay is here.
    operator.stop()
    operator.start()
    apply(example(namespace, "served"))
    eventually(lambda: get("rayservice", "served", namespace), timeout=30)
    set_status(
        "rayservice",
        "served",
        namespace,
        {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "RayServiceReady",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "activeServiceStatus": {
                "rayClusterStatus": {"readyWorkerReplicas": 1, "desiredWorkerReplicas": 1}
            },
        },
    )
    kubectl(
        "wait", "modeldeployment/served", "-n", namespace, "--for=condition=Ready", "--timeout=10s"
    )
    md = get("modeldeployment", "served", namespace)
    assert condition(md, "ModelVerified")["status"] == "True"
    assert md["status"]["readyReplicas"] == 1  # type: ignore[index]
    assert md["status"]["servedDigest"].startswith("sha256:a5fd3b62")  # type: ignore[index]
    # Edited by hand: repaired within seconds through the RayService watch.
    kubectl(
        "patch",
        "rayservice",
        "served",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"serveConfigV2":"applications: []"}}',
    )
    eventually(
        lambda: "build_app" in get("rayservice", "served", namespace)["spec"]["serveConfigV2"],  # type: ignore[index]
        timeout=5,
    )
