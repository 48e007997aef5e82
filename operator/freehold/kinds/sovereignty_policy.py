"""SovereigntyPolicy as the reconciler sees it: a cluster-scoped parent whose children are
a ValidatingAdmissionPolicy and its binding (the API server enforces the rules; no webhook
runs). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freehold.adapters.kubernetes import ResourceType
from freehold.api import kinds as api_kinds
from freehold.api.sovereignty_policy import SovereigntyPolicySpec
from freehold.conditions import condition
from freehold.kinds.base import KindBase
from freehold.policy import admission_names, build_admission, rules
from freehold.reconciler import ChildKey, Desired, Facts, Problem, StatusReport

ADMISSION_POLICY = ResourceType(
    "admissionregistration.k8s.io/v1",
    "ValidatingAdmissionPolicy",
    "validatingadmissionpolicies",
    namespaced=False,
)
ADMISSION_BINDING = ResourceType(
    "admissionregistration.k8s.io/v1",
    "ValidatingAdmissionPolicyBinding",
    "validatingadmissionpolicybindings",
    namespaced=False,
)


class SovereigntyPolicyKind(KindBase[SovereigntyPolicySpec]):
    api = api_kinds.SOVEREIGNTY_POLICY
    child_types: tuple[ResourceType, ...] = (ADMISSION_POLICY, ADMISSION_BINDING)
    status_from = frozenset({"ValidatingAdmissionPolicy"})
    finalizer: str | None = None
    # A change re-judges every governed resource (PolicyCompliant).
    judges_others = True

    def check(self, spec: SovereigntyPolicySpec, meta: Mapping[str, Any]) -> None:
        return None

    def build(self, spec: SovereigntyPolicySpec, meta: Mapping[str, Any], facts: Facts) -> Desired:
        return Desired(build_admission(meta["name"], spec))

    def external_names(self, parent: Mapping[str, Any]) -> list[str]:
        return []

    def status(
        self,
        spec: SovereigntyPolicySpec,
        meta: Mapping[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
    ) -> StatusReport:
        names = admission_names(meta["name"], spec)
        policies = [
            children.get((ADMISSION_POLICY.api_version, ADMISSION_POLICY.kind, n)) for n in names
        ]
        count = len(rules(meta["name"], spec))
        # The API server type-checks each policy's CEL and reports problems in its status.
        warnings = [
            f"{(p.get('metadata') or {}).get('name')}: {w.get('warning', '')}"
            for p in policies
            if p is not None
            for w in ((p.get("status") or {}).get("typeChecking") or {}).get("expressionWarnings")
            or []
        ]
        if problem is not None:
            ready = condition("Ready", False, problem.reason, problem.message)
        elif any(p is None for p in policies):
            ready = condition("Ready", False, "Creating", "creating the admission policies")
        elif warnings:
            message = "the API server warns: " + "; ".join(warnings)
            ready = condition("Ready", False, "TypeCheckFailed", message[:2000])
        elif count == 0:
            ready = condition("Ready", True, "Enforced", "no rules: nothing is restricted")
        else:
            ready = condition(
                "Ready",
                True,
                "Enforced",
                f"{count} rule(s) enforced at admission by {', '.join(names)}",
            )
        return StatusReport([ready], {"admissionPolicies": names, "rules": count})
