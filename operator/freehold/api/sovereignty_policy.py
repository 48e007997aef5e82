"""SovereigntyPolicy: organisation-wide rules for where models and data may live, where
models may come from, who must have signed them, under which licences they may run, and
whether anything may leave the cluster. Cluster-scoped.

Enforced twice, from one set of rules (freehold.policy): the API server itself refuses
resources that break a policy (the operator turns each policy into a
ValidatingAdmissionPolicy and its binding; no webhook runs), and every resource reports
`PolicyCompliant`, so what was created before a policy tightened is shown, not deleted.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from freehold.api.base import ApiModel, Condition, DnsLabel, cel, conditions_field, rules
from freehold.api.model_deployment import PEM_PUBLIC_KEY


class SovereigntyPolicySpec(ApiModel):
    """Desired rules. An empty list means that rule does not restrict anything."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.trustedKeys) || size(self.trustedKeys) == 0 || self.requireSignatures",
                "trustedKeys only apply with requireSignatures: true",
                field_path=".trustedKeys",
            ),
            cel(
                "!has(self.trustedIdentities) || size(self.trustedIdentities) == 0 || "
                "self.requireSignatures",
                "trustedIdentities only apply with requireSignatures: true",
                field_path=".trustedIdentities",
            ),
        )
    )

    namespace_selector: dict[str, str] | None = Field(
        default=None,
        max_length=16,
        description="Labels of the namespaces this policy governs; unset: every namespace.",
    )
    allowed_regions: list[DnsLabel] = Field(
        default_factory=list,
        max_length=64,
        description="ModelDeployments and MemoryStores must set spec.residency.region to one "
        "of these.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    allowed_model_sources: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="URI prefixes a ModelDeployment's spec.model.uri must start with (for "
        "example pvc://, oci://registry.gov.example/models/, package://).",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 512, "pattern": r"^[a-z0-9]+://\S*$"}
        },
    )
    require_signatures: bool = Field(
        default=False,
        description="ModelDeployments must carry spec.model.signature (verified in the pod "
        "before the model loads).",
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="With requireSignatures: the only public keys (PEM) a signature may use; "
        "empty: any key the spec names.",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 4096, "pattern": PEM_PUBLIC_KEY}
        },
    )
    trusted_identities: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="With requireSignatures: the only certificate identities a signature may "
        "name; empty: any.",
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 512}},
    )
    allowed_licenses: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="ModelDeployments must declare spec.model.license as one of these "
        "(SPDX expressions, compared exactly).",
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 128}},
    )
    allow_external_targets: bool = Field(
        default=True,
        description="false: no ModelRouter may route to a provider outside the cluster "
        "(spec.allowExternal must be false and no target external).",
    )
    require_no_content_capture: bool = Field(
        default=False,
        description="true: no ModelDeployment may record prompts or completions "
        "(spec.telemetry.captureContent must be false).",
    )


class SovereigntyPolicyStatus(ApiModel):
    """Observed state of a SovereigntyPolicy."""

    conditions: list[Condition] = conditions_field(
        "Ready: the admission policy and binding are in force."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status describes."
    )
    admission_policies: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="The ValidatingAdmissionPolicies (one per governed kind) that enforce "
        "this policy at admission.",
        json_schema_extra={"items": {"type": "string", "maxLength": 253}},
    )
    rules: int | None = Field(default=None, ge=0, description="Rules enforced.")
