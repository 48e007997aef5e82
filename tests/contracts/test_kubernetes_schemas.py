"""Every object the operator builds is valid for the API server that receives it:
RayServices against KubeRay v1.7.0's CRD schema, the rest against Kubernetes' own."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from freehold.builders.children import build_children
from tests.paths import KUBERAY_CRDS
from tests.unit.test_builders import CTX, MATRIX, SPECS


def kuberay_schema(plural: str) -> dict[str, Any]:
    path = KUBERAY_CRDS / f"ray.io_{plural}.yaml"
    if not path.exists():
        pytest.fail(f"KubeRay CRDs not found at {path} (shared/kuberay-crds)")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Make unknown fields errors, as `kubectl apply --validate=strict` does: a field
    KubeRay does not know would be silently pruned, and its intent lost."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(x) for x in schema]  # type: ignore[return-value]
    return schema


@pytest.mark.parametrize(("name", "backend"), MATRIX)
def test_children_validate(name: str, backend: str) -> None:
    rayservice = strict(kuberay_schema("rayservices"))
    for obj in build_children(SPECS[name], CTX, backend):  # type: ignore[arg-type]
        if obj["kind"] == "RayService":
            jsonschema.Draft7Validator(rayservice).validate(obj)
        else:
            kubernetes_validate.validate(obj, "1.37.0", strict=True)


@pytest.mark.parametrize("example", ["memorystore.yaml", "memorystore-postgres.yaml"])
@pytest.mark.parametrize("policy", ["Retain", "Destroy"])
def test_memory_store_children_validate(example: str, policy: str) -> None:
    from freehold.api.memory_store import MemoryStoreSpec
    from freehold.builders.memory_store import build_memory_children
    from freehold.validation import defaulted
    from tests.paths import EXAMPLES

    manifest = defaulted(yaml.safe_load((EXAMPLES / example).read_text()))
    spec = MemoryStoreSpec.model_validate({**manifest["spec"], "deletionPolicy": policy})
    for obj in build_memory_children(spec, CTX):
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
