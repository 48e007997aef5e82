"""EvalJob as the reconciler sees it: the target resolved and pinned, the Job and its
companions, progress while it runs, the outcome from the pod's termination message. Pure.

An EvalJob is a record: once finished, its status (scores, gates, digests, where the
signed result is) is the truth, and nothing is re-run or re-applied (a new evaluation is
a new EvalJob; the spec is immutable).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from freehold.adapters.kubernetes import ResourceType
from freehold.api import kinds as api_kinds
from freehold.api.eval_job import EvalJobSpec, Judge, Target
from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.eval_job import (
    CONFIG_KEY,
    Resolved,
    artifact,
    build_config_map,
    build_job,
    build_network,
    build_results_claim,
    build_service_account,
    build_vault_ca,
    build_vault_role,
    config_name,
    eval_vault_name,
    job_name,
)
from freehold.builders.model_workload import INSTANCE_LABEL, BuildContext
from freehold.builders.promotion import candidate_name
from freehold.conditions import Condition, condition, condition_of, is_true
from freehold.evaluation.job import PROGRESS_PORT, JobConfig
from freehold.kinds.base import (
    CONFIG_MAP,
    EVAL_JOB,
    JOB,
    MODEL_DEPLOYMENT,
    NETWORK_POLICY,
    POD,
    PVC,
    SERVICE_ACCOUNT,
    VAULT_FINALIZER,
    VAULT_REASONS,
    KindBase,
)
from freehold.kinds.checks import vault_paths_in_namespace
from freehold.reconciler import (
    ChildKey,
    Desired,
    Facts,
    Lookup,
    Probe,
    Problem,
    SpecProblemError,
    StatusReport,
    WaitingError,
)
from freehold.validation import defaulted

PROBE_SECONDS = 5.0
CHILD_TYPES: tuple[ResourceType, ...] = (SERVICE_ACCOUNT, CONFIG_MAP, PVC, JOB, NETWORK_POLICY)
TERMINAL = ("Succeeded", "Failed")
# Fields of a finished EvalJob's status that are its record.
RECORD_FIELDS = (
    "phase",
    "progress",
    "suites",
    "gates",
    "artifact",
    "resultDigest",
    "signer",
    "modelDigest",
    "endpoint",
    "message",
    "startTime",
    "completionTime",
)


class EvalJobKind(KindBase[EvalJobSpec]):
    api = api_kinds.EVAL_JOB
    child_types: tuple[ResourceType, ...] = CHILD_TYPES
    lookup_types: tuple[ResourceType, ...] = (MODEL_DEPLOYMENT, EVAL_JOB, POD)
    status_from = frozenset({"Job"})
    # Its Vault role (sign with the namespace's evaluation key) is removed when it ends.
    finalizer: str | None = VAULT_FINALIZER

    def check(self, spec: EvalJobSpec, meta: Mapping[str, Any]) -> None:
        judge = spec.judge.api_key if spec.judge else None
        keys = [("spec.target.apiKey.path", spec.target.api_key), ("spec.judge.apiKey.path", judge)]
        vault_paths_in_namespace(
            [(field, key.path if key else None) for field, key in keys],
            self.config.vault_kv_prefix,
            meta["namespace"],
        )
        for n, suite in enumerate(spec.suites):
            scheme = suite.dataset.uri.split("://", 1)[0]
            if scheme == "file":
                raise SpecProblemError(
                    "DatasetUnsupported",
                    f"spec.suites[{n}].dataset.uri: file:// names a file on the machine that "
                    "runs `freehold eval run`; the Job's pod has none. Use pvc://CLAIM/PATH "
                    "or package://freehold/evals/...",
                )
            if scheme in ("http", "https", "oci", "s3"):
                raise SpecProblemError(
                    "DatasetUnsupported",
                    f"spec.suites[{n}].dataset.uri: {scheme}:// datasets are planned, not "
                    "built: nothing fetches them. Copy the file to a PVC (pvc://)",
                )

    def lookups(
        self, spec: EvalJobSpec, meta: Mapping[str, Any], facts: Facts
    ) -> dict[str, Lookup]:
        if facts.status.get("phase") in TERMINAL:
            return {}  # a record: nothing to read
        ctx = self.context(meta)
        found = {
            "config": Lookup(CONFIG_MAP, name=config_name(ctx)),
            "pods": Lookup(POD, labels={"batch.kubernetes.io/job-name": job_name(ctx)}),
        }
        if spec.target.model_deployment_ref is not None:
            found["target"] = Lookup(MODEL_DEPLOYMENT, name=spec.target.model_deployment_ref.name)
        if spec.judge is not None and spec.judge.model_deployment_ref is not None:
            found["judge"] = Lookup(MODEL_DEPLOYMENT, name=spec.judge.model_deployment_ref.name)
        if spec.baseline is not None:
            found["baseline"] = Lookup(EVAL_JOB, name=spec.baseline.name)
        return found

    def build(self, spec: EvalJobSpec, meta: Mapping[str, Any], facts: Facts) -> Desired:
        ctx = self.context(meta)
        ended = termination_summary(facts.related.get("pods") or []) is not None
        if facts.status.get("phase") in TERMINAL or ended:
            # Finished: keep the results volume and the rest as they are; the Vault role
            # is no longer needed (no externals: the reconciler removes it now).
            record = {
                ("v1", "ServiceAccount", f"{ctx.name}-eval"),
                ("v1", "ConfigMap", config_name(ctx)),
                ("v1", "PersistentVolumeClaim", f"{ctx.name}-results"),
                ("batch/v1", "Job", job_name(ctx)),
                ("networking.k8s.io/v1", "NetworkPolicy", f"{ctx.name}-eval-default-deny"),
                ("networking.k8s.io/v1", "NetworkPolicy", f"{ctx.name}-eval-allow"),
            }
            return Desired([], keep=frozenset(record))
        pinned = facts.one("config")
        resolved = (
            resolved_from_config(pinned, spec) if pinned is not None else self.resolve(spec, facts)
        )
        children = [build_service_account(ctx), build_results_claim(ctx)]
        keep: set[ChildKey] = set()
        if pinned is None:
            children.append(build_config_map(spec, ctx, resolved))
        else:
            keep.add(("v1", "ConfigMap", config_name(ctx)))
        ca = build_vault_ca(ctx)
        if ca is not None:
            children.append(ca)
        children += build_network(ctx, resolved)
        children.append(build_job(spec, ctx))  # last: everything it mounts exists first
        return Desired(children, [build_vault_role(spec, ctx)], keep=frozenset(keep))

    def resolve(self, spec: EvalJobSpec, facts: Facts) -> Resolved:
        """The target (and judge, baseline) as they are now; pinned in the Job's config."""
        endpoint, model, digest = target_endpoint(spec.target, facts.one("target"), "target")
        judge_endpoint = judge_model = None
        if spec.judge is not None:
            judge_endpoint, judge_model, _ = target_endpoint(
                judge_target(spec.judge), facts.one("judge"), "judge"
            )
        baseline = None
        if spec.baseline is not None:
            baseline = baseline_values(spec.baseline.name, facts.one("baseline"))
        return Resolved(
            endpoint=endpoint,
            model=model,
            model_digest=digest,
            target_pods=target_pods(spec.target),
            judge_endpoint=judge_endpoint,
            judge_model=judge_model,
            judge_pods=target_pods(judge_target(spec.judge)) if spec.judge else None,
            baseline=baseline,
        )

    def external_names(self, parent: Mapping[str, Any]) -> list[str]:
        return [eval_vault_name(self.context(parent["metadata"]))]

    def probe(
        self,
        spec: EvalJobSpec,
        meta: Mapping[str, Any],
        children: Mapping[ChildKey, Any],
        facts: Facts,
    ) -> Probe | None:
        """While the pod runs, read its progress (items done of all)."""
        for pod in facts.related.get("pods") or []:
            status = pod.get("status") or {}
            if status.get("phase") == "Running" and status.get("podIP"):
                return Probe(
                    f"http://{status['podIP']}:{PROGRESS_PORT}/progress", every=PROBE_SECONDS
                )
        return None

    def status(
        self,
        spec: EvalJobSpec,
        meta: Mapping[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
    ) -> StatusReport:
        previous = facts.status
        if previous.get("phase") in TERMINAL:
            return StatusReport(
                recorded_conditions(previous),
                {k: previous.get(k) for k in RECORD_FIELDS},
            )
        ctx = self.context(meta)
        job = children.get(("batch/v1", "Job", job_name(ctx))) or {}
        config = children.get(("v1", "ConfigMap", config_name(ctx))) or facts.one("config")
        pinned = job_config(config)
        fields: dict[str, Any] = {
            "phase": "Pending",
            "artifact": None,
            "endpoint": pinned.endpoint if pinned else None,
            "modelDigest": pinned.model_digest if pinned else None,
        }
        job_status = job.get("status") or {}
        fields["startTime"] = job_status.get("startTime")
        if problem is not None:
            reason = "SecretsUnavailable" if problem.reason in VAULT_REASONS else problem.reason
            return StatusReport(
                [
                    condition("Completed", False, reason, problem.message),
                    condition("GatesPassed", None, "NotEvaluated", "nothing was evaluated yet"),
                ],
                fields,
            )
        outcome = termination_summary(facts.related.get("pods") or [])
        if outcome is not None and outcome.get("state") == "done":
            return finished(ctx, fields, outcome, job_status)
        failed_job = job_condition(job, "Failed")
        if outcome is not None or failed_job is not None:
            reason = (outcome or {}).get("reason") or (failed_job or {}).get("reason") or "Failed"
            message = (outcome or {}).get("message") or (failed_job or {}).get("message") or ""
            fields.update(phase="Failed", message=message[:1024])
            fields["completionTime"] = job_status.get("completionTime") or (outcome or {}).get(
                "finishedAt"
            )
            return StatusReport(
                [
                    condition("Completed", False, reason, f"the evaluation failed: {message}"),
                    condition("GatesPassed", False, reason, "nothing was evaluated to the end"),
                ],
                fields,
            )
        running = int(job_status.get("active") or 0) > 0 or any(
            (p.get("status") or {}).get("phase") == "Running"
            for p in facts.related.get("pods") or []
        )
        observed = facts.observed or {}
        if running:
            fields["phase"] = "Running"
        if "total" in observed:
            fields["progress"] = {
                "completed": int(observed.get("completed") or 0),
                "total": int(observed.get("total") or 0),
            }
        message = (
            f"evaluating {fields['endpoint']}"
            if running
            else "waiting for the evaluation's pod to start"
        )
        return StatusReport(
            [
                condition("Completed", False, "Running" if running else "Pending", message),
                condition("GatesPassed", None, "NotEvaluated", "the evaluation has not ended"),
            ],
            fields,
        )


def judge_target(judge: Judge | None) -> Target:
    assert judge is not None
    return Target(
        model_deployment_ref=judge.model_deployment_ref,
        endpoint=judge.endpoint,
        model=judge.model,
        api_key=judge.api_key,
    )


def target_pods(target: Target) -> dict[str, str] | None:
    """Pod labels of an in-cluster target, for the Job's egress; None for a URL."""
    ref = target.model_deployment_ref
    if ref is None:
        return None
    return {INSTANCE_LABEL: candidate_name(ref.name) if target.candidate else ref.name}


def target_endpoint(
    target: Target, deployment: Mapping[str, Any] | None, what: str
) -> tuple[str, str | None, str | None]:
    """(base URL ending in /v1, model name, model digest) of a target as it is now."""
    ref = target.model_deployment_ref
    if ref is None:
        assert target.endpoint is not None  # CEL: exactly one of the two
        return f"{target.endpoint.rstrip('/')}/v1", target.model, None
    if deployment is None:
        raise WaitingError(
            "TargetNotFound", f"spec.{what}: ModelDeployment {ref.name} is not in this namespace"
        )
    md_spec = ModelDeploymentSpec.model_validate(defaulted(dict(deployment))["spec"])
    status = deployment.get("status") or {}
    served = target.model or status.get("servedName") or md_spec.model.served_name or ref.name
    if target.candidate:
        candidate = status.get("candidate") or {}
        if not candidate.get("ready") or not candidate.get("endpoint"):
            raise WaitingError(
                "TargetNotReady",
                f"spec.{what}: waiting for ModelDeployment {ref.name}'s candidate to serve",
            )
        return str(candidate["endpoint"]), served, candidate.get("digest")
    if md_spec.auth.api_keys is not None and target.api_key is None:
        raise SpecProblemError(
            "TargetRequiresApiKey",
            f"spec.{what}.apiKey: ModelDeployment {ref.name} requires API keys: name a Vault "
            "KV v2 field holding a key it accepts (`freehold keys create --of "
            f"modeldeployment/{ref.name} --tenant evaluation --into MOUNT/PATH` makes one "
            "there). (Promotion candidates need none: only their evaluation can reach them.)",
        )
    if not is_true(deployment, "Ready") or not status.get("endpoint"):
        raise WaitingError(
            "TargetNotReady", f"spec.{what}: waiting for ModelDeployment {ref.name} to serve"
        )
    return str(status["endpoint"]), served, status.get("servedDigest")


def baseline_values(name: str, baseline: Mapping[str, Any] | None) -> dict[str, float]:
    if baseline is None:
        raise WaitingError("BaselineNotFound", f"spec.baseline: EvalJob {name} is not here")
    status = baseline.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed":
        raise SpecProblemError(
            "BaselineFailed",
            f"spec.baseline: EvalJob {name} failed, so there is nothing to compare with. "
            "Name a baseline that succeeded",
        )
    if phase != "Succeeded":
        raise WaitingError("BaselineNotReady", f"spec.baseline: waiting for EvalJob {name}")
    return {
        str(s["name"]): float(s["value"])
        for s in status.get("suites") or []
        if s.get("value") is not None
    }


def job_config(config_map: Mapping[str, Any] | None) -> JobConfig | None:
    if config_map is None:
        return None
    raw = (config_map.get("data") or {}).get(CONFIG_KEY)
    if raw is None:
        return None
    try:
        return JobConfig.model_validate_json(raw)
    except ValueError:
        return None


def resolved_from_config(config_map: Mapping[str, Any], spec: EvalJobSpec) -> Resolved:
    pinned = job_config(config_map)
    if pinned is None:
        raise WaitingError(
            "ConfigUnreadable",
            f"ConfigMap {config_map['metadata']['name']} is not an evaluation config: "
            "delete it and the operator writes it again",
        )
    return Resolved(
        endpoint=pinned.endpoint,
        model=pinned.model,
        model_digest=pinned.model_digest,
        target_pods=target_pods(spec.target),
        judge_endpoint=pinned.judge_endpoint,
        judge_model=pinned.judge_model,
        judge_pods=target_pods(judge_target(spec.judge)) if spec.judge else None,
        baseline=pinned.baseline,
    )


def termination_summary(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation container's termination message (JSON), once it has ended."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") != "eval" or not terminated:
                continue
            try:
                message = json.loads(terminated.get("message") or "")
            except ValueError:
                message = None
            # The container's end is the evaluation's end; the Job's completionTime
            # follows later (or never, for a failed Job).
            finished_at = terminated.get("finishedAt")
            if isinstance(message, dict) and message.get("v") == 1:
                return {**message, "finishedAt": finished_at}
            return {
                "finishedAt": finished_at,
                "state": "failed",
                "reason": terminated.get("reason") or "Terminated",
                "message": f"the evaluation container exited {terminated.get('exitCode')} "
                "without a result",
            }
    return None


def job_condition(job: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    """The Job's condition of this type when it holds (Complete, Failed)."""
    return condition_of(job, type_) if is_true(job, type_) else None


def finished(
    ctx: BuildContext,
    fields: dict[str, Any],
    outcome: Mapping[str, Any],
    job_status: Mapping[str, Any],
) -> StatusReport:
    suites = [
        {"name": n, "metric": m, "value": v, "low": lo, "high": hi, "samples": k}
        for n, m, v, lo, hi, k in outcome.get("suites") or []
    ]
    gates = [
        {
            "suite": s,
            "metric": m,
            "operator": op,
            "threshold": t,
            "baseline": b,
            "value": v,
            "passed": bool(ok),
        }
        for s, m, op, t, b, v, ok in outcome.get("gates") or []
    ]
    samples = sum(int(s["samples"]) for s in suites)
    fields.update(
        phase="Succeeded",
        suites=suites,
        gates=gates,
        artifact=artifact(ctx),
        resultDigest=outcome.get("digest"),
        signer=outcome.get("signer"),
        modelDigest=outcome.get("modelDigest") or fields.get("modelDigest"),
        progress={"completed": samples, "total": samples},
        completionTime=job_status.get("completionTime") or outcome.get("finishedAt"),
    )
    failing = [
        f"{g['suite']}.{g['metric']} {g['value']} (needs {g['operator']} {g['threshold']})"
        for g in gates
        if not g["passed"]
    ]
    if outcome.get("gatesPassed"):
        gate = condition("GatesPassed", True, "GatesPassed", f"all {len(gates)} gates passed")
    else:
        more = " (more in the result file)" if outcome.get("truncated") else ""
        gate = condition("GatesPassed", False, "GateFailed", "failed: " + "; ".join(failing) + more)
    return StatusReport(
        [
            condition(
                "Completed",
                True,
                "Evaluated",
                f"{samples} samples; signed result at {artifact(ctx)}",
            ),
            gate,
        ],
        fields,
    )


def recorded_conditions(status: Mapping[str, Any]) -> list[Condition]:
    out = []
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Completed", "GatesPassed"):
            value = {"True": True, "False": False}.get(str(cond.get("status")))
            out.append(
                condition(
                    str(cond["type"]), value, str(cond.get("reason")), str(cond.get("message"))
                )
            )
    return out
