"""MemoryStore -> a StatefulSet (sqlite: one replica, SQLite has one writer) with its
volume, or a Deployment of two or more replicas and a PodDisruptionBudget (postgres: the
rows are in an existing PostgreSQL); a Service, a ServiceAccount without an API token,
default-deny NetworkPolicies, and the Vault transit keys and role the store uses. Pure."""

from __future__ import annotations

from typing import Any

from freehold.api.memory_store import MemoryStoreSpec
from freehold.builders.memory_args import memory_args_for, transit_key_names
from freehold.builders.model_workload import (
    INSTANCE_LABEL,
    MANAGED_BY,
    MEMORY_STORE_LABEL,
    REGION_LABEL,
    SERVE_PORT,
    VAULT_CA_DIR,
    ZONE_LABEL,
    BuildContext,
    base_env,
    container_security_context,
    pod_security_context,
    vault_ca_name,
    vault_volumes,
)
from freehold.builders.network import _ns, dns_egress, scrape_ingress
from freehold.builders.postgres import (
    PG_CA_DIR,
    postgres_ca_volume,
    postgres_egress,
    postgres_vault_paths,
)
from freehold.builders.vault import VaultRole, acl_policy, role_body, vault_name
from freehold.quantity import parse_quantity
from freehold_serving.memory.args import ARGS_ENV

STORE_LABEL = MEMORY_STORE_LABEL
DATA_DIR = "/data"
HEALTH = "/v1/memory/health"
POD_IP_ENV = "FREEHOLD_POD_IP"


def labels(ctx: BuildContext) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "freehold-memory",
        "app.kubernetes.io/instance": ctx.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        STORE_LABEL: ctx.name,
    }


def selector(ctx: BuildContext) -> dict[str, str]:
    return {STORE_LABEL: ctx.name}


def _meta(ctx: BuildContext, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.namespace, "labels": labels(ctx)}


def service_account_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-memory"


def model_refs(spec: MemoryStoreSpec) -> list[str]:
    refs = []
    if spec.embedding.model_deployment_ref is not None:
        refs.append(spec.embedding.model_deployment_ref.name)
    if spec.extraction is not None:
        refs.append(spec.extraction.model_deployment_ref.name)
    return sorted(set(refs))


def model_url(ctx: BuildContext, name: str) -> str:
    return f"http://{name}.{ctx.namespace}.svc:{SERVE_PORT}/v1"


def build_vault_role(spec: MemoryStoreSpec, ctx: BuildContext) -> VaultRole:
    """Its ServiceAccount may use only this store's two transit keys (and read its API
    keys): encrypt/decrypt with one, sign with the other."""
    key, signing = transit_key_names(ctx.namespace, ctx.name, spec)
    mount = spec.encryption.transit_mount
    paths = {
        f"{mount}/encrypt/{key}": "update",
        f"{mount}/decrypt/{key}": "update",
        f"{mount}/sign/{signing}": "update",
        f"{mount}/keys/{signing}": "read",
    }
    if spec.auth.api_keys is not None:
        paths[f"{spec.auth.api_keys.mount}/data/{spec.auth.api_keys.path}"] = "read"
    pg = spec.backend.postgres if spec.backend.type == "postgres" else None
    if pg is not None:
        paths.update(postgres_vault_paths(pg))
    name = vault_name(ctx)
    return VaultRole(
        name=name,
        policy=acl_policy(paths),
        body=role_body(name, service_account_name(ctx), ctx.namespace),
        transit_mount=mount,
        transit_keys=((key, "aes256-gcm96"), (signing, "ed25519")),
    )


def _affinity(spec: MemoryStoreSpec) -> dict[str, Any] | None:
    if spec.residency is None:
        return None
    expressions: list[dict[str, Any]] = [
        {"key": REGION_LABEL, "operator": "In", "values": [spec.residency.region]}
    ]
    if spec.residency.zones:
        expressions.append(
            {"key": ZONE_LABEL, "operator": "In", "values": list(spec.residency.zones)}
        )
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def _pod(spec: MemoryStoreSpec, ctx: BuildContext) -> dict[str, Any]:
    """The store's pod template spec, the same for both backends but for /data: the SQLite
    volume, or (postgres) an emptyDir for the replica's audit log."""
    vault = ctx.vault_address is not None
    pg = spec.backend.postgres if spec.backend.type == "postgres" else None
    args = memory_args_for(
        spec,
        ctx.name,
        ctx.namespace,
        data_dir=DATA_DIR,
        model_urls={ref: (model_url(ctx, ref), None, None) for ref in model_refs(spec)},
        vault_address=ctx.vault_address,
        vault_role=vault_name(ctx) if vault else None,
        vault_ca_cert=f"{VAULT_CA_DIR}/ca.crt" if vault and ctx.vault_ca_pem else None,
        otlp_endpoint=ctx.otel_endpoint,
        postgres_ca_cert=f"{PG_CA_DIR}/ca.crt",
        # The kubelet expands $(FREEHOLD_POD_IP) (declared before the args) in the value.
        peer_address=f"$({POD_IP_ENV}):{SERVE_PORT}" if pg is not None else None,
        # Half the container's memory for search indexes: the rest is the embedder, Ray
        # and the requests in flight.
        index_budget_bytes=int(parse_quantity(spec.resources.memory)) // 2,
    )
    probe = {"httpGet": {"path": HEALTH, "port": SERVE_PORT}}
    vault_vols, vault_mounts = vault_volumes(ctx, vault_ca_name(ctx))
    mounts = [
        {"name": "data", "mountPath": DATA_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        *vault_mounts,
    ]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, *vault_vols]
    if pg is not None:
        volumes.append({"name": "data", "emptyDir": {}})
        more, more_mounts = postgres_ca_volume(pg)
        volumes += more
        mounts += more_mounts
    container = {
        "name": "memory",
        "image": ctx.serving_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["freehold", "serve", "--app", "memory"],
        "env": [
            *base_env(ctx),
            {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": ARGS_ENV, "value": args.model_dump_json()},
        ],
        "ports": [{"name": "http", "containerPort": SERVE_PORT}],
        "resources": {
            "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
            "limits": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
        },
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
    }
    pod: dict[str, Any] = {
        "serviceAccountName": service_account_name(ctx),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    affinity = _affinity(spec)
    if affinity is not None:
        pod["affinity"] = affinity
    return pod


def build_statefulset(spec: MemoryStoreSpec, ctx: BuildContext) -> dict[str, Any]:
    sqlite = spec.backend.sqlite
    assert sqlite is not None  # the CRD's CEL rule requires it for type sqlite
    claim: dict[str, Any] = {
        "metadata": {"name": "data", "labels": labels(ctx)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": sqlite.storage_size}},
        },
    }
    if sqlite.storage_class_name:
        claim["spec"]["storageClassName"] = sqlite.storage_class_name
    destroy = spec.deletion_policy == "Destroy"
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(ctx, ctx.name),
        "spec": {
            "replicas": 1,  # SQLite has one writer: never more
            "serviceName": ctx.name,
            "selector": {"matchLabels": selector(ctx)},
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            # Retain keeps the volume when the store is deleted; Destroy lets it go with
            # the StatefulSet (and the finalizer deletes the transit keys).
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Delete" if destroy else "Retain",
                "whenScaled": "Retain",
            },
            "template": {"metadata": {"labels": labels(ctx)}, "spec": _pod(spec, ctx)},
            "volumeClaimTemplates": [claim],
        },
    }


