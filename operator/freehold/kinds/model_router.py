"""ModelRouter as the reconciler sees it: its targets resolved (serving? eval passed?),
the router app and its companions, per-target status with measured latency. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freehold.adapters.kubernetes import ResourceType
from freehold.api import kinds as api_kinds
from freehold.api.model_router import ModelRouterSpec
from freehold.builders.model_workload import SERVE_PORT, BuildContext
from freehold.builders.router import (
    ResolvedTarget,
    build_router_children,
    build_vault_role,
    needs_vault,
    router_args,
    router_vault_name,
)
from freehold.conditions import Condition, condition, is_true
from freehold.kinds.base import (
    CONFIG_MAP,
    DEPLOYMENT,
    EVAL_JOB,
    MODEL_DEPLOYMENT,
    NETWORK_POLICY,
    SERVICE,
    SERVICE_ACCOUNT,
    VAULT_FINALIZER,
    VAULT_REASONS,
    KindBase,
)
from freehold.kinds.checks import postgres_credentials_in_namespace, vault_paths_in_namespace
from freehold.reconciler import (
    ChildKey,
    Desired,
    Facts,
    Lookup,
    Probe,
    Problem,
    StatusReport,
)

PROBE_SECONDS = 30.0
CHILD_TYPES: tuple[ResourceType, ...] = (
    SERVICE_ACCOUNT,
    SERVICE,
    DEPLOYMENT,
    NETWORK_POLICY,
    CONFIG_MAP,
)


def eval_state(deployment: str, digest: str | None, jobs: list[dict[str, Any]]) -> str | None:
    """The latest EvalJob of this ModelDeployment's served digest: Passed, Failed or
    Pending; None when there is none."""
    mine = [
        j
        for j in jobs
        if ((j.get("spec") or {}).get("target") or {}).get("modelDeploymentRef", {}).get("name")
        == deployment
        and not ((j.get("spec") or {}).get("target") or {}).get("candidate")
    ]
    if digest is not None:
        mine = [j for j in mine if (j.get("status") or {}).get("modelDigest") in (None, digest)]
    if not mine:
        return None
    latest = max(mine, key=lambda j: str(j["metadata"].get("creationTimestamp", "")))
    status = latest.get("status") or {}
    if status.get("phase") not in ("Succeeded", "Failed"):
        return "Pending"
    return "Passed" if is_true(latest, "GatesPassed") else "Failed"


class ModelRouterKind(KindBase[ModelRouterSpec]):
    api = api_kinds.MODEL_ROUTER
    child_types: tuple[ResourceType, ...] = CHILD_TYPES
    lookup_types: tuple[ResourceType, ...] = (MODEL_DEPLOYMENT, EVAL_JOB)
    status_from = frozenset({"Deployment"})
    finalizer: str | None = VAULT_FINALIZER
    # Its targets' NetworkPolicies depend on its budgets and rate limits: re-reconcile them.
    wakes: tuple[str, ...] = ("ModelDeployment",)

    def check(self, spec: ModelRouterSpec, meta: Mapping[str, Any]) -> None:
        paths = [("spec.auth.apiKeys.path", spec.auth.api_keys.path)] if spec.auth.api_keys else []
        paths += [
            (f"spec.targets[{n}].external.apiKey.path", t.external.api_key.path)
            for n, t in enumerate(spec.targets)
            if t.external is not None and t.external.api_key is not None
        ]
        paths += [
            (f"spec.targets[{n}].apiKey.path", t.api_key.path)
            for n, t in enumerate(spec.targets)
            if t.api_key is not None
        ]
        vault_paths_in_namespace(paths, self.config.vault_kv_prefix, meta["namespace"])
        if spec.state.postgres is not None:
            postgres_credentials_in_namespace(
                spec.state.postgres.credentials,
                self.config.vault_kv_prefix,
                meta["namespace"],
                "spec.state.postgres.credentials",
            )

    def lookups(
        self, spec: ModelRouterSpec, meta: Mapping[str, Any], facts: Facts
    ) -> dict[str, Lookup]:
        found = {
            f"md:{t.name}": Lookup(MODEL_DEPLOYMENT, name=t.model_deployment_ref.name)
            for t in spec.targets
            if t.model_deployment_ref is not None
        }
        if spec.require_passing_eval:
            found["evaljobs"] = Lookup(EVAL_JOB)
        return found

    def resolve(self, spec: ModelRouterSpec, facts: Facts) -> dict[str, dict[str, Any]]:
        """Per ModelDeployment target: what the router and the status need to know."""
        jobs = facts.related.get("evaljobs") or []
        out = {}
        for n, t in enumerate(spec.targets):
            if t.model_deployment_ref is None:
                continue
            md = facts.one(f"md:{t.name}")
            status = (md or {}).get("status") or {}
            ready = md is not None and is_true(md, "Ready")
            state = (
                eval_state(t.model_deployment_ref.name, status.get("servedDigest"), jobs)
                if spec.require_passing_eval
                else None
            )
            # Admission is what the router's args say, so it must change rarely: a target
            # that exists and whose evaluation passed. Readiness is not part of it: a model
            # pod restarting would roll the router's pod (seen on a real node: the router
            # restarted exactly when it should have fallen back); the router itself falls
            # back from a target that does not answer and cools it down.
            # A model that requires API keys admits the router only with a key of its
            # own (spec.targets[].apiKey, read by the router from Vault); without one every
            # request would be refused 401, so it is not routed to, and status says why.
            keyed = bool((((md or {}).get("spec") or {}).get("auth") or {}).get("apiKeys"))
            unkeyed = keyed and t.api_key is None
            admitted = (
                bool(status.get("endpoint"))
                and (not spec.require_passing_eval or state == "Passed")
                and not unkeyed
            )
            md_name = t.model_deployment_ref.name
            out[t.name] = {
                "ready": ready,
                "admitted": admitted,
                "evalState": state,
                "endpoint": status.get("endpoint"),
                "model": status.get("servedName"),
                "message": (
                    f"ModelDeployment {md_name} requires API keys (spec.auth.apiKeys): give "
                    f"the router its own key for it in spec.targets[{n}].apiKey (a Vault field "
                    f"holding a key it accepts: `freehold keys create --of modeldeployment/"
                    f"{md_name} --tenant router --into MOUNT/PATH`), or remove its apiKeys and "
                    "let the router govern who calls it (its NetworkPolicy admits only the router)"
                )
                if unkeyed
                else None,
            }
        return out

    def build(self, spec: ModelRouterSpec, meta: Mapping[str, Any], facts: Facts) -> Desired:
        ctx = self.context(meta)
        resolved = {
            name: ResolvedTarget(name, r["endpoint"], r["model"], r["admitted"])
            for name, r in self.resolve(spec, facts).items()
        }
        args = router_args(spec, ctx, resolved)
        externals = [build_vault_role(spec, ctx)] if needs_vault(spec) else []
        return Desired(build_router_children(spec, ctx, args), externals)

    def external_names(self, parent: Mapping[str, Any]) -> list[str]:
        return [router_vault_name(self.context(parent["metadata"]))]

    def endpoint(self, ctx: BuildContext) -> str:
        return f"http://{ctx.name}.{ctx.namespace}.svc:{SERVE_PORT}/v1"

    def probe(
        self,
        spec: ModelRouterSpec,
        meta: Mapping[str, Any],
        children: Mapping[ChildKey, Any],
        facts: Facts,
    ) -> Probe | None:
        """While the router serves, read its measured latencies (no request data)."""
        ctx = self.context(meta)
        deployment = children.get(("apps/v1", "Deployment", ctx.name)) or {}
        if int((deployment.get("status") or {}).get("readyReplicas") or 0) < 1:
            return None
        return Probe(
            f"http://{ctx.name}.{ctx.namespace}.svc:{SERVE_PORT}/router/status",
            every=PROBE_SECONDS,
        )

    def status(
        self,
        spec: ModelRouterSpec,
        meta: Mapping[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
    ) -> StatusReport:
        ctx = self.context(meta)
        resolved = self.resolve(spec, facts)
        observed = {t.get("name"): t for t in (facts.observed or {}).get("targets") or []}
        targets = []
        for n, t in enumerate(spec.targets):
            r = resolved.get(t.name)
            external = t.external is not None
            seen = observed.get(t.name) or {}
            message = (r or {}).get("message")
            if seen.get("ownKey") and t.api_key is not None:
                message = (
                    f"the router's own key for it (spec.targets[{n}].apiKey, "
                    f"{t.api_key.mount}/{t.api_key.path}#{t.api_key.key}) {seen['ownKey']}: "
                    "write a key it accepts there (freehold keys create|rotate --into)"
                )
            targets.append(
                {
                    "name": t.name,
                    "ready": True if external else bool(r and r["ready"]),
                    "admitted": spec.allow_external if external else bool(r and r["admitted"]),
                    "evalState": r["evalState"] if r else None,
                    "latencyMs": seen.get("latencyMs"),
                    "endpoint": (t.external.base_url if t.external else None)
                    if external
                    else (r or {}).get("endpoint"),
                    "message": message,
                }
            )
        admitted = sum(1 for t in targets if t["admitted"])
        refused = [t.name for t in spec.targets if (observed.get(t.name) or {}).get("ownKey")]
        deployment = children.get(("apps/v1", "Deployment", ctx.name)) or {}
        serving = int((deployment.get("status") or {}).get("readyReplicas") or 0) >= 1
        if problem is not None:
            reason = "SecretsUnavailable" if problem.reason in VAULT_REASONS else problem.reason
            ready = condition("Ready", False, reason, problem.message)
        elif admitted == 0:
            waiting = "; ".join(f"{t['name']}: {_why_waiting(t)}" for t in targets)
            ready = condition(
                "Ready", False, "NoTargetAdmitted", f"no target can take requests ({waiting})"
            )
        elif not serving:
            ready = condition("Ready", False, "Starting", "waiting for the router's pod")
        else:
            ready = condition(
                "Ready", True, "Routing", f"routing to {admitted} of {len(targets)} targets"
            )
        return StatusReport(
            [
                ready,
                _degraded(admitted, len(targets), refused),
            ],
            {"endpoint": self.endpoint(ctx), "targets": targets, "readyTargets": admitted},
        )


def _degraded(admitted: int, total: int, refused: list[str]) -> Condition:
    if refused:
        return condition(
            "Degraded",
            True,
            "OwnKeyRefused",
            f"the router's own key is refused or unreadable for {', '.join(refused)} "
            "(status.targets[].message)",
        )
    if admitted < total:
        return condition(
            "Degraded", True, "TargetsMissing", f"{total - admitted} target(s) not admitted"
        )
    return condition("Degraded", False, "AsExpected", "every target is admitted")


def _why_waiting(target: Mapping[str, Any]) -> str:
    if target.get("message"):
        return str(target["message"])
    return f"eval {target['evalState']}" if target.get("ready") else "not serving"
