"""On a real API server: the CRDs admit and reject what they should (schema and CEL),
the operator builds the children, status tells the truth, deletion cascades."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import kubectl
from tests.paths import EXAMPLES, INVALID

pytestmark = pytest.mark.e2e


def manifest(path: Path, namespace: str) -> str:
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump(doc)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_admitted(namespace: str, path: Path) -> None:
    kubectl("apply", "--dry-run=server", "-f", "-", input=manifest(path, namespace))


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_manifests_are_rejected_naming_the_field(namespace: str, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    if doc.get("apiVersion") != "freehold.dev/v1alpha1":
        pytest.skip("not a Freehold resource")
    doc["metadata"]["namespace"] = namespace
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    field = path.read_text().splitlines()[0].removeprefix("# expect: ").split(":")[0]
    assert field.split("[")[0].split(".")[-1] in result.stderr, result.stderr


def test_residency_region_is_immutable(namespace: str) -> None:
    kubectl("apply", "-f", "-", input=manifest(EXAMPLES / "modeldeployment.yaml", namespace))
    result = kubectl(
        "patch",
        "modeldeployment",
        "gemma-270m",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"residency":{"region":"elsewhere"}}}',
        check=False,
    )
    assert result.returncode != 0 and "immutable" in result.stderr


def apply_example(namespace: str) -> None:
    """The example, applied and reconciled at least once."""
    kubectl("apply", "-f", "-", input=manifest(EXAMPLES / "modeldeployment.yaml", namespace))
    kubectl(
        "wait",
        "modeldeployment/gemma-270m",
        "-n",
        namespace,
        "--for=condition=PolicyCompliant=True",
        "--timeout=120s",
    )


def test_operator_builds_children_and_status(namespace: str, operator: None) -> None:
    apply_example(namespace)
    status = json.loads(
        kubectl("get", "modeldeployment/gemma-270m", "-n", namespace, "-o", "json").stdout
    )["status"]
    assert status["backend"] in {"RayService", "Deployment"}
    assert status["endpoint"].endswith(f".{namespace}.svc:8000/v1")
    kubectl(
        "get",
        "serviceaccount/gemma-270m-model",
        "networkpolicy/gemma-270m-default-deny",
        "networkpolicy/gemma-270m-allow",
        "-n",
        namespace,
    )
    if os.environ.get("FREEHOLD_E2E_SERVING_IMAGE"):
        kubectl(
            "wait",
            "modeldeployment/gemma-270m",
            "-n",
            namespace,
            "--for=condition=Ready=True",
            "--timeout=900s",
            timeout=960,
        )
    printed = kubectl("get", "modeldeployments", "-n", namespace).stdout
    assert "READY" in printed and "ENDPOINT" in printed


def test_delete_cascades(namespace: str, operator: None) -> None:
    apply_example(namespace)
    kubectl("delete", "modeldeployment/gemma-270m", "-n", namespace, "--timeout=60s")
    kubectl(
        "wait",
        "serviceaccount/gemma-270m-model",
        "-n",
        namespace,
        "--for=delete",
        "--timeout=120s",
        check=False,
    )
    left = kubectl(
        "get",
        "serviceaccounts,networkpolicies,deployments",
        "-n",
        namespace,
        "-l",
        "freehold.dev/model-deployment=gemma-270m",
        "-o",
        "name",
    ).stdout
    assert left.strip() == ""
