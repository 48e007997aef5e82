"""`helm install` of the chart on a real API server, in a namespace that enforces Pod
Security "restricted": every object is admitted and the operator's pod passes admission
(the ReplicaSet controller creates it; a PSS refusal would show as FailedCreate).

Where nodes can run pods and pull an operator image (kind: build docker/operator.Dockerfile,
`kind load docker-image freehold-operator:dev`), set FREEHOLD_E2E_OPERATOR_IMAGE too: the
test then waits for the rollout and for the operator to reconcile the example.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from tests.e2e.conftest import apply, condition, eventually, example, get, kubectl
from tests.paths import CHART
from tests.tools import binary

pytestmark = pytest.mark.e2e


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    from tests.e2e.conftest import _CLUSTER

    done = subprocess.run(
        [str(binary("helm")), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=360,
        env={**os.environ, "KUBECONFIG": _CLUSTER["kubeconfig"]},
    )
    assert done.returncode == 0, f"helm {args[0]}: {done.stderr}"
    return done


def test_chart_installs_under_restricted_pod_security(crds: None) -> None:
    system = f"fh-chart-{uuid.uuid4().hex[:6]}"
    workloads = f"fh-models-{uuid.uuid4().hex[:6]}"
    for ns in (system, workloads):
        kubectl("create", "namespace", ns)
        kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    settings = ["--set", f"watch.namespaces={{{workloads}}}"]
    image = os.environ.get("FREEHOLD_E2E_OPERATOR_IMAGE")
    if image:
        repository, _, tag = image.rpartition(":")
        registry, _, repository = (
            repository.partition("/") if "/" in repository else ("docker.io", "", repository)
        )
        settings += [
            "--set",
            f"image.registry={registry}",
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
        ]
    try:
        helm("install", "freehold", str(CHART), "-n", system, *settings)
        status = json.loads(helm("status", "freehold", "-n", system, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"

        def admitted() -> bool:
            pods = json.loads(kubectl("get", "pods", "-n", system, "-o", "json").stdout)["items"]
            return len(pods) == 1

        eventually(admitted, timeout=60)
        events = kubectl("get", "events", "-n", system, "-o", "json").stdout
        assert "FailedCreate" not in events and "violates PodSecurity" not in events
        # The Role is in the watched namespace, bound to the chart's ServiceAccount.
        can = kubectl(
            "auth",
            "can-i",
            "patch",
            "modeldeployments.freehold.dev/status",
            "-n",
            workloads,
            f"--as=system:serviceaccount:{system}:freehold-operator",
            check=False,
        ).stdout.strip()
        assert can == "yes"
        if image:
            kubectl(
                "rollout",
                "status",
                "deployment/freehold-operator",
                "-n",
                system,
                "--timeout=300s",
                timeout=320,
            )
            apply(example(workloads, "charted"))
            eventually(
                lambda: condition(get("modeldeployment", "charted", workloads), "Ready"),
                timeout=120,
            )
    finally:
        from tests.e2e.conftest import _CLUSTER

        # Uninstalled, not just its namespace deleted: the chart's cluster-scoped objects
        # (ClusterRole and binding for SovereigntyPolicies) outlive a namespace.
        subprocess.run(
            [str(binary("helm")), "uninstall", "freehold", "-n", system],
            check=False,
            capture_output=True,
            timeout=120,
            env={**os.environ, "KUBECONFIG": _CLUSTER["kubeconfig"]},
        )
        for ns in (workloads, system):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)
