"""ModelDeployment as the reconciler sees it: checks, children, Vault role, status. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from freehold.adapters.kubernetes import ResourceType
from freehold.api import kinds as api_kinds
from freehold.api.model_deployment import ModelDeploymentSpec, ModelSource
from freehold.builders.children import Backend, build_children
from freehold.builders.mlbom import BOM_KEY, build_mlbom_configmap, mlbom_name
from freehold.builders.model_workload import (
    INSTANCE_LABEL,
    SERVE_PORT,
    BuildContext,
    needs_vault,
)
from freehold.builders.promotion import (
    MODEL_ANNOTATION,
    Plan,
    candidate_name,
    candidate_spec,
    eval_job,
    live_model,
    model_annotation,
    plan,
    serving_spec,
)
from freehold.builders.rayservice import serve_service_name
from freehold.builders.vault import build_role, vault_name
from freehold.conditions import Condition, condition, condition_of
from freehold.kinds.base import (
    CONFIG_MAP,
    DEPLOYMENT,
    EVAL_JOB,
    MODEL_ROUTER,
    NETWORK_POLICY,
    PDB,
    POD,
    RAYSERVICE,
    SERVICE,
    SERVICE_ACCOUNT,
    VAULT_FINALIZER,
    VAULT_REASONS,
    KindBase,
)
from freehold.kinds.checks import (
    api_keys_in_namespace,
    positive_quantities,
    vault_paths_in_namespace,
)
from freehold.reconciler import (
    OWNER_UID_LABEL,
    ChildKey,
    Desired,
    Facts,
    Lookup,
    Problem,
    SpecProblemError,
    StatusReport,
)
from freehold_serving.signatures import VERIFICATION_FAILED, key_fingerprint

CHILD_TYPES: tuple[ResourceType, ...] = (
    SERVICE_ACCOUNT,
    SERVICE,
    DEPLOYMENT,
    NETWORK_POLICY,
    PDB,
    CONFIG_MAP,
    RAYSERVICE,
    EVAL_JOB,  # spec.promotion's evaluations
)
FAILED_APP_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}
# What this build cannot do yet. Each is refused at reconcile, with a condition, instead
# of a pod that crash-loops or a promise nobody keeps.
FETCHED = {"oci", "s3"}  # fetched into the pod by the fetch-model init container
NOT_READY_RECHECK_SECONDS = 15.0


@dataclass(frozen=True)
class Observed:
    """The serving child as the API server last answered it."""

    backend: Backend
    exists: bool
    ready: bool = False
    ready_replicas: int = 0
    desired_replicas: int = 0
    failure: str | None = None


class ModelDeploymentKind(KindBase[ModelDeploymentSpec]):
    api = api_kinds.MODEL_DEPLOYMENT
    child_types: tuple[ResourceType, ...] = CHILD_TYPES
    status_from = frozenset({"RayService", "Deployment", "EvalJob"})
    finalizer: str | None = VAULT_FINALIZER

    def check(self, spec: ModelDeploymentSpec, meta: Mapping[str, Any]) -> None:
        positive_quantities(
            [
                ("spec.resources.cpu", spec.resources.cpu),
                ("spec.resources.memory", spec.resources.memory),
            ]
        )
        api_keys_in_namespace(spec.auth, self.config.vault_kv_prefix, meta["namespace"])
        if spec.promotion is not None:
            judge = spec.promotion.eval_template.judge
            keys = [
                ("spec.promotion.apiKey.path", spec.promotion.api_key),
                ("spec.promotion.evalTemplate.judge.apiKey.path", judge and judge.api_key),
            ]
            vault_paths_in_namespace(
                [(field, key.path if key else None) for field, key in keys],
                self.config.vault_kv_prefix,
                meta["namespace"],
            )
        if spec.secrets:
            raise SpecProblemError(
                "SecretsUnsupported",
                "spec.secrets: delivering Vault secrets other than API keys to the workload "
                "is planned, not built: nothing would read them. Remove spec.secrets",
            )
        if spec.model.signature is not None:
            signature_reachable(spec.model.uri, spec.model.signature.ref)
        for n, adapter in enumerate(spec.adapters):
            if adapter.signature is not None:
                signature_reachable(adapter.uri, adapter.signature.ref, f"spec.adapters[{n}]")
        s3 = spec.model.s3
        if s3 is not None and s3.credentials is not None:
            prefix = self.config.vault_kv_prefix.format(namespace=meta["namespace"])
            if not s3.credentials.path.startswith(prefix):
                raise SpecProblemError(
                    "InvalidSpec",
                    f"spec.model.s3.credentials.path: {s3.credentials.path!r} is outside this "
                    f"namespace's Vault paths: it must start with {prefix!r}",
                )
        if spec.engine.name == "vllm" and self.config.serving_vllm_image is None:
            raise SpecProblemError(
                "EngineUnavailable",
                "spec.engine.name: engine vllm needs the vLLM serving image, and this "
                "operator has none configured (chart value serving.vllmImage, setting "
                "FREEHOLD_OPERATOR_SERVING_VLLM_IMAGE); ask your platform team, or use "
                "engine llamacpp with a GGUF model",
            )

    def backend(self, facts: Facts) -> Backend:
        return "RayService" if facts.kuberay else "Deployment"

    def _pods(self, meta: Mapping[str, Any]) -> Lookup:
        # The serving pods: a model that fails verification ends its container with the
        # reason as termination message (Deployment backend), read for ModelVerified.
        return Lookup(POD, labels={INSTANCE_LABEL: meta["name"]})

    def lookups(
        self, spec: ModelDeploymentSpec, meta: Mapping[str, Any], facts: Facts
    ) -> dict[str, Lookup]:
        """The serving pods; with promotion, also the serving workload (what runs now) and
        our EvalJobs."""
        # The namespace's routers: one with budgets or rate limits targeting this model is
        # its only way in (builders/network.governed_callers).
        found = {"pods": self._pods(meta), "routers": Lookup(MODEL_ROUTER)}
        if spec.promotion is None:
            return found
        workload = RAYSERVICE if self.backend(facts) == "RayService" else DEPLOYMENT
        return {
            **found,
            "workload": Lookup(workload, name=meta["name"]),
            "evaljobs": Lookup(EVAL_JOB, labels={OWNER_UID_LABEL: meta["uid"]}),
        }

    def plan(self, spec: ModelDeploymentSpec, meta: Mapping[str, Any], facts: Facts) -> Plan:
        jobs = {j["metadata"]["name"]: j for j in facts.related.get("evaljobs") or []}
        return plan(spec, meta["name"], live_model(facts.one("workload")), jobs)

    def build(self, spec: ModelDeploymentSpec, meta: Mapping[str, Any], facts: Facts) -> Desired:
        governing = governing_routers(meta["name"], facts.related.get("routers") or [])
        ctx = replace(self.context(meta), governing_routers=governing)
        backend = self.backend(facts)
        decided = self.plan(spec, meta, facts)
        serving = serving_spec(spec, decided.serve)
        externals = [build_role(serving, ctx)] if needs_vault(serving) else []
        children = build_children(serving, ctx, backend)
        children.append(build_mlbom_configmap(serving, ctx, meta.get("creationTimestamp")))
        if spec.promotion is None:
            return Desired(children, externals)
        for child in children:
            if child["kind"] == backend and child["metadata"]["name"] == ctx.name:
                annotations = child["metadata"].setdefault("annotations", {})
                annotations[MODEL_ANNOTATION] = model_annotation(decided.serve)
        if decided.candidate is not None:
            candidate = candidate_spec(serving_spec(spec, decided.candidate), meta["name"])
            candidate_ctx = BuildContext.of(self.config, candidate_name(ctx.name), ctx.namespace)
            children += build_children(
                candidate, replace(candidate_ctx, governing_routers=governing), backend
            )
        existing = {j["metadata"]["name"] for j in facts.related.get("evaljobs") or []}
        keep: set[ChildKey] = set()
        wanted: list[tuple[str | None, bool, str | None]] = [(decided.baseline_job, False, None)]
        if decided.candidate_job not in (None, decided.baseline_job):
            wanted.append((decided.candidate_job, True, decided.baseline_job))
        for job_name, candidate_flag, baseline in wanted:
            assert job_name is not None
            if job_name in existing:
                keep.add((EVAL_JOB.api_version, "EvalJob", job_name))  # immutable: as it is
            else:
                children.append(
                    eval_job(
                        spec, meta["name"], job_name, candidate=candidate_flag, baseline=baseline
                    )
                )
        return Desired(children, externals, keep=frozenset(keep))

    def external_names(self, parent: Mapping[str, Any]) -> list[str]:
        return [vault_name(self.context(parent["metadata"]))]

    def status(
        self,
        spec: ModelDeploymentSpec,
        meta: Mapping[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
    ) -> StatusReport:
        ctx = self.context(meta)
        backend = self.backend(facts)
        served_name = spec.model.served_name or ctx.name
        serving = (
            RAYSERVICE.api_version if backend == "RayService" else DEPLOYMENT.api_version,
            backend,
            ctx.name,
        )
        observed = observe(backend, children.get(serving), ctx.name)
        decided = self.plan(spec, meta, facts)
        served_model = decided.serve
        refused = verification_failure(facts.related.get("pods") or [], observed.failure)
        conditions = serving_conditions(
            observed, served_name, served_model, problem, refused, engine_note(spec)
        )
        if needs_vault(spec):
            conditions.append(secrets_condition(problem))
        fields: dict[str, Any] = {
            "endpoint": endpoint(ctx, backend),
            "readyReplicas": observed.ready_replicas,
            "desiredReplicas": observed.desired_replicas,
            "servedDigest": f"sha256:{served_model.sha256}" if observed.ready else None,
            "servedName": served_name,
            "backend": backend,
            "candidate": None,
            "mlBom": f"configmap://{mlbom_name(ctx.name)}/{BOM_KEY}",
        }
        if spec.promotion is not None:
            conditions.append(awaiting_eval(decided, served_model))
            if decided.state in ("Evaluating", "GatesFailed"):
                cctx = BuildContext.of(self.config, candidate_name(ctx.name), ctx.namespace)
                key = (serving[0], backend, cctx.name)
                ready = observe(backend, children.get(key), cctx.name).ready
                fields["candidate"] = {
                    "digest": f"sha256:{spec.model.sha256}",
                    "evalJob": decided.candidate_job,
                    "endpoint": endpoint(cctx, backend) if decided.candidate else None,
                    "ready": ready and decided.candidate is not None,
                }
        # Not serving yet: pods may be verifying, or may have refused the model (their
        # restarts change nothing a watch sees), so look again soon.
        recheck = None if observed.ready else NOT_READY_RECHECK_SECONDS
        return StatusReport(conditions, fields, recheck)


def engine_note(spec: ModelDeploymentSpec) -> str:
    """Said in Ready: vLLM without GPUs runs on its CPU backend, which is allowed (small
    models, tests) but is not what a platform team expects of vLLM."""
    gpu = spec.resources.gpu
    if spec.engine.name == "vllm" and (gpu is None or gpu.count == 0):
        return "; engine vllm on CPU (vLLM's CPU backend: no resources.gpu requested)"
    return ""


def awaiting_eval(decided: Plan, served: ModelSource) -> Condition:
    """Whether a new digest waits for its evaluation, and which EvalJob decides."""
    if decided.state == "Evaluating":
        return condition(
            "AwaitingEval",
            True,
            "Evaluating",
            f"serving sha256:{served.sha256}; the new digest runs as a candidate until "
            f"EvalJob {decided.candidate_job} passes its gates",
        )
    if decided.state == "GatesFailed":
        return condition(
            "AwaitingEval",
            True,
            "GatesFailed",
            f"kept sha256:{served.sha256}: EvalJob {decided.candidate_job} did not pass "
            f"({decided.verdict}). Change spec.model or spec.promotion.evalTemplate",
        )
    if decided.state == "Promoting":
        return condition(
            "AwaitingEval",
            False,
            "Promoted",
            f"EvalJob {decided.candidate_job} passed: rolling out sha256:{served.sha256}",
        )
    return condition(
        "AwaitingEval", False, "UpToDate", f"sha256:{served.sha256} is what spec.model names"
    )


def observe(backend: Backend, obj: Mapping[str, Any] | None, app_name: str) -> Observed:
    if obj is None:
        return Observed(backend, exists=False)
    status = obj.get("status") or {}
    if backend == "RayService":
        active = status.get("activeServiceStatus") or {}
        cluster = active.get("rayClusterStatus") or {}
        ready = (condition_of(obj, "Ready") or {}).get("status") == "True"
        app = (active.get("applicationStatuses") or {}).get(app_name) or {}
        failure = None
        if app.get("status") in FAILED_APP_STATES:
            failure = f"Ray Serve application {app['status']}: {app.get('message', '')}".strip()
        return Observed(
            backend,
            exists=True,
            ready=ready and failure is None,
            ready_replicas=int(cluster.get("readyWorkerReplicas") or 0),
            desired_replicas=int(cluster.get("desiredWorkerReplicas") or 0),
            failure=failure,
        )
    desired = int((obj.get("spec") or {}).get("replicas") or 0)
    ready_count = int(status.get("readyReplicas") or 0)
    progressing = condition_of(obj, "Progressing")
    failure = None
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        failure = progressing.get("message") or "the rollout exceeded its progress deadline"
    return Observed(
        backend,
        exists=True,
        ready=desired > 0 and ready_count >= desired,
        ready_replicas=ready_count,
        desired_replicas=desired,
        failure=failure,
    )


def endpoint(ctx: BuildContext, backend: Backend) -> str:
    service = serve_service_name(ctx) if backend == "RayService" else ctx.name
    return f"http://{service}.{ctx.namespace}.svc:{SERVE_PORT}/v1"


def signature_reachable(model_uri: str, ref: str, where: str = "spec.model") -> None:
    """The pod must be able to read the signature where it reads the model (or adapter,
    `where` naming it)."""
    scheme = ref.split("://", 1)[0]
    model_scheme = model_uri.split("://", 1)[0]
    field = f"{where}.signature.ref"
    if scheme in FETCHED and model_scheme not in FETCHED:
        raise SpecProblemError(
            "SignatureUnreachable",
            f"{field}: a {scheme}:// signature is fetched with an oci:// or s3:// model or "
            "adapter; put its signature where it is (its claim, its package or a file)",
        )
    if scheme == "s3" and model_scheme != "s3":
        raise SpecProblemError(
            "SignatureUnreachable",
            f"{field}: an s3:// signature must be in the model's own store (spec.model.s3)",
        )
    if scheme == "pvc" and (
        not model_uri.startswith("pvc://") or ref.split("/")[2] != model_uri.split("/")[2]
    ):
        raise SpecProblemError(
            "SignatureUnreachable",
            f"{field}: a pvc:// signature must be on its own claim "
            f"({model_uri.split('/')[2] if model_uri.startswith('pvc://') else 'none'}), the "
            "only claim the serving pods mount for it",
        )


def verification_failure(pods: list[dict[str, Any]], app_failure: str | None) -> str | None:
    """Why the model was refused, as the serving process said it: a container's
    termination message (Deployment backend) or the Ray Serve application's message."""
    for pod in pods:
        pod_status = pod.get("status") or {}
        statuses = [
            *(pod_status.get("initContainerStatuses") or []),  # fetch-model (oci://)
            *(pod_status.get("containerStatuses") or []),
        ]
        for status in statuses:
            if status.get("ready"):
                continue  # serving now: an earlier refusal is history
            for state in (status.get("state"), status.get("lastState")):
                message = ((state or {}).get("terminated") or {}).get("message") or ""
                if VERIFICATION_FAILED in message:
                    return message[message.index(VERIFICATION_FAILED) :][:1024]
    if app_failure and VERIFICATION_FAILED in app_failure:
        return app_failure[app_failure.index(VERIFICATION_FAILED) :][:1024]
    return None


