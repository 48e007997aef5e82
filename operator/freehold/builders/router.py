"""ModelRouter -> its serving app (a Deployment running the router on a single-node Ray,
as a ModelDeployment without KubeRay), a Service, a ServiceAccount without an API token,
default-deny NetworkPolicies that let it reach only its targets, and, when it reads keys
from Vault, a role for exactly those paths. Pure: targets come resolved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from freehold.api.model_router import ModelRouterSpec
from freehold.builders.memory_args import connection_args
from freehold.builders.model_workload import (
    AUDIT_DIR,
    INSTANCE_LABEL,
    MANAGED_BY,
    ROUTER_LABEL,
    SERVE_PORT,
    VAULT_CA_DIR,
    BuildContext,
    base_env,
    container_security_context,
    pod_security_context,
    vault_volumes,
)
from freehold.builders.network import _ns, dns_egress, scrape_ingress
from freehold.builders.postgres import (
    PG_CA_DIR,
    postgres_ca_volume,
    postgres_egress,
    postgres_vault_paths,
)
from freehold.builders.serving_args import api_keys_config
from freehold.builders.vault import VaultRole, acl_policy, key_in_vault, role_body
from freehold_serving.args import AuditConfig, TelemetryConfig
from freehold_serving.router.args import (
    ARGS_ENV,
    BudgetConfig,
    ExternalConfig,
    FallbackConfig,
    RateLimitConfig,
    RouterArgs,
    TargetConfig,
)


@dataclass(frozen=True)
class ResolvedTarget:
    """A ModelDeployment target as it is now (None fields: not found / not serving)."""

    name: str
    url: str | None
    model: str | None
    admitted: bool


def labels(ctx: BuildContext) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "freehold-router",
        "app.kubernetes.io/instance": ctx.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        ROUTER_LABEL: ctx.name,
    }


def _meta(ctx: BuildContext, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.namespace, "labels": labels(ctx)}


def service_account_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-router"


def router_vault_name(ctx: BuildContext) -> str:
    return f"freehold.{ctx.namespace}.router.{ctx.name}"


def needs_vault(spec: ModelRouterSpec) -> bool:
    return (
        spec.auth.api_keys is not None
        or spec.state.postgres is not None  # its credentials
        or any(t.external is not None and t.external.api_key is not None for t in spec.targets)
        or any(t.api_key is not None for t in spec.targets)  # its own keys for its targets
    )


def router_args(
    spec: ModelRouterSpec, ctx: BuildContext, resolved: dict[str, ResolvedTarget]
) -> RouterArgs:
    vault = ctx.vault_address if needs_vault(spec) else None
    role = router_vault_name(ctx) if vault else None
    ca = f"{VAULT_CA_DIR}/ca.crt" if vault and ctx.vault_ca_pem else None
    targets = []
    for t in spec.targets:
        common: dict[str, Any] = {
            "name": t.name,
            "weight": t.weight,
            "priority": t.priority,
            "cost_input": t.cost.input,
            "cost_output": t.cost.output,
            "context_limit": t.context_limit,
            "capabilities": list(t.capabilities),
        }
        if t.external is not None:
            ext = t.external
            key = ext.api_key
            targets.append(
                TargetConfig(
                    **common,
                    external=ExternalConfig(
                        provider=ext.provider,
                        model=ext.model,
                        base_url=ext.base_url,
                        vault_mount=key.mount if key else None,
                        vault_path=key.path if key else None,
                        vault_key=key.key if key else "api_key",
                    ),
                    admitted=spec.allow_external,
                )
            )
            continue
        found = resolved.get(t.name)
        targets.append(
            TargetConfig(
                **common,
                url=found.url if found else None,
                model=found.model if found else None,
                admitted=bool(found and found.admitted and found.url),
                api_key_vault=key_in_vault(t.api_key),
            )
        )
    return RouterArgs(
        name=ctx.name,
        namespace=ctx.namespace,
        served_name=spec.served_name,
        targets=targets,
        strategy=spec.strategy,
        fallback=FallbackConfig(
            on=list(spec.fallback.when),
            timeout_seconds=spec.fallback.timeout_seconds,
            cooldown_seconds=spec.fallback.cooldown_seconds,
            max_attempts=spec.fallback.max_attempts,
        ),
        budgets=[
            BudgetConfig(tenant=b.tenant, tokens=b.tokens, cost=b.cost, period=b.period)
            for b in spec.budgets
        ],
        rate_limits=[
            RateLimitConfig(
                tenant=r.tenant,
                requests_per_minute=r.requests_per_minute,
                tokens_per_minute=r.tokens_per_minute,
                key_requests_per_minute=r.per_key.requests_per_minute if r.per_key else None,
                key_tokens_per_minute=r.per_key.tokens_per_minute if r.per_key else None,
            )
            for r in spec.rate_limits
        ],
        api_keys=api_keys_config(
            spec.auth, file=None, vault_address=vault, vault_role=role, vault_ca_cert=ca
        ),
        vault_address=vault,
        vault_role=role,
        vault_ca_cert=ca,
        replicas=spec.replicas,
        # Access records at the router (the caller's key id and tenant): the pod's copy of
        # the chain, shipped over OTLP when a collector is set, as a model's.
        audit=AuditConfig(directory=AUDIT_DIR),
        telemetry=TelemetryConfig(otlp_endpoint=ctx.otel_endpoint),
        state_postgres=(
            connection_args(spec.state.postgres, ctx.name, f"{PG_CA_DIR}/ca.crt")
            if spec.state.postgres is not None
            else None
        ),
    )


def build_deployment(spec: ModelRouterSpec, ctx: BuildContext, args: RouterArgs) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/health", "port": SERVE_PORT}}
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "audit", "mountPath": AUDIT_DIR},
    ]
    vols: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "audit", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    if needs_vault(spec) and ctx.vault_address:
        more, more_mounts = vault_volumes(ctx, f"{ctx.name}-router-vault-ca")
        vols += more
        mounts += more_mounts
    pg = spec.state.postgres
    if pg is not None:
        more, more_mounts = postgres_ca_volume(pg)
        vols += more
        mounts += more_mounts
    container = {
        "name": "router",
        "image": ctx.serving_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["freehold", "serve", "--app", "router"],
        "env": [*base_env(ctx), {"name": ARGS_ENV, "value": args.model_dump_json()}],
        "ports": [{"name": "http", "containerPort": SERVE_PORT}],
        "resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "2Gi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ctx, ctx.name),
        "spec": {
            # Without state.postgres budgets are counted in the router's memory: one
            # replica (the CRD refuses more), replaced, not overlapped, on a change.
            "replicas": spec.replicas,
            "selector": {"matchLabels": {ROUTER_LABEL: ctx.name}},
            "strategy": (
                {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
                if spec.state.postgres is not None
                else {"type": "Recreate"}
            ),
            "template": {
                "metadata": {"labels": labels(ctx)},
                "spec": {
                    "serviceAccountName": service_account_name(ctx),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": vols,
                },
            },
        },
    }


def build_service(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ctx, ctx.name),
        "spec": {
            "type": "ClusterIP",
            "selector": {ROUTER_LABEL: ctx.name},
            "ports": [
                {"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"}
            ],
        },
    }


def build_network(spec: ModelRouterSpec, ctx: BuildContext) -> list[dict[str, Any]]:
    own = {"matchLabels": {ROUTER_LABEL: ctx.name}}
    egress: list[dict[str, Any]] = [dns_egress(ctx)]
    for t in spec.targets:
        if t.model_deployment_ref is not None:
            egress.append(
                {
                    "to": [
                        {
                            "podSelector": {
                                "matchLabels": {INSTANCE_LABEL: t.model_deployment_ref.name}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
                }
            )
        elif t.external is not None and spec.allow_external:
            # A NetworkPolicy cannot name a host: the provider's port, any address.
            url = urlparse(t.external.base_url or "https://provider.invalid")
            port = url.port or (443 if url.scheme == "https" else 80)
            egress.append({"ports": [{"protocol": "TCP", "port": port}]})
    if needs_vault(spec) and ctx.vault_address:
        egress.append(
            {
                "to": [_ns(ctx.vault_namespace)],
                "ports": [{"protocol": "TCP", "port": ctx.vault_port}],
            }
        )
    if spec.state.postgres is not None:
        egress.append(postgres_egress(spec.state.postgres))
    if ctx.otel_namespace:  # access records shipped as OTLP logs
        egress.append(
            {
                "to": [_ns(ctx.otel_namespace)],
                "ports": [{"protocol": "TCP", "port": 4317}, {"protocol": "TCP", "port": 4318}],
            }
        )
    callers: list[dict[str, Any]] = []
    for peer in spec.network.allow_from:
        entry: dict[str, Any] = {}
        if peer.namespace_selector is not None:
            entry["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector)}
        entry["podSelector"] = {"matchLabels": dict(peer.pod_selector or {})}
        callers.append(entry)
    if not callers:
        callers.append({"podSelector": {}})
    if ctx.operator_namespace and ctx.operator_namespace != ctx.namespace:
        callers.append(
            {
                **_ns(ctx.operator_namespace),
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "freehold-operator"}},
            }
        )
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(ctx, f"{ctx.name}-router-default-deny"),
            "spec": {"podSelector": own, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(ctx, f"{ctx.name}-router-allow"),
            "spec": {
                "podSelector": own,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": callers, "ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
                    *scrape_ingress(ctx),
                ],
                "egress": egress,
            },
        },
    ]


def build_vault_role(spec: ModelRouterSpec, ctx: BuildContext) -> VaultRole:
    paths = {}
    if spec.auth.api_keys is not None:
        paths[f"{spec.auth.api_keys.mount}/data/{spec.auth.api_keys.path}"] = "read"
    for t in spec.targets:
        if t.external is not None and t.external.api_key is not None:
            paths[f"{t.external.api_key.mount}/data/{t.external.api_key.path}"] = "read"
        if t.api_key is not None:
            paths[f"{t.api_key.mount}/data/{t.api_key.path}"] = "read"
    if spec.state.postgres is not None:
        paths.update(postgres_vault_paths(spec.state.postgres))
    name = router_vault_name(ctx)
    return VaultRole(
        name=name,
        policy=acl_policy(paths),
        body=role_body(name, service_account_name(ctx), ctx.namespace),
    )


def build_router_children(
    spec: ModelRouterSpec, ctx: BuildContext, args: RouterArgs
) -> list[dict[str, Any]]:
    children: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(ctx, service_account_name(ctx)),
            "automountServiceAccountToken": False,
        },
        build_service(ctx),
        *build_network(spec, ctx),
    ]
    if needs_vault(spec) and ctx.vault_address and ctx.vault_ca_pem:
        children.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(ctx, f"{ctx.name}-router-vault-ca"),
                "data": {"ca.crt": ctx.vault_ca_pem},
            }
        )
    children.append(build_deployment(spec, ctx, args))
    return children