def build_deployment(spec: MemoryStoreSpec, ctx: BuildContext) -> dict[str, Any]:
    pg = spec.backend.postgres
    assert pg is not None  # the CRD's CEL rule requires it for type postgres
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ctx, ctx.name),
        "spec": {
            "replicas": pg.replicas,
            "selector": {"matchLabels": selector(ctx)},
            # Replicas share nothing but the database: one at a time is replaced, the
            # others keep answering.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1},
            },
            "template": {"metadata": {"labels": labels(ctx)}, "spec": _pod(spec, ctx)},
        },
    }


def build_pdb(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(ctx, ctx.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(ctx)}},
    }


def workload_kind(spec: MemoryStoreSpec) -> str:
    return "Deployment" if spec.backend.type == "postgres" else "StatefulSet"


def build_service(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ctx, ctx.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ctx),
            "ports": [
                {"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"}
            ],
        },
    }


def build_network(spec: MemoryStoreSpec, ctx: BuildContext) -> list[dict[str, Any]]:
    own = {"podSelector": {"matchLabels": selector(ctx)}}
    egress: list[dict[str, Any]] = [dns_egress(ctx)]
    for ref in model_refs(spec):
        egress.append(
            {
                "to": [{"podSelector": {"matchLabels": {INSTANCE_LABEL: ref}}}],
                "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
            }
        )
    if ctx.vault_address:
        egress.append(
            {
                "to": [_ns(ctx.vault_namespace)],
                "ports": [{"protocol": "TCP", "port": ctx.vault_port}],
            }
        )
    pg = spec.backend.postgres if spec.backend.type == "postgres" else None
    if pg is not None:
        # Replicas send each other the searches of the subjects they own (affinity).
        egress.append({"to": [own], "ports": [{"protocol": "TCP", "port": SERVE_PORT}]})
        egress.append(postgres_egress(pg))
    if ctx.otel_namespace:  # audit events shipped as OTLP logs
        egress.append(
            {
                "to": [_ns(ctx.otel_namespace)],
                "ports": [{"protocol": "TCP", "port": 4317}, {"protocol": "TCP", "port": 4318}],
            }
        )
    # Callers from this namespace only, as for a ModelDeployment by default; and the
    # operator, which reads the aggregate /status (record counts) for the resource's status.
    callers: list[dict[str, Any]] = [{"podSelector": {}}]
    if ctx.operator_namespace and ctx.operator_namespace != ctx.namespace:
        callers.append(
            {
                **_ns(ctx.operator_namespace),
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "freehold-operator"}},
            }
        )
    ingress = [
        {"from": callers, "ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
        *scrape_ingress(ctx),
    ]
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(ctx, f"{ctx.name}-default-deny"),
        "spec": {"podSelector": own["podSelector"], "policyTypes": ["Ingress", "Egress"]},
    }
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(ctx, f"{ctx.name}-allow"),
        "spec": {
            "podSelector": own["podSelector"],
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
    return [deny, allow]


def build_memory_children(spec: MemoryStoreSpec, ctx: BuildContext) -> list[dict[str, Any]]:
    children = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(ctx, service_account_name(ctx)),
            "automountServiceAccountToken": False,
        },
        *build_network(spec, ctx),
        *(
            [build_deployment(spec, ctx), build_pdb(ctx)]
            if spec.backend.type == "postgres"
            else [build_statefulset(spec, ctx)]
        ),
        build_service(ctx),
    ]
    if ctx.vault_ca_pem:
        children.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(ctx, vault_ca_name(ctx)),
                "data": {"ca.crt": ctx.vault_ca_pem},
            }
        )
    return children
