"""ModelDeployment promotion: which model serves, which waits as a candidate, and the
EvalJobs that decide. Pure.

What serves is read from the live serving workload (an annotation naming its model), not
from status: level-based, and a lost status cannot roll out an unevaluated model. A new
digest in spec.model runs as a candidate (its own workload, reachable only by its
evaluation) until the EvalJob made from the template for that digest passes its gates;
then the main workload rolls to it and the candidate goes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from freehold.api.eval_job import EvalTemplate
from freehold.api.model_deployment import (
    Auth,
    ModelDeploymentSpec,
    ModelSource,
    Network,
    PeerSelector,
    Scaling,
)
from freehold.builders.model_workload import EVALUATES_LABEL
from freehold.conditions import is_true

MODEL_ANNOTATION = "freehold.dev/model"
PROMOTION_LABEL = "freehold.dev/promotion-of"
MAX_NAME = 53
State = Literal["Stable", "Evaluating", "GatesFailed", "Promoting"]


def candidate_name(name: str) -> str:
    """The candidate workload's name (its Services and labels derive from it)."""
    if len(name) + 5 <= MAX_NAME:
        return f"{name}-next"
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:41]}-{digest}-next"


def eval_job_name(name: str, template: EvalTemplate, sha256: str) -> str:
    """One EvalJob per (template, digest): a changed template is a new evaluation."""
    body = json.dumps(
        [template.model_dump(mode="json", by_alias=True), sha256], sort_keys=True
    ).encode()
    return f"{name[:30]}-eval-{hashlib.sha256(body).hexdigest()[:10]}"


def live_model(workload: Mapping[str, Any] | None) -> ModelSource | None:
    """The model the serving workload runs, from our annotation on it."""
    annotations = ((workload or {}).get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(MODEL_ANNOTATION)
    if raw is None:
        return None
    try:
        return ModelSource.model_validate_json(raw)
    except ValidationError:
        return None


def model_annotation(model: ModelSource) -> str:
    return json.dumps(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def passed(job: Mapping[str, Any] | None, sha256: str) -> bool:
    """Finished, every gate passed, and for exactly this digest."""
    status = (job or {}).get("status") or {}
    return (
        status.get("phase") == "Succeeded"
        and is_true(job, "GatesPassed")
        and status.get("modelDigest") == f"sha256:{sha256}"
    )


def finished(job: Mapping[str, Any] | None) -> bool:
    return ((job or {}).get("status") or {}).get("phase") in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Plan:
    serve: ModelSource  # what the main workload runs
    state: State = "Stable"
    candidate: ModelSource | None = None  # runs beside it while its evaluation may pass
    candidate_job: str | None = None  # the EvalJob deciding spec.model's digest
    baseline_job: str | None = None  # the EvalJob of what serves
    verdict: str = ""  # why a candidate was refused (its GatesPassed message)


def plan(
    spec: ModelDeploymentSpec,
    name: str,
    live: ModelSource | None,
    jobs: Mapping[str, Mapping[str, Any]],
) -> Plan:
    promotion = spec.promotion
    if promotion is None:
        return Plan(serve=spec.model)
    template = promotion.eval_template
    wanted = spec.model
    if live is None or live.sha256 == wanted.sha256:
        # The first version (nothing older to keep serving), or no new digest.
        return Plan(serve=wanted, baseline_job=eval_job_name(name, template, wanted.sha256))
    baseline = eval_job_name(name, template, live.sha256)
    decider = eval_job_name(name, template, wanted.sha256)
    job = jobs.get(decider)
    if passed(job, wanted.sha256):
        return Plan(serve=wanted, state="Promoting", candidate_job=decider, baseline_job=decider)
    if finished(job):
        gates: Mapping[str, Any] = next(
            (
                c
                for c in ((job or {}).get("status") or {}).get("conditions") or []
                if c.get("type") in ("GatesPassed", "Completed") and c.get("status") == "False"
            ),
            {},
        )
        return Plan(
            serve=live,
            state="GatesFailed",
            candidate_job=decider,
            baseline_job=baseline,
            verdict=str(gates.get("message") or "the evaluation did not pass"),
        )
    return Plan(
        serve=live,
        state="Evaluating",
        candidate=wanted,
        candidate_job=decider,
        baseline_job=baseline,
    )


def serving_spec(spec: ModelDeploymentSpec, model: ModelSource) -> ModelDeploymentSpec:
    return spec if model == spec.model else spec.model_copy(update={"model": model})


def candidate_spec(spec: ModelDeploymentSpec, name: str) -> ModelDeploymentSpec:
    """The candidate: one replica, the same served name, no API keys or memory, and
    reachable only from its evaluation's pods (nothing else can call an unevaluated
    model)."""
    model = spec.model.model_copy(update={"served_name": spec.model.served_name or name})
    return spec.model_copy(
        update={
            "model": model,
            "scaling": Scaling(min_replicas=1, max_replicas=1),
            "auth": Auth(),
            "memory": None,
            "secrets": [],
            "network": Network(allow_from=[PeerSelector(pod_selector={EVALUATES_LABEL: name})]),
        }
    )


def eval_job(
    spec: ModelDeploymentSpec,
    name: str,
    job_name: str,
    *,
    candidate: bool,
    baseline: str | None,
) -> dict[str, Any]:
    """An EvalJob from the promotion template, aimed at this ModelDeployment (or its
    candidate). maxRegression gates compare with `baseline`, the served version's."""
    assert spec.promotion is not None
    template = spec.promotion.eval_template
    body: dict[str, Any] = {
        **template.model_dump(mode="json", by_alias=True, exclude_none=True),
        "target": {"modelDeploymentRef": {"name": name}, "candidate": candidate},
        "offline": True,
    }
    if spec.promotion.api_key is not None and not candidate:
        # What serves requires keys (spec.auth.apiKeys); a candidate admits its evaluation.
        body["target"]["apiKey"] = spec.promotion.api_key.model_dump(mode="json", by_alias=True)
    regressions = any(g.max_regression is not None for g in template.gates)
    if baseline is not None and regressions:
        body["baseline"] = {"name": baseline}
    elif regressions:
        # The served version's own evaluation has nothing older to regress from: its
        # record keeps the threshold gates only.
        body["gates"] = [g for g in body["gates"] if "maxRegression" not in g]
    return {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": job_name, "labels": {PROMOTION_LABEL: name}},
        "spec": body,
    }
