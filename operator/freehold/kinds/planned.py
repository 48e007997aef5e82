"""Kinds whose API is published but whose controller is not built yet (EvalJob). They
go through the same reconciler, so a user who applies one reads the truth
in `kubectl get`: accepted, validated, and not served by this build. Nothing is created."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from freehold.adapters.kubernetes import ResourceType
from freehold.api.kinds import EVAL_JOB, Kind
from freehold.conditions import condition
from freehold.reconciler import ChildKey, Desired, Facts, Problem, StatusReport


class PlannedKind:
    child_types: tuple[ResourceType, ...] = ()
    status_from: frozenset[str] = frozenset()
    finalizer: str | None = None

    def __init__(self, api: Kind, what: str, extra: dict[str, Any] | None = None) -> None:
        self.api = api
        self.resource = ResourceType(f"{api.group}/{api.version}", api.kind, api.plural)
        self._what = what
        self._extra = extra or {}

    def parse(self, manifest: dict[str, Any]) -> BaseModel:
        return self.api.spec.model_validate(manifest["spec"])

    def check(self, spec: BaseModel, meta: Mapping[str, Any]) -> None:
        return None

    def build(self, spec: BaseModel, meta: Mapping[str, Any], facts: Facts) -> Desired:
        return Desired([])

    def external_names(self, parent: Mapping[str, Any]) -> list[str]:
        return []

    def status(
        self,
        spec: BaseModel,
        meta: Mapping[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
    ) -> StatusReport:
        message = (
            f"the spec is valid, but this build has no {self.api.kind} controller yet "
            f"(planned): {self._what} Nothing was created."
        )
        return StatusReport(
            [
                condition("Ready", False, "NotImplemented", message),
                condition("Progressing", False, "NotImplemented", message),
            ],
            dict(self._extra),
        )


EVAL_JOB_KIND = PlannedKind(
    EVAL_JOB,
    "no evaluation Job runs on the cluster and no gates are computed here. The same suites "
    "run against any endpoint with `freehold eval run -f` (the runner is built).",
    {"phase": "Pending"},
)
