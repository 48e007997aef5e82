"""A CycloneDX 1.6 ML-BOM of a ModelDeployment: the model (name, digest, source, licence,
signer), the engine and its version, and the serving image, with how they depend on one
another. Pure and deterministic (the serial number and timestamp derive from the resource),
so the operator's ConfigMap changes only when what runs changes.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.model_workload import BuildContext, metadata, model_image
from freehold_serving.engines import ENGINE_PACKAGES
from freehold_serving.signatures import key_fingerprint

BOM_KEY = "bom.cdx.json"
_NAMESPACE = uuid.UUID("6f1d3c2e-5a4b-4c8d-9e0f-112233445566")  # Freehold's uuid5 namespace


def signer_of(spec: ModelDeploymentSpec) -> str | None:
    signature = spec.model.signature
    if signature is None:
        return None
    if signature.public_key:
        return f"key {key_fingerprint(signature.public_key)}"
    return signature.identity


def build_mlbom(
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


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def mlbom_name(name: str) -> str:
    return f"{name}-mlbom"


def build_mlbom_configmap(
    spec: ModelDeploymentSpec, ctx: BuildContext, created: str | None
) -> dict[str, Any]:
    """The ML-BOM of what serves, kept beside it (status.mlBom links it)."""
    when = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
    document = build_mlbom(
        spec, ctx.name, ctx.namespace, serving_image=model_image(spec, ctx), created=when
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, mlbom_name(ctx.name)),
        "data": {BOM_KEY: render(document)},
    }
