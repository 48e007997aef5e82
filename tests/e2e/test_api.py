"""The API on a real API server: the CRDs install, `kubectl explain` documents them,
examples are admitted, and every invalid manifest is refused at the same field paths
`freehold validate` names offline (a differential test over tests/data/invalid/)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from freehold.validation import validate
from tests.e2e.conftest import eventually, kubectl
from tests.paths import CRDS, EXAMPLES, INVALID

pytestmark = pytest.mark.e2e
# Field paths in the API server's answer: "spec.scaling.minReplicas: Invalid value ..."
# and strict decoding's 'unknown field "spec.foo"'.
_PATH = re.compile(r'(?:^|[\s\[,"])((?:spec|metadata)(?:\.[A-Za-z0-9_-]+|\[\d+\])*)(?::|")')


def server_paths(stderr: str) -> set[str]:
    return set(_PATH.findall(stderr))


def test_every_crd_is_established(crds: None) -> None:
    names = kubectl("get", "crd", "-o", "name").stdout.split()
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd['metadata']['name']}" in names


def test_kubectl_explain_shows_the_descriptions(crds: None) -> None:
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    explained = eventually(
        lambda: (
            (r := kubectl("explain", "modeldeployment.spec.scaling", check=False)).returncode == 0
            and r.stdout
        )
    )
    assert "Replica autoscaling" in explained
    assert "minReplicas" in explained and "scales to zero" in explained


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_admitted(namespace: str, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        doc["metadata"]["namespace"] = namespace
        kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))


def test_manifests_written_in_the_docs_are_admitted(namespace: str) -> None:
    from tests.docs.test_site import written_manifests

    found = written_manifests()
    assert found, "the docs hold no manifest"
    for page, written in found:
        doc: dict[str, Any] = copy.deepcopy(written)
        doc["metadata"]["namespace"] = namespace
        result = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                         input=yaml.safe_dump(doc), check=False)  # fmt: skip
        assert result.returncode == 0, f"{page}: {result.stderr}"


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_manifests_fail_at_the_same_fields_as_offline(namespace: str, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    if doc.get("apiVersion") != "freehold.dev/v1alpha1" or doc.get("kind") not in {
        "ModelDeployment",
        "MemoryStore",
        "EvalJob",
    }:
        pytest.skip("not a Freehold kind: the API server has no schema to differ on")
    offline = {e.path for e in validate(doc)}
    assert offline, "the offline validator accepts it"
    doc["metadata"]["namespace"] = namespace
    result = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=yaml.safe_dump(doc),
        check=False,
    )
    assert result.returncode != 0, f"the API server admitted {path.name}"
    assert server_paths(result.stderr) == offline, result.stderr


def test_residency_region_is_immutable(namespace: str) -> None:
    doc = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    doc["metadata"] = {"name": "immutable", "namespace": namespace}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    result = kubectl(
        "patch",
        "modeldeployment",
        "immutable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"residency":{"region":"elsewhere"}}}',
        check=False,
    )
    assert result.returncode != 0 and "immutable" in result.stderr
    kubectl("delete", "modeldeployment", "immutable", "-n", namespace)
