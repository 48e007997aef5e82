"""`freehold operator`: settings -> adapters -> reconciler -> kopf watches, for every kind.

kopf is used at the edge only: it logs in, watches, reconnects, and serves /healthz.
Its handlers are generated per registered kind and child type, and are one line each.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kopf

from freehold.adapters.kubernetes import NAMESPACE, KubeApi, ResourceType, load_client
from freehold.adapters.probe import HttpProbe
from freehold.adapters.vault import VaultApi
from freehold.builders.model_workload import ClusterConfig
from freehold.controller import Controller
from freehold.kinds import child_types, lookup_types, registry
from freehold.policy import compliance_judge
from freehold.reconciler import MANAGED_BY, MANAGED_BY_LABEL, KindController, Reconciler
from freehold.settings import OperatorSettings

log = logging.getLogger(__name__)
ANNOTATION_PREFIX = "kopf.freehold.dev"


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: with event handlers only, kopf detects no changes and stores no
    "last handled" state, yet would still build every event's essence (a deep copy and
    cleanup of the whole object, a tenth of the operator's CPU at 1,000 resources) to diff
    it against nothing. Should change handlers ever be added, they need a real storage."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def kopf_settings(
    settings: OperatorSettings, children: list[ResourceType]
) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # Users read conditions, not kopf's bookkeeping; kopf keeps none with event handlers
    # only, but should that change, it goes to annotations, never status.
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    ks.persistence.diffbase_storage = NoDiffBase()
    ks.persistence.finalizer = "freehold.dev/finalizer"
    # A watch that silently stalls would freeze reconciliation: time it out and reconnect.
    ks.watching.server_timeout = settings.watch_server_timeout
    ks.watching.client_timeout = settings.watch_client_timeout
    ks.watching.connect_timeout = 30
    # Only our children are streamed (server-side label selector), not every Deployment
    # and ServiceAccount of the cluster.
    for t in children:
        ks.watching.label_selectors[_resource_is(t)] = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    # Our resources are known up front: no cluster-wide watch on CRDs (one permission
    # fewer for the chart's RBAC). KubeRay installed later is picked up by the reconciler
    # (discovery); its RayServices are watched after an operator restart.
    ks.scanning.disabled = True
    # We post our own Events (one per change); kopf would add one per handler run.
    ks.posting.enabled = False
    ks.batching.worker_limit = 1000
    return ks


def _resource_is(t: ResourceType) -> Callable[[kopf.Resource], bool]:
    return lambda r: bool(r.group == t.group and r.plural == t.plural)


def connect_vault(settings: OperatorSettings) -> VaultApi | None:
    if not settings.vault_address:
        return None
    # A dev or break-glass token wins; otherwise the operator logs in with its own
    # ServiceAccount token.
    if settings.vault_token:
        return VaultApi.connect(
            settings.vault_address,
            settings.vault_token.get_secret_value(),
            ca_bundle=settings.vault_ca_bundle,
            auth_mount=settings.vault_auth_mount,
        )
    return VaultApi.kubernetes_login(
        settings.vault_address,
        settings.vault_role,
        settings.vault_token_path,
        ca_bundle=settings.vault_ca_bundle,
        login_mount=settings.vault_auth_mount,
        auth_mount=settings.vault_auth_mount,
    )


def api_server_cidr(settings: OperatorSettings, host: str) -> str:
    """The setting, or the API server's own address when the operator reaches it by IP
    (outside a cluster). In a pod the address is a Service IP, which egress rules do not
    see: the chart derives and sets the endpoint address instead."""
    if settings.api_server_cidr:
        return settings.api_server_cidr
    try:
        address = ipaddress.ip_address(urlparse(host).hostname or "")
    except ValueError:
        raise SystemExit(
            f"FREEHOLD_OPERATOR_API_SERVER_CIDR is not set and the API server ({host}) is "
            "not reached by IP address: set it to the API server's address"
        ) from None
    return f"{address}/{address.max_prefixlen}"


def cluster_config(settings: OperatorSettings, api_cidr: str) -> ClusterConfig:
    return ClusterConfig(
        serving_image=settings.serving_image,
        serving_vllm_image=settings.serving_vllm_image,
        ray_version=settings.ray_version,
        head_cpu=settings.head_cpu,
        head_memory=settings.head_memory,
        vault_address=settings.vault_address,
        vault_namespace=settings.vault_namespace,
        vault_port=settings.vault_port,
        vault_ca_pem=(
            Path(settings.vault_ca_bundle).read_text(encoding="utf-8")
            if settings.vault_ca_bundle
            else None
        ),
        vault_kv_prefix=settings.vault_kv_prefix,
        otel_namespace=settings.otel_namespace,
        otel_endpoint=settings.otel_endpoint,
        prometheus_namespace=settings.prometheus_namespace,
        insecure_registries=tuple(settings.insecure_registries),
        kuberay_namespace=settings.kuberay_namespace,
        operator_namespace=settings.pod_namespace,
        api_server_cidr=api_cidr,
        dns_namespace=settings.dns_namespace,
        dns_pod_labels=tuple(sorted(settings.dns_pod_labels.items())),
        dns_ports=tuple(settings.dns_ports),
        dns_cidrs=tuple(settings.dns_cidrs),
    )


def watched_children(kinds: list[KindController[Any]]) -> list[ResourceType]:
    """Child types watched as children: not our own kinds, which are watched as parents
    (and forwarded to their owner from there)."""
    parents = {k.resource for k in kinds}
    return [t for t in child_types(kinds) if t not in parents]


def build_registry(
    controller: Controller, kinds: list[KindController[Any]]
) -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()
    for kind in kinds:
        r = kind.resource
        kopf.on.event(r.group, r.version, r.plural, id=f"watch-{r.plural}", registry=reg)(
            _parent_handler(controller, kind.api.kind)
        )

    async def on_child(event: kopf.RawEvent, **_: Any) -> None:
        controller.child_event(event.get("type"), event["object"])

    for t in watched_children(kinds):
        kopf.on.event(t.group, t.version, t.plural, id=f"children-{t.plural}", registry=reg)(
            on_child
        )

    @kopf.on.startup(registry=reg)
    async def start(**_: Any) -> None:
        await controller.start()

    @kopf.on.cleanup(registry=reg)
    async def stop(**_: Any) -> None:
        await controller.stop()

    @kopf.on.login(registry=reg)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    return reg


def _parent_handler(controller: Controller, kind: str) -> Any:
    async def on_parent(event: kopf.RawEvent, **_: Any) -> None:
        controller.parent_event(kind, event.get("type"), event["object"])

    return on_parent


def run(settings: OperatorSettings) -> None:
    # kopf logs every handled watch event at INFO; ours say what changed.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # One connection per worker thread: urllib3's default pool of 4 would throttle them.
    api = load_client(pool_size=settings.workers)
    kinds = registry(cluster_config(settings, api_server_cidr(settings, api.configuration.host)))
    types = [k.resource for k in kinds] + child_types(kinds) + lookup_types(kinds) + [NAMESPACE]
    kube = KubeApi(api, types, discovery_ttl=settings.discovery_seconds)
    vault = connect_vault(settings)
    held: list[Controller] = []  # the controller, once made: it holds the policies
    reconciler = Reconciler(
        kube,
        vault,
        prober=HttpProbe(),
        judges=[compliance_judge(lambda: held[0].policies() if held else [])],
        watched=lambda kind, namespace: held[0].watched(kind, namespace) if held else None,
    )
    metrics = None
    if settings.metrics_port:
        from freehold.adapters.metrics import OperatorMetrics

        metrics = OperatorMetrics()
        metrics.serve(settings.metrics_host, settings.metrics_port)
        log.info("metrics on %s:%d/metrics", settings.metrics_host, settings.metrics_port)
    tracing = None
    if settings.otel_endpoint:
        from freehold.adapters.tracing import ReconcileTracing

        tracing = ReconcileTracing.otlp(settings.otel_endpoint)
        log.info("reconcile spans to %s", settings.otel_endpoint)
    audit = None
    if settings.audit_dir is not None:
        from freehold.adapters.audit import OperatorAudit
        from freehold_serving.audit import OtlpEventExport

        signer = vault.signer(settings.audit_signing_key) if vault is not None else None
        export = (
            OtlpEventExport(settings.otel_endpoint, "freehold-operator")
            if settings.otel_endpoint
            else None
        )
        audit = OperatorAudit.open(
            settings.audit_dir,
            signer,
            registry=metrics.registry if metrics is not None else None,
            export=export,
        )
        log.info("audit log in %s (%s)", settings.audit_dir, "signed" if signer else "unsigned")
        if signer is not None:
            import base64

            # The verifier's trust anchor, said where operators look: `freehold audit verify
            # --trusted-key` (also `vault read transit/keys/<audit_signing_key>`).
            log.info(
                "audit checkpoints signed with public key %s (Vault transit key %s)",
                base64.b64encode(signer.public_key()).decode(),
                settings.audit_signing_key,
            )
    controller = Controller(
        reconciler,
        kinds,
        workers=settings.workers,
        resync_seconds=settings.resync_seconds,
        metrics=metrics,
        tracing=tracing,
        audit=audit,
    )
    held.append(controller)
    if metrics is not None:
        metrics.track_queue(lambda: controller.queue_depth)
        metrics.track_fleet(controller.resources)
    log.info("watching %s", ", ".join(settings.namespaces) or "all namespaces")
    kopf.run(
        registry=build_registry(controller, kinds),
        settings=kopf_settings(settings, watched_children(kinds)),
        # One replica (strategy Recreate in the chart): peering would freeze equals.
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://{settings.liveness_host}:{settings.liveness_port}/healthz",
    )
