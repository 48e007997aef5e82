"""What the user reads in `kubectl get`: conditions and a few fields, from what the
children report. Pure: the clock is passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from freehold.builders.children import Backend
from freehold.builders.common import SERVE_PORT, BuildContext
from freehold.builders.rayservice import serve_service_name

FAILED_APP_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}


@dataclass(frozen=True)
class Observed:
    """The serving child as read back from the cluster."""

    backend: Backend
    exists: bool
    ready: bool = False
    ready_replicas: int = 0
    desired_replicas: int = 0
    failure: str | None = None  # why it is not working, when it says so


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def observe_rayservice(obj: dict[str, Any] | None, app_name: str) -> Observed:
    if obj is None:
        return Observed("RayService", exists=False)
    status = obj.get("status") or {}
    active = status.get("activeServiceStatus") or {}
    cluster = active.get("rayClusterStatus") or {}
    ready_cond = _condition(obj, "Ready")
    ready = (ready_cond or {}).get("status") == "True" or status.get("serviceStatus") == "Running"
    app = (active.get("applicationStatuses") or {}).get(app_name) or {}
    failure = None
    if app.get("status") in FAILED_APP_STATES:
        failure = f"Ray Serve application {app['status']}: {app.get('message', '')}".strip()
    return Observed(
        "RayService",
        exists=True,
        ready=ready and failure is None,
        ready_replicas=int(cluster.get("readyWorkerReplicas") or 0),
        desired_replicas=int(cluster.get("desiredWorkerReplicas") or 0),
        failure=failure,
    )


def observe_deployment(obj: dict[str, Any] | None) -> Observed:
    if obj is None:
        return Observed("Deployment", exists=False)
    status = obj.get("status") or {}
    desired = int((obj.get("spec") or {}).get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    progressing = _condition(obj, "Progressing")
    failure = None
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        failure = progressing.get("message") or "the rollout exceeded its progress deadline"
    return Observed(
        "Deployment",
        exists=True,
        ready=desired > 0 and ready >= desired,
        ready_replicas=ready,
        desired_replicas=desired,
        failure=failure,
    )


def endpoint(ctx: BuildContext, backend: Backend) -> str:
    service = serve_service_name(ctx) if backend == "RayService" else ctx.name
    return f"http://{service}.{ctx.namespace}.svc:{SERVE_PORT}/v1"


def _merge(
    previous: list[dict[str, Any]], new: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """Keep lastTransitionTime when a condition's status did not change."""
    before = {c.get("type"): c for c in previous}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    merged = []
    for cond in new:
        old = before.get(cond["type"])
        if old is None or old.get("status") != cond["status"]:
            changed_at = stamp
        else:
            changed_at = old.get("lastTransitionTime", stamp)
        merged.append({**cond, "lastTransitionTime": changed_at})
    return merged


def _cond(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    value = "Unknown" if status is None else ("True" if status else "False")
    cond: dict[str, Any] = {"type": type_, "status": value, "reason": reason, "message": message}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def serving_status(
    observed: Observed,
    ctx: BuildContext,
    served_name: str,
    sha256: str,
    generation: int | None,
    now: datetime,
    previous: list[dict[str, Any]],
    *,
    uses_vault: bool = False,
) -> dict[str, Any]:
    replicas = f"{observed.ready_replicas}/{observed.desired_replicas} replicas ready"
    if observed.failure:
        ready = _cond("Ready", False, "ServingFailed", observed.failure, generation)
    elif observed.ready:
        ready = _cond("Ready", True, "Serving", f"serving {served_name}; {replicas}", generation)
    elif not observed.exists:
        ready = _cond("Ready", False, "Creating", f"creating the {observed.backend}", generation)
    else:
        ready = _cond(
            "Ready",
            False,
            "Starting",
            f"waiting for the {observed.backend}: {replicas}. Pods verify the model "
            "digest and load it before they report ready",
            generation,
        )
    conditions = [
        ready,
        _cond(
            "Progressing",
            not observed.ready and observed.failure is None,
            "Reconciling" if not observed.ready else "Stable",
            "rolling out the current spec" if not observed.ready else "up to date",
            generation,
        ),
        _cond(
            "Degraded",
            observed.failure is not None,
            "ServingFailed" if observed.failure else "AsExpected",
            observed.failure or "no failures reported",
            generation,
        ),
        # Pods only report ready after the serving process verified the sha256.
        _cond(
            "ModelVerified",
            True if observed.ready else None,
            "DigestMatched" if observed.ready else "Pending",
            f"model file matches sha256 {sha256}"
            if observed.ready
            else "verified by each pod before loading; none ready yet",
            generation,
        ),
        _cond(
            "PolicyCompliant",
            True,
            "Enforced",
            "pods run under Pod Security 'restricted', default-deny NetworkPolicies and "
            "required residency affinity",
            generation,
        ),
    ]
    if uses_vault:
        conditions.append(
            _cond(
                "SecretsUnavailable",
                False,
                "VaultReady",
                "the workload's Vault policy and role are in place",
                generation,
            )
        )
    return {
        "conditions": _merge(previous, conditions, now),
        "observedGeneration": generation,
        "endpoint": endpoint(ctx, observed.backend),
        "readyReplicas": observed.ready_replicas,
        "desiredReplicas": observed.desired_replicas,
        "servedDigest": f"sha256:{sha256}" if observed.ready else None,
        "servedName": served_name,
        "backend": observed.backend,
    }


def invalid_status(
    problems: list[str], generation: int | None, now: datetime, previous: list[dict[str, Any]]
) -> dict[str, Any]:
    message = "; ".join(problems)
    conditions = [
        _cond("Ready", False, "InvalidSpec", f"fix the spec: {message}", generation),
        _cond(
            "Progressing",
            False,
            "InvalidSpec",
            "nothing is rolled out from an invalid spec",
            generation,
        ),
        _cond("Degraded", True, "InvalidSpec", message, generation),
    ]
    return {"conditions": _merge(previous, conditions, now), "observedGeneration": generation}


def secrets_unavailable(
    reason: str, message: str, generation: int | None, now: datetime, previous: list[dict[str, Any]]
) -> dict[str, Any]:
    """Vault cannot be used: say so, keep the other conditions as they were."""
    text = f"{message}; retrying. No Kubernetes Secret is used instead."
    new = [
        _cond("Ready", False, "SecretsUnavailable", text, generation),
        _cond("SecretsUnavailable", True, reason, text, generation),
        _cond("Degraded", True, reason, text, generation),
    ]
    kept = [c for c in previous if c.get("type") not in {n["type"] for n in new}]
    return {"conditions": _merge(previous, new, now) + kept, "observedGeneration": generation}
