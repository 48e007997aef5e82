"""Offline validation: examples pass, invalid manifests fail naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from freehold.validation import defaulted, validate
from tests.paths import EXAMPLES, INVALID

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
INVALID_FILES = sorted(INVALID.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: ...'"
    return first.removeprefix("# expect: ")


def test_there_is_an_example_of_every_kind() -> None:
    kinds = {load(p)["kind"] for p in EXAMPLE_FILES}
    assert kinds == {
        "ModelDeployment",
        "MemoryStore",
        "EvalJob",
        "ModelRouter",
        "SovereigntyPolicy",
    }


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    assert validate(load(path)) == []


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.name)
def test_invalid_manifests_fail_naming_the_field(path: Path) -> None:
    errors = [str(e) for e in validate(load(path))]
    assert errors, "expected errors"
    expected = expectation(path)
    assert any(expected in e for e in errors), errors


def test_defaults_are_applied_like_the_api_server() -> None:
    doc = defaulted(load(EXAMPLES / "modeldeployment.yaml"))
    spec = doc["spec"]
    assert spec["engine"]["llamacpp"]["gpuLayers"] == 0
    assert spec["auth"] == {}
    assert spec["telemetry"] == {"captureContent": False, "traceSampleRatio": 1.0}
    assert spec["secrets"] == []
    # defaults fill nested defaults inside defaulted objects, too
    minimal = {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "MemoryStore",
        "metadata": {"name": "m"},
        "spec": {},
    }
    spec = defaulted(minimal)["spec"]
    assert spec["backend"] == {"type": "sqlite", "sqlite": {"storageSize": "1Gi"}}
    assert spec["embedding"] == {"builtin": "all-minilm-l6-v2"}
    assert spec["retention"] == {"defaultTTL": "90d", "perType": []}
    assert validate(minimal) == []


def test_residency_region_is_immutable() -> None:
    old = load(EXAMPLES / "modeldeployment.yaml")
    new = copy.deepcopy(old)
    new["spec"]["residency"]["region"] = "us-east"
    errors = [str(e) for e in validate(new, old=old)]
    assert any(
        e.startswith("spec.residency.region: Invalid value: residency.region is immutable")
        for e in errors
    ), errors
    # the same object on create is fine, and so is an update that keeps the region
    assert validate(new) == []
    same = copy.deepcopy(old)
    same["spec"]["scaling"]["maxReplicas"] = 3
    assert validate(same, old=old) == []


def test_residency_cannot_be_removed() -> None:
    old = load(EXAMPLES / "modeldeployment.yaml")
    new = copy.deepcopy(old)
    del new["spec"]["residency"]
    assert any("residency cannot be removed" in str(e) for e in validate(new, old=old))


def test_eval_job_spec_is_immutable() -> None:
    old = load(EXAMPLES / "evaljob.yaml")
    new = copy.deepcopy(old)
    new["spec"]["gates"][0]["threshold"] = 0.1
    assert any("EvalJob is immutable" in str(e) for e in validate(new, old=old))


def test_quantities_accept_numbers_and_strings() -> None:
    doc = load(EXAMPLES / "modeldeployment.yaml")
    for value in (2, "2", "500m", "1.5", "4Gi"):
        doc["spec"]["resources"]["cpu"] = value
        assert validate(doc) == [], value
    doc["spec"]["resources"]["cpu"] = "two"
    assert validate(doc)


@pytest.mark.parametrize("manifest", [None, [], "text", 3])
def test_non_mappings_are_rejected(manifest: Any) -> None:
    assert [str(e) for e in validate(manifest)] == ["<root>: a manifest must be a mapping"]
