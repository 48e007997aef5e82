"""One reconciliation of a ModelDeployment: validate, build, adopt, apply, report.

Level-based: every call computes the whole desired state from the spec and makes the
cluster match it, so create, update, resume and drift repair are the same call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from freehold.adapters.kubernetes import KubeApi, KubeError, Ref
from freehold.adapters.vault import VaultApi, VaultUnavailableError
from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.children import Backend, build_children
from freehold.builders.common import MANAGED_BY, BuildContext, needs_vault
from freehold.builders.vault import build_role, vault_name
from freehold.policies.status import (
    invalid_status,
    observe_deployment,
    observe_rayservice,
    secrets_unavailable,
    serving_status,
)
from freehold.settings import OperatorSettings
from freehold.validation import defaulted, validate

log = logging.getLogger(__name__)
RAYSERVICE = ("ray.io/v1", "rayservices")
# Where a reconcile sends what it found: the status to write, and Events to post.
WriteStatus = Callable[[dict[str, Any]], None]
Notify = Callable[[str, str, str], None]  # (type: Normal|Warning, reason, message)


def context_for(name: str, namespace: str, settings: OperatorSettings) -> BuildContext:
    return BuildContext(
        name=name,
        namespace=namespace,
        serving_image=settings.serving_image,
        ray_version=settings.ray_version,
        head_cpu=settings.head_cpu,
        head_memory=settings.head_memory,
        vault_address=settings.vault_address,
        vault_namespace=settings.vault_namespace,
        vault_port=settings.vault_port,
        otel_namespace=settings.otel_namespace,
        otel_endpoint=settings.otel_endpoint,
        kuberay_namespace=settings.kuberay_namespace,
        api_server_cidr=settings.api_server_cidr,
    )


def possible_children(ctx: BuildContext) -> list[Ref]:
    """The objects a ModelDeployment may own but not want any more (a PDB after scaling
    to one, the Deployment and Service once KubeRay serves it). The ServiceAccount,
    the NetworkPolicies and a served RayService are always wanted."""
    ns, name = ctx.namespace, ctx.name
    refs = [
        Ref("networking.k8s.io/v1", "NetworkPolicy", ns, f"{name}-default-deny"),
        Ref("networking.k8s.io/v1", "NetworkPolicy", ns, f"{name}-allow"),
        Ref("networking.k8s.io/v1", "NetworkPolicy", ns, f"{name}-autoscaler"),
        Ref("apps/v1", "Deployment", ns, name),
        Ref("v1", "Service", ns, name),
        Ref("policy/v1", "PodDisruptionBudget", ns, name),
    ]
    return refs


VAULT_FINALIZER = "freehold.dev/vault-cleanup"


class ModelDeploymentController:
    def __init__(
        self,
        kube: KubeApi,
        settings: OperatorSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        vault: VaultApi | None = None,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._clock = clock
        self._vault = vault

    def _secrets(
        self,
        manifest: dict[str, Any],
        spec: ModelDeploymentSpec,
        ctx: BuildContext,
        write_status: WriteStatus,
        previous: list[dict[str, Any]],
    ) -> None:
        """Vault policy and role for the workload, before any pod can ask for them.
        Vault down: a condition and a retry, never a fallback Kubernetes Secret."""
        generation = manifest["metadata"].get("generation")
        if self._vault is None:
            problem = (
                "this ModelDeployment reads secrets from Vault, but the operator has "
                "no Vault address (chart value vault.address)"
            )
            write_status(
                secrets_unavailable(
                    "VaultNotConfigured", problem, generation, self._clock(), previous
                )
            )
            raise kopf.TemporaryError(problem, delay=60)
        try:
            self._vault.check()
            self._kube.set_finalizer(manifest, VAULT_FINALIZER, present=True)
            self._vault.ensure(build_role(spec, ctx))
        except VaultUnavailableError as exc:
            write_status(
                secrets_unavailable(exc.reason, exc.message, generation, self._clock(), previous)
            )
            raise kopf.TemporaryError(f"Vault: {exc.message}", delay=15) from exc

    def finalize(self, body: Any) -> None:
        """On deletion: remove the workload's Vault role and policy, then let it go.
        While Vault is down the finalizer holds, so nothing is left behind in Vault."""
        manifest = _plain(body)
        meta = manifest["metadata"]
        if VAULT_FINALIZER not in (meta.get("finalizers") or []):
            return
        if self._vault is not None:
            ctx = context_for(meta["name"], meta["namespace"], self._settings)
            try:
                self._vault.remove(vault_name(ctx))
            except VaultUnavailableError as exc:
                raise kopf.TemporaryError(
                    f"waiting for Vault to remove {vault_name(ctx)}: {exc.message}", delay=15
                ) from exc
        self._kube.set_finalizer(manifest, VAULT_FINALIZER, present=False)

    def reconcile(self, body: Any, write_status: WriteStatus, notify: Notify) -> None:
        """Raises kopf.PermanentError for a bad spec, kopf.TemporaryError to retry."""
        manifest = _plain(body)
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        generation = meta.get("generation")
        previous = (manifest.get("status") or {}).get("conditions") or []
        errors = validate(manifest)
        if errors:
            problems = [str(e) for e in errors]
            write_status(invalid_status(problems, generation, self._clock(), previous))
            if _ready(previous) != "False":
                notify("Warning", "InvalidSpec", "; ".join(problems))
            raise kopf.PermanentError("invalid spec: " + "; ".join(problems))

        spec = ModelDeploymentSpec.model_validate(defaulted(manifest)["spec"])
        ctx = context_for(name, namespace, self._settings)
        uses_vault = needs_vault(spec)
        try:
            if uses_vault:
                self._secrets(manifest, spec, ctx, write_status, previous)
            elif VAULT_FINALIZER in (meta.get("finalizers") or []):
                self.finalize(manifest)  # the spec stopped using Vault: clean up now
            ray = self._kube.serves(*RAYSERVICE)
            backend: Backend = "RayService" if ray else "Deployment"
            children = build_children(spec, ctx, backend)
            kopf.adopt(children, owner=body)
            for child in children:
                outcome = self._kube.apply(child)
                if outcome != "unchanged":
                    verb = "Created" if outcome == "created" else "Updated"
                    notify(
                        "Normal",
                        verb,
                        f"{verb.lower()} {child['kind']} {child['metadata']['name']}",
                    )
            self._prune(ctx, children)
            serving = next(c for c in children if c["kind"] in ("RayService", "Deployment"))
            current = self._kube.get(Ref.of(serving))
        except KubeError as exc:
            if exc.transient or exc.status in (401, 403):
                # The API server or our permissions: a dependency, not the user's spec.
                raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=10) from exc
            write_status(
                invalid_status(
                    [f"the API server refused a child: {exc}"], generation, self._clock(), previous
                )
            )
            raise kopf.PermanentError(f"the API server refused a child: {exc}") from exc

        observed = (
            observe_rayservice(current, name)
            if backend == "RayService"
            else observe_deployment(current)
        )
        served_name = spec.model.served_name or name
        status = serving_status(
            observed,
            ctx,
            served_name,
            spec.model.sha256,
            generation,
            self._clock(),
            previous,
            uses_vault=uses_vault,
        )
        write_status(status)
        now_ready = _ready(status["conditions"])
        if now_ready != _ready(previous):
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            notify(
                "Normal" if now_ready == "True" else "Warning", ready["reason"], ready["message"]
            )

    def resync(self, namespaces: Iterable[str | None]) -> int:
        """Reconcile every ModelDeployment once: drift repair and fresh status, without
        kopf timers (which would put a finalizer on every object). Returns the count."""
        count = 0
        for namespace in namespaces:
            for body in self._kube.list("freehold.dev/v1alpha1", "ModelDeployment", namespace):
                body.setdefault("apiVersion", "freehold.dev/v1alpha1")
                body.setdefault("kind", "ModelDeployment")
                ref = Ref.of(body)
                if body.get("metadata", {}).get("deletionTimestamp"):
                    # A deletion kopf's handler has not finished (say, Vault was down).
                    try:
                        self.finalize(body)
                    except kopf.TemporaryError as exc:
                        log.info("finalizing %s/%s: %s", ref.namespace, ref.name, exc)
                    continue

                def write(status: dict[str, Any], ref: Ref = ref) -> None:
                    self._kube.patch_status(ref, status)

                def notify(
                    type_: str, reason: str, message: str, body: dict[str, Any] = body
                ) -> None:
                    self._kube.post_event(body, type_, reason, message)

                try:
                    self.reconcile(body, write, notify)
                    count += 1
                except (kopf.PermanentError, kopf.TemporaryError) as exc:
                    log.info("resync of %s/%s: %s", ref.namespace, ref.name, exc)
                except KubeError as exc:
                    log.warning("resync of %s/%s failed: %s", ref.namespace, ref.name, exc)
        return count

    def _prune(self, ctx: BuildContext, wanted: list[dict[str, Any]]) -> None:
        """Delete children this spec no longer wants (a PDB after scaling to one, the
        Deployment after KubeRay appears), but only objects we manage."""
        keep = {Ref.of(c) for c in wanted}
        for ref in possible_children(ctx):
            if ref in keep:
                continue
            current = self._kube.get(ref)
            labels = ((current or {}).get("metadata") or {}).get("labels") or {}
            if current is not None and labels.get("app.kubernetes.io/managed-by") == MANAGED_BY:
                self._kube.delete(ref)
                log.info("deleted %s %s/%s: no longer wanted", ref.kind, ref.namespace, ref.name)


def _plain(body: Any) -> dict[str, Any]:
    """kopf's Body as a plain dict (validation and builders take plain data)."""
    if isinstance(body, Mapping):  # dicts and kopf's Body alike
        return {k: _plain(v) for k, v in body.items()}
    if isinstance(body, list):
        return [_plain(v) for v in body]  # type: ignore[return-value]
    return body  # type: ignore[no-any-return]


def _ready(conditions: list[dict[str, Any]]) -> str | None:
    for cond in conditions:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None
