"""The chart on a real cluster, in a namespace enforcing Pod Security "restricted": the
operator starts with the chart's RBAC and reconciles the example.

Needs an operator image the nodes can pull (build docker/operator.Dockerfile, then e.g.
`kind load docker-image freehold-operator:dev`):
    FREEHOLD_E2E_OPERATOR_IMAGE=freehold-operator:dev KUBECONFIG=... scripts/test tests/e2e
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.e2e.conftest import kubectl
from tests.e2e.test_cluster import manifest
from tests.paths import CHART, EXAMPLES
from tests.tools import binary

pytestmark = pytest.mark.e2e


def test_chart_installs_restricted_and_reconciles(cluster: str) -> None:
    image = os.environ.get("FREEHOLD_E2E_OPERATOR_IMAGE")
    if not image:
        pytest.skip("set FREEHOLD_E2E_OPERATOR_IMAGE to an operator image the nodes can pull")
    repository, _, tag = image.rpartition(":")
    registry, _, repository = (
        repository.partition("/") if "/" in repository else ("docker.io", "", repository)
    )
    system = f"freehold-system-{uuid.uuid4().hex[:6]}"
    workloads = f"freehold-models-{uuid.uuid4().hex[:6]}"
    for ns in (system, workloads):
        kubectl("create", "namespace", ns)
        kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    helm = str(binary("helm"))
    try:
        subprocess.run(
            [
                helm,
                "install",
                "freehold",
                str(CHART),
                "-n",
                system,
                "--wait",
                "--timeout",
                "5m",
                "--set",
                f"image.registry={registry}",
                "--set",
                f"image.repository={repository}",
                "--set",
                f"image.tag={tag}",
                "--set",
                "image.pullPolicy=IfNotPresent",
                "--set",
                f"watch.namespaces={{{workloads}}}",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=360,
        )
        kubectl("apply", "-f", "-", input=manifest(EXAMPLES / "modeldeployment.yaml", workloads))
        kubectl(
            "wait",
            "modeldeployment/gemma-270m",
            "-n",
            workloads,
            "--for=condition=PolicyCompliant=True",
            "--timeout=180s",
        )
        kubectl("get", "networkpolicy/gemma-270m-default-deny", "-n", workloads)
    finally:
        subprocess.run(
            [helm, "uninstall", "freehold", "-n", system],
            check=False,
            capture_output=True,
            timeout=120,
        )
        for ns in (workloads, system):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)
