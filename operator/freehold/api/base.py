"""Shared building blocks of the Freehold API models.

The models are the single source of truth: the CRDs in ``crds/`` are generated
from them (``freehold.crdgen``), so everything the API server must know (types,
bounds, enums, defaults, descriptions and CEL rules) is declared here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "freehold.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes' own regular expression for resource.Quantity (RE2-compatible, as the
# API server evaluates `pattern` with Go's regexp).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
# A DNS-1123 label: names of Kubernetes objects we refer to, regions, zones.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Vault path below a mount. Segments may not start with a dot, which rules out
# `.` and `..`; no glob characters, so a policy grants exactly what is named.
VAULT_PATH_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$"


def _quantity_to_str(value: Any) -> Any:
    # YAML users write `cpu: 2` as often as `cpu: "2"`; Kubernetes accepts both.
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY_PATTERN, max_length=64),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity such as ``2``, ``500m`` or ``4Gi``."""

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
"""A duration such as ``30m``, ``24h`` or ``90d``."""

Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, min_length=64, max_length=64)]
Ed25519PublicKey = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$", min_length=44, max_length=44)
]
"""An Ed25519 public key: base64 of its 32 raw bytes."""
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
VaultPath = Annotated[str, Field(pattern=VAULT_PATH_PATTERN, min_length=1, max_length=512)]


def cel(
    rule: str,
    message: str,
    *,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry.

    Rules that mention ``oldSelf`` are transition rules: the API server checks them
    on update only, and offline validation skips them unless an old object is given.
    """
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` that attaches CEL rules to a model or field."""
    return {"x-kubernetes-validations": list(entries)}


class ApiModel(BaseModel):
    """Base of every spec/status object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, unset optionals omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: DnsLabel = Field(description="Name of the referenced object, in this namespace.")


class Residency(ApiModel):
    """Where the workload and its data may live. Pods are only ever scheduled there."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.region == oldSelf.region",
                "residency.region is immutable: data must not move out of its region; "
                "create a new resource in the other region instead",
                field_path=".region",
                reason="FieldValueForbidden",
            )
        )
    )

    region: DnsLabel = Field(
        description="Required value of the node label topology.kubernetes.io/region. Immutable."
    )
    zones: list[DnsLabel] = Field(
        default_factory=list,
        max_length=16,
        description="Allowed values of topology.kubernetes.io/zone; empty allows every zone "
        "of the region.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """The state of one aspect of the resource (the metav1.Condition shape)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, for example Ready.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        min_length=1,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="Human-readable details: what happened and what to do about it.",
    )
    last_transition_time: datetime = Field(
        description="When the status last changed.",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was set for.",
    )


def conditions_field(description: str) -> Any:
    return Field(
        default_factory=list,
        max_length=32,
        description=description,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class ExternalSecret(ApiModel):
    """The provider's API key, in Vault (KV v2): never in the spec or a Kubernetes Secret."""

    mount: str = Field(
        default="secret",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="KV v2 mount.",
    )
    path: VaultPath = Field(description="Path below the mount, in this namespace's Vault paths.")
    key: str = Field(default="api_key", max_length=128, description="Field holding the key.")
