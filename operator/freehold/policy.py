"""A SovereigntyPolicy's rules as CEL, once, for three judges: the API server (a
ValidatingAdmissionPolicy the operator applies), the operator (PolicyCompliant on every
resource, so what predates a stricter policy is reported) and `freehold validate --policy`
(offline, with the same expressions). Pure: no client, no clock.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from freehold.api.base import GROUP, VERSION
from freehold.api.sovereignty_policy import SovereigntyPolicySpec
from freehold.conditions import Condition, condition
from freehold.validation import defaulted

GOVERNED = {
    "ModelDeployment": "modeldeployments",
    "MemoryStore": "memorystores",
    "EvalJob": "evaljobs",
    "ModelRouter": "modelrouters",
}
POLICY_PREFIX = "freehold-sovereignty-"


@dataclass(frozen=True)
class Rule:
    kinds: tuple[str, ...]
    expression: str  # CEL over `object`; true: the object complies
    message: str


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _pem_regex(pem: str) -> str:
    """A regex matching this PEM key however its lines are wrapped (the API server's CEL
    has no whitespace-stripping function both judges share; `matches` is RE2 in both)."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    body = "".join(body.split())
    spaced = r"\s*".join(re.escape(c) for c in body)
    return r"^\s*-----BEGIN PUBLIC KEY-----\s*" + spaced + r"\s*-----END PUBLIC KEY-----\s*$"


def rules(name: str, spec: SovereigntyPolicySpec) -> list[Rule]:
    said = f"SovereigntyPolicy {name}: "
    out: list[Rule] = []
    if spec.allowed_regions:
        allowed = _list(spec.allowed_regions)
        out.append(
            Rule(
                ("ModelDeployment", "MemoryStore"),
                f"has(object.spec.residency) && object.spec.residency.region in {allowed}",
                said + "spec.residency.region must be one of " + ", ".join(spec.allowed_regions),
            )
        )
    if spec.allowed_model_sources:
        prefixes = _list(spec.allowed_model_sources)
        out.append(
            Rule(
                ("ModelDeployment",),
                f"{prefixes}.exists(p, object.spec.model.uri.startsWith(p))",
                said
                + "spec.model.uri must start with one of "
                + ", ".join(spec.allowed_model_sources),
            )
        )
    if spec.require_signatures:
        out.append(
            Rule(
                ("ModelDeployment",),
                "has(object.spec.model.signature)",
                said + "spec.model.signature is required: models must be signed",
            )
        )
        if spec.trusted_keys or spec.trusted_identities:
            sig = "object.spec.model.signature"
            keys = _list(_pem_regex(k) for k in spec.trusted_keys)
            ids = _list(spec.trusted_identities)
            out.append(
                Rule(
                    ("ModelDeployment",),
                    f"!has({sig}) || (has({sig}.publicKey) && "
                    f"{keys}.exists(r, {sig}.publicKey.matches(r))) || "
                    f"(has({sig}.identity) && {sig}.identity in {ids})",
                    said + "spec.model.signature must use one of the policy's trustedKeys or "
                    "trustedIdentities",
                )
            )
    if spec.allowed_licenses:
        allowed = _list(spec.allowed_licenses)
        out.append(
            Rule(
                ("ModelDeployment",),
                f"has(object.spec.model.license) && object.spec.model.license in {allowed}",
                said + "spec.model.license must be one of " + ", ".join(spec.allowed_licenses),
            )
        )
    if not spec.allow_external_targets:
        out.append(
            Rule(
                ("ModelRouter",),
                "(!has(object.spec.allowExternal) || !object.spec.allowExternal) && "
                "object.spec.targets.all(t, !has(t.external))",
                said + "spec.targets: external providers are not allowed (spec.allowExternal "
                "must be false)",
            )
        )
        out.append(
            Rule(
                ("EvalJob",),
                "!has(object.spec.target.endpoint) || object.spec.target.endpoint.matches("
                r"'^https?://[a-z0-9.-]+\\.svc(\\.cluster\\.local)?(:[0-9]+)?(/.*)?$')",
                said + "spec.target.endpoint must be a Service in the cluster (*.svc): external "
                "endpoints are not allowed",
            )
        )
    if spec.require_no_content_capture:
        out.append(
            Rule(
                ("ModelDeployment",),
                "!has(object.spec.telemetry) || !has(object.spec.telemetry.captureContent) || "
                "!object.spec.telemetry.captureContent",
                said + "spec.telemetry.captureContent must be false: prompts and completions "
                "may not be recorded",
            )
        )
    return out


