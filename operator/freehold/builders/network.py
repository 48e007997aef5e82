"""NetworkPolicies: deny everything for the workload, then allow exactly what it needs.

Ray's own traffic between head and workers must be allowed explicitly, or Serve apps
never start under default-deny (kuberay#3467); so must KubeRay's operator reaching the
head's dashboard, through which it deploys and watches Serve.
"""

from __future__ import annotations

from typing import Any

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.model_workload import (
    EVALUATES_LABEL,
    MEMORY_STORE_LABEL,
    ROLE_LABEL,
    ROUTER_LABEL,
    SERVE_PORT,
    BuildContext,
    fetched_adapters,
    fetched_scheme,
    metadata,
    selector,
)

KUBERAY_OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}
KUBERAY_DASHBOARD_PORTS = [{"protocol": "TCP", "port": 8265}, {"protocol": "TCP", "port": 52365}]


def scrape_ingress(ctx: BuildContext) -> list[dict[str, Any]]:
    """Prometheus' namespace may reach the serving port (where /metrics is), when the
    platform team named one; nothing is opened otherwise."""
    if not ctx.prometheus_namespace:
        return []
    return [
        {
            "from": [_ns(ctx.prometheus_namespace)],
            "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
        }
    ]


def _ns(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def dns_egress(ctx: BuildContext) -> dict[str, Any]:
    """Name resolution, the one egress every workload has: the cluster DNS pods, plus the
    addresses of a DNS that has no pod to select (host network, node-local cache)."""
    peers: list[dict[str, Any]] = [
        {**_ns(ctx.dns_namespace), "podSelector": {"matchLabels": dict(ctx.dns_pod_labels)}}
    ]
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in ctx.dns_cidrs]
    ports = [{"protocol": p, "port": port} for port in ctx.dns_ports for p in ("UDP", "TCP")]
    return {"to": peers, "ports": ports}


def fetch_ports(spec: ModelDeploymentSpec) -> list[int]:
    """Ports of the registries or stores the init container fetches from."""
    from urllib.parse import urlparse

    ports: list[int] = []
    uris = []
    if fetched_scheme(spec) is not None:
        uris.append(spec.model.s3.endpoint if spec.model.s3 else spec.model.uri)
    uris += [a.uri for a in fetched_adapters(spec)]  # oci:// only
    for signature in [spec.model.signature, *(a.signature for a in spec.adapters)]:
        if signature is not None and signature.ref.startswith("oci://"):
            uris.append(signature.ref)
        elif signature is not None and signature.ref.startswith("s3://") and spec.model.s3:
            uris.append(spec.model.s3.endpoint)
    for uri in uris:
        source = urlparse(uri)
        port = source.port or (80 if source.scheme == "http" else 443)
        if port not in ports:
            ports.append(port)
    return ports


def build_default_deny(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, f"{ctx.name}-default-deny"),
        "spec": {
            "podSelector": {"matchLabels": selector(ctx)},
            "policyTypes": ["Ingress", "Egress"],
        },
    }


def _callers(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    if not spec.network.allow_from:
        return [{"podSelector": {}}]  # this namespace only
    peers = []
    for peer in spec.network.allow_from:
        entry: dict[str, Any] = {}
        if peer.namespace_selector is not None:
            entry["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector)}
        # An empty selector is `{}`: the API server drops an empty matchLabels, and what
        # it stores must equal what we apply, or every apply would write again.
        entry["podSelector"] = {"matchLabels": dict(peer.pod_selector)} if peer.pod_selector else {}
        peers.append(entry)
    return peers


def governed_callers(ctx: BuildContext) -> list[dict[str, Any]]:
    """Who may call a model that budgeted routers govern: those routers' pods, the EvalJobs
    that evaluate it and this namespace's MemoryStores (Freehold's own callers, whose
    requests are not a tenant's to budget). Anyone else would skip the budgets."""
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": {ROUTER_LABEL: name}}} for name in ctx.governing_routers
    ]
    peers.append({"podSelector": {"matchLabels": {EVALUATES_LABEL: ctx.name}}})
    peers.append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "freehold-memory"}}})
    return peers


def build_allow(spec: ModelDeploymentSpec, ctx: BuildContext, *, ray: bool) -> dict[str, Any]:
    own = {"podSelector": {"matchLabels": selector(ctx)}}
    governed = bool(ctx.governing_routers) and not spec.network.direct_access
    callers = governed_callers(ctx) if governed else _callers(spec)
    ingress: list[dict[str, Any]] = [
        {"from": callers, "ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
        *scrape_ingress(ctx),
    ]
    egress: list[dict[str, Any]] = [dns_egress(ctx)]
    # The fetch-model init container pulls from the registry or store (the model, its
    # adapters, signatures kept there). A NetworkPolicy cannot name a host: its port, any address.
    for port in fetch_ports(spec):
        egress.append({"ports": [{"protocol": "TCP", "port": port}]})
    if ray:
        # Ray-internal: head and workers talk on many ports (GCS, object store, ...).
        ingress.append({"from": [own]})
        egress.append({"to": [own]})
        # Only KubeRay's operator pods (the label its chart sets), not its whole namespace.
        kuberay = {**_ns(ctx.kuberay_namespace), "podSelector": {"matchLabels": KUBERAY_OPERATOR}}
        ingress.append({"from": [kuberay], "ports": KUBERAY_DASHBOARD_PORTS})
    if ctx.vault_address:
        egress.append(
            {
                "to": [_ns(ctx.vault_namespace)],
                "ports": [{"protocol": "TCP", "port": ctx.vault_port}],
            }
        )
    for ref in spec.memory.store_refs if spec.memory is not None else []:
        # Memory in chat: the server searches these stores.
        egress.append(
            {
                "to": [{"podSelector": {"matchLabels": {MEMORY_STORE_LABEL: ref.name}}}],
                "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
            }
        )
    if ctx.otel_namespace:
        egress.append(
            {
                "to": [_ns(ctx.otel_namespace)],
                "ports": [{"protocol": "TCP", "port": 4317}, {"protocol": "TCP", "port": 4318}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, f"{ctx.name}-allow"),
        "spec": {
            "podSelector": {"matchLabels": selector(ctx)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def build_autoscaler_egress(ctx: BuildContext) -> dict[str, Any]:
    """The Ray autoscaler (in the head pod) scales workers through the API server."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, f"{ctx.name}-autoscaler"),
        "spec": {
            "podSelector": {"matchLabels": {**selector(ctx), ROLE_LABEL: "head"}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": ctx.api_server_cidr}}],
                    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
                }
            ],
        },
    }
