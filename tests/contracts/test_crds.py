"""crds/ is exactly what the models generate, and a real API server would accept it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cel
import jsonschema
import kubernetes_validate
import pytest
import yaml

from freehold.api.kinds import KINDS, Kind
from freehold.crdgen import crd_filename, crd_for, render, write_crds
from tests.paths import CRDS

K8S_VERSION = "1.37.0"
# Keys the API server refuses in a structural schema, or that mean something else there.
FORBIDDEN = {
    "$ref",
    "$defs",
    "definitions",
    "uniqueItems",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "const",
    "title",
    "allOf",
    "oneOf",
    "not",
}


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def root_schema(kind: Kind) -> dict[str, Any]:
    schema: dict[str, Any] = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_crds_folder_is_generated(tmp_path: Path) -> None:
    write_crds(tmp_path)
    generated = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert sorted(generated) == sorted(committed), "run `freehold crds` and commit"
    for name, text in generated.items():
        assert committed[name] == text, f"crds/{name} differs: run `freehold crds` and commit"


def test_generation_is_deterministic() -> None:
    assert [render(k) for k in KINDS] == [render(k) for k in KINDS]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_passes_kubernetes_schema(kind: Kind) -> None:
    document = yaml.safe_load((CRDS / crd_filename(kind)).read_text())
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural_and_explained(kind: Kind) -> None:
    for path, node in walk(root_schema(kind)):
        assert not FORBIDDEN & node.keys(), f"{path}: {FORBIDDEN & node.keys()}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") in {
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            }, f"{path} has no type"
        named_field = not path.endswith(("[]", "{}"))
        if named_field and (path.count(".") >= 2 or path in {".spec", ".status"}):
            assert node.get("description"), f"{path} has no description (kubectl explain)"
        if node.get("additionalProperties") is not None:
            assert "properties" not in node, path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_cel_cost_is_bounded(kind: Kind) -> None:
    """The API server refuses CEL rules it cannot bound: every list and map needs a max."""
    for path, node in walk(root_schema(kind)):
        if path.startswith(".metadata"):
            continue
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} needs maxItems"
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{path} needs maxProperties"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_cel_rules_compile_and_point_at_fields(kind: Kind) -> None:
    count = 0
    for path, node in walk(root_schema(kind)):
        for rule in node.get("x-kubernetes-validations", []):
            count += 1
            cel.compile(rule["rule"])
            assert rule["message"], path
            target = node
            for part in [p for p in rule.get("fieldPath", "").split(".") if p]:
                assert part in target.get("properties", {}), f"{path}: bad fieldPath {rule}"
                target = target["properties"][part]
    assert count > 0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_defaults_satisfy_their_own_schema(kind: Kind) -> None:
    for path, node in walk(root_schema(kind)):
        if "default" in node:
            jsonschema.Draft7Validator(node).validate(node["default"]), path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_printer_columns_point_at_fields(kind: Kind) -> None:
    schema = root_schema(kind)
    columns = crd_for(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert any(c["name"] == "Age" for c in columns)
    for column in columns:
        parts = column["jsonPath"].split("[")[0].strip(".").split(".")
        node = schema
        for part in parts:
            if part == "metadata":
                break
            assert part in node.get("properties", {}), f"{column} -> {part}"
            node = node["properties"][part]


def test_model_deployment_status_has_the_conditions_the_api_promises() -> None:
    md = root_schema(KINDS[0])["properties"]["status"]["properties"]
    for field in (
        "conditions",
        "observedGeneration",
        "endpoint",
        "readyReplicas",
        "desiredReplicas",
        "servedDigest",
    ):
        assert field in md
    conditions = md["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    for name in ("Ready", "ModelVerified", "PolicyCompliant", "Progressing", "Degraded"):
        assert name in conditions["description"]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_defaults_pass_their_cel_rules_as_the_api_server_checks_them(kind: Kind) -> None:
    """The API server evaluates a default's CEL rules without nested defaults first."""
    from freehold.validation import crd_errors

    assert crd_errors(crd_for(kind)) == []


def test_an_empty_default_under_a_rule_is_caught_offline() -> None:
    """The class of error a real API server reported (issue 9): `default: {}` on an object
    whose rule reads a field. The generator and `freehold validate` both refuse it."""
    from freehold.validation import crd_errors, validate

    crd = crd_for(KINDS[0])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["scaling"]["default"] = {}
    errors = [str(e) for e in validate(crd)]
    assert errors == [str(e) for e in crd_errors(crd)]
    assert len(errors) == 2
    assert errors[0].startswith(
        "spec.validation.openAPIV3Schema.properties[spec].properties[scaling].default: "
    )
    assert "minReplicas" in errors[0]