def admission_name(policy: str, kind: str) -> str:
    return f"{POLICY_PREFIX}{policy}-{GOVERNED[kind]}"


def admission_names(name: str, spec: SovereigntyPolicySpec) -> list[str]:
    kinds = {k for rule in rules(name, spec) for k in rule.kinds}
    return [admission_name(name, k) for k in GOVERNED if k in kinds]


def build_admission(name: str, spec: SovereigntyPolicySpec) -> list[dict[str, Any]]:
    """One ValidatingAdmissionPolicy and binding per governed kind with rules (the API
    server type-checks each expression against the kinds a policy matches, so a policy
    matches one kind). The rules apply on create, and on an update that changes the spec:
    labels, finalizers and status stay writable, so a resource that predates the policy
    can still be cleaned up."""
    out: list[dict[str, Any]] = []
    for kind, plural in GOVERNED.items():
        mine = [r for r in rules(name, spec) if kind in r.kinds]
        if not mine:
            continue
        admission = admission_name(name, kind)
        out.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": admission},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [GROUP],
                                "apiVersions": [VERSION],
                                "operations": ["CREATE", "UPDATE"],
                                "resources": [plural],
                            }
                        ]
                    },
                    "matchConditions": [
                        {
                            "name": "spec-written",
                            "expression": "request.operation == 'CREATE' || "
                            "object.spec != oldObject.spec",
                        }
                    ],
                    "validations": [
                        {"expression": r.expression, "message": r.message, "reason": "Forbidden"}
                        for r in mine
                    ],
                },
            }
        )
        binding: dict[str, Any] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": admission},
            "spec": {"policyName": admission, "validationActions": ["Deny"]},
        }
        if spec.namespace_selector:
            binding["spec"]["matchResources"] = {
                "namespaceSelector": {"matchLabels": dict(spec.namespace_selector)}
            }
        out.append(binding)
    return out


@functools.cache
def _program(expression: str) -> Any:
    import cel

    return cel.compile(expression)


def governs(spec: SovereigntyPolicySpec, namespace_labels: Mapping[str, str] | None) -> bool:
    if not spec.namespace_selector:
        return True
    labels = namespace_labels or {}
    return all(labels.get(k) == v for k, v in spec.namespace_selector.items())


def violations(name: str, spec: SovereigntyPolicySpec, resource: Mapping[str, Any]) -> list[str]:
    """The messages of the rules `resource` (defaulted, as the API server stores it)
    breaks; the same expressions the admission policy runs."""
    out = []
    for rule in rules(name, spec):
        if resource.get("kind") not in rule.kinds:
            continue
        try:
            ok = _program(rule.expression).execute({"object": dict(resource)})
        except Exception:  # a field the rule reads is absent in a way has() did not guard
            ok = False
        if ok is not True:
            out.append(rule.message)
    return out


def compliance_judge(
    policies: Callable[[], list[dict[str, Any]]],
) -> Callable[[dict[str, Any], Callable[[], Mapping[str, str]]], Condition | None]:
    """PolicyCompliant for the reconciler: the rules of every SovereigntyPolicy in force
    (`policies`: the controller's cache) that governs a resource, judged with the
    expressions the admission policy runs. A resource created before a policy tightened is
    reported here, never deleted."""

    def judge(
        resource: dict[str, Any], namespace_labels: Callable[[], Mapping[str, str]]
    ) -> Condition | None:
        if resource.get("kind") not in GOVERNED:
            return None
        found: list[str] = []
        judged = 0
        for body in policies():
            try:
                spec = SovereigntyPolicySpec.model_validate(defaulted(body).get("spec") or {})
            except ValueError:
                continue  # an invalid policy is reported on itself; it judges nothing
            if not governs(spec, namespace_labels() if spec.namespace_selector else None):
                continue
            judged += 1
            found += violations(body["metadata"]["name"], spec, resource)
        if found:
            return condition("PolicyCompliant", False, "PolicyViolation", "; ".join(found))
        if judged == 0:
            return condition("PolicyCompliant", True, "NoPolicy", "no SovereigntyPolicy governs it")
        return condition(
            "PolicyCompliant", True, "Compliant", f"complies with {judged} SovereigntyPolicy(ies)"
        )

    return judge