def serving_conditions(
    observed: Observed,
    served_name: str,
    model: ModelSource,
    problem: Problem | None,
    refused: str | None = None,
    engine_note: str = "",
) -> list[Condition]:
    sha256 = model.sha256
    replicas = f"{observed.ready_replicas}/{observed.desired_replicas} replicas ready"
    if problem is not None:
        reason = "SecretsUnavailable" if problem.reason in VAULT_REASONS else problem.reason
        ready = condition("Ready", False, reason, problem.message)
    elif refused is not None:
        ready = condition("Ready", False, "ModelRefused", refused)
    elif observed.failure:
        ready = condition("Ready", False, "ServingFailed", observed.failure)
    elif observed.ready:
        ready = condition(
            "Ready", True, "Serving", f"serving {served_name}; {replicas}{engine_note}"
        )
    elif not observed.exists:
        ready = condition("Ready", False, "Creating", f"creating the {observed.backend}")
    else:
        ready = condition(
            "Ready",
            False,
            "Starting",
            f"waiting for the {observed.backend}: {replicas}. Pods verify the model digest "
            "and load it before they report ready",
        )
    failure = problem.message if problem is not None else observed.failure
    failure_reason = problem.reason if problem is not None else "ServingFailed"
    progressing = problem is None and not observed.ready and observed.failure is None
    signature = model.signature
    if refused is not None:
        reason = "DigestMismatch" if "sha256 does not match" in refused else "SignatureInvalid"
        verified = condition("ModelVerified", False, reason, refused)
    elif observed.ready and problem is None:
        # The serving process verifies the signature and the sha256 before it loads the
        # file, and a replica only reports ready after loading: ready means verified.
        if signature is not None:
            signer = (
                f"key {key_fingerprint(signature.public_key)}"
                if signature.public_key
                else str(signature.identity)
            )
            verified = condition(
                "ModelVerified", True, "SignatureVerified", f"signed by {signer}; sha256 {sha256}"
            )
        else:
            verified = condition("ModelVerified", True, "DigestMatched", f"sha256 {sha256}")
    else:
        what = "signature and sha256" if signature is not None else "sha256"
        verified = condition(
            "ModelVerified", None, "Pending", f"each pod verifies the {what} before loading"
        )
    return [
        ready,
        condition(
            "Progressing",
            progressing,
            "Reconciling" if progressing else ("Stable" if observed.ready else "Blocked"),
            "rolling out the current spec"
            if progressing
            else ("up to date" if observed.ready else "waiting for the problem to be fixed"),
        ),
        condition(
            "Degraded",
            failure is not None,
            failure_reason if failure is not None else "AsExpected",
            failure or "no failures reported",
        ),
        verified,
        # PolicyCompliant is added by the reconciler, for every governed kind.
    ]


def secrets_condition(problem: Problem | None) -> Condition:
    if problem is not None and problem.reason in VAULT_REASONS:
        return condition(
            "SecretsUnavailable",
            True,
            problem.reason,
            f"{problem.message}; retrying. No Kubernetes Secret is used instead.",
        )
    return condition(
        "SecretsUnavailable", False, "VaultReady", "the workload's Vault policy and role are set"
    )


def governing_routers(name: str, routers: list[dict[str, Any]]) -> tuple[str, ...]:
    """The ModelRouters (not being deleted) whose budgets or rate limits would be skipped
    by calling the model `name` directly: they target it by modelDeploymentRef."""
    found = []
    for router in routers:
        spec = router.get("spec") or {}
        if (router.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if not (spec.get("budgets") or spec.get("rateLimits")):
            continue
        refs = {
            ((t.get("modelDeploymentRef") or {}).get("name")) for t in spec.get("targets") or []
        }
        if name in refs:
            found.append(str(router["metadata"]["name"]))
    return tuple(sorted(found))
