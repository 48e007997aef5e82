"""Pieces every child object shares: names, labels, the locked-down pod template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from freehold.api.model_deployment import Adapter, ModelDeploymentSpec
from freehold_serving.args import ServingArgs

SERVE_PORT = 8000
MANAGED_BY = "freehold-operator"
INSTANCE_LABEL = "freehold.dev/model-deployment"
MEMORY_STORE_LABEL = "freehold.dev/memory-store"
ROUTER_LABEL = "freehold.dev/model-router"
EVALUATES_LABEL = "freehold.dev/evaluates"  # an EvalJob's pods: the model they evaluate
ROLE_LABEL = "freehold.dev/role"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
VAULT_TOKEN_DIR = "/var/run/secrets/vault"
VAULT_CA_DIR = "/var/run/secrets/vault-ca"
VAULT_AUDIENCE = "vault"
MODELS_ROOT = "/models"
UID = 1000


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """The platform team's settings the builders need (from OperatorSettings)."""

    serving_image: str
    ray_version: str
    # Model pods of engine vllm (Ray Serve LLM + vLLM); None: that engine is unavailable.
    serving_vllm_image: str | None = None
    head_cpu: str = "1"
    head_memory: str = "2Gi"
    vault_address: str | None = None
    vault_namespace: str = "vault"
    vault_port: int = 8200
    # PEM of a private CA that signed Vault's certificate (read by the operator at start);
    # workloads get it as a ConfigMap. None: system CAs.
    vault_ca_pem: str | None = None
    # Where a namespace's workloads may read KV secrets: each path must start with this
    # prefix, `{namespace}` replaced. Without it, a spec could name another team's path
    # and the operator would grant it.
    vault_kv_prefix: str = "{namespace}/"
    otel_namespace: str | None = None
    otel_endpoint: str | None = None
    # Namespace of the Prometheus that scrapes workloads' /metrics (NetworkPolicy ingress).
    prometheus_namespace: str | None = None
    # Registries oci:// models may be pulled from over plain HTTP (besides loopback).
    insecure_registries: tuple[str, ...] = ()
    kuberay_namespace: str = "kuberay-system"
    # The operator's namespace: a MemoryStore admits its status probe (aggregate counts).
    operator_namespace: str | None = None
    # Where the API server is, for the Ray autoscaler's egress. No default: never 0.0.0.0/0.
    api_server_cidr: str
    # Where pods resolve names (every workload's DNS egress): the cluster DNS pods, and
    # addresses for a DNS with no pod to select (CoreDNS on the host network, a node-local
    # cache on a link-local address). Ports are the DNS server's own (policies match after
    # the Service's DNAT), e.g. 53, or 1053 for a host-network CoreDNS.
    dns_namespace: str = "kube-system"
    dns_pod_labels: tuple[tuple[str, str], ...] = (("k8s-app", "kube-dns"),)
    dns_ports: tuple[int, ...] = (53,)
    dns_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class BuildContext(ClusterConfig):
    """Everything a builder needs besides the spec. No clients, clocks or environment."""

    name: str
    namespace: str
    # ModelRouters with budgets or rate limits that target this model: the only way in.
    governing_routers: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: ClusterConfig, name: str, namespace: str) -> BuildContext:
        fields = {k: v for k, v in vars(config).items() if k in ClusterConfig.__dataclass_fields__}
        return cls(name=name, namespace=namespace, **fields)


def service_account_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-model"


def labels(ctx: BuildContext, role: str | None = None) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "freehold-model",
        "app.kubernetes.io/instance": ctx.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        INSTANCE_LABEL: ctx.name,
    }
    if role is not None:
        result[ROLE_LABEL] = role
    return result


def selector(ctx: BuildContext) -> dict[str, str]:
    return {INSTANCE_LABEL: ctx.name}


def metadata(ctx: BuildContext, name: str, role: str | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.namespace, "labels": labels(ctx, role)}


def node_affinity(spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """Required scheduling terms: pods stay Pending rather than run outside residency."""
    expressions: list[dict[str, Any]] = []
    if spec.residency is not None:
        expressions.append(
            {"key": REGION_LABEL, "operator": "In", "values": [spec.residency.region]}
        )
        if spec.residency.zones:
            expressions.append(
                {"key": ZONE_LABEL, "operator": "In", "values": list(spec.residency.zones)}
            )
    gpu = spec.resources.gpu
    if gpu is not None and gpu.count > 0 and gpu.product:
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [gpu.product]})
    if not expressions:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Pod Security Standard "restricted", plus a read-only root filesystem."""
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def model_resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits = dict(amounts)
    gpu = spec.resources.gpu
    if gpu is not None and gpu.count > 0:
        limits[gpu.resource_name] = str(gpu.count)
        amounts = {**amounts, gpu.resource_name: str(gpu.count)}
    return {"requests": amounts, "limits": limits}


def pvc_claims(spec: ModelDeploymentSpec) -> list[str]:
    """Every claim the pods read: the model's, then its LoRA adapters' (each once)."""
    uris = [spec.model.uri, *(a.uri for a in spec.adapters)]
    claims = [u.removeprefix("pvc://").split("/", 1)[0] for u in uris if u.startswith("pvc://")]
    return list(dict.fromkeys(claims))


def needs_vault(spec: ModelDeploymentSpec) -> bool:
    s3_keys = spec.model.s3 is not None and spec.model.s3.credentials is not None
    return bool(spec.secrets) or spec.auth.api_keys is not None or s3_keys


def vault_ca_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-vault-ca"


def vault_token_volume() -> dict[str, Any]:
    """A short-lived token for Vault's audience only; the pod gets no API token."""
    return {
        "name": "vault-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": VAULT_AUDIENCE,
                        "expirationSeconds": 600,
                        "path": "token",
                    }
                }
            ]
        },
    }


def vault_volumes(
    ctx: BuildContext, ca_config_map: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of a pod that logs in to Vault itself: the Vault-audience token,
    and Vault's private CA when there is one."""
    vols = [vault_token_volume()]
    mounts: list[dict[str, Any]] = [
        {"name": "vault-token", "mountPath": VAULT_TOKEN_DIR, "readOnly": True}
    ]
    if ctx.vault_ca_pem:
        vols.append({"name": "vault-ca", "configMap": {"name": ca_config_map}})
        mounts.append({"name": "vault-ca", "mountPath": VAULT_CA_DIR, "readOnly": True})
    return vols, mounts


AUDIT_DIR = "/var/lib/freehold/audit"


def volumes(
    spec: ModelDeploymentSpec, ctx: BuildContext
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of a serving container: scratch, the model claim, a Vault token
    (and Vault's private CA, when there is one)."""
    vols: list[dict[str, Any]] = [
        # Ray writes sockets and logs under /tmp; the root filesystem is read-only.
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        # Access records: the pod's copy of the chain; the OTLP export is what outlives
        # the pod (signed checkpoints in pods are planned).
        {"name": "audit", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "audit", "mountPath": AUDIT_DIR},
    ]
    # The fetch-model init container writes the digest-checked file (and a signature kept
    # in a registry or store) here; the serving container only reads them.
    fetched = fetched_volumes(spec)
    vols += [{"name": name, "emptyDir": {}} for name, _ in fetched]
    mounts += [{"name": name, "mountPath": path, "readOnly": True} for name, path in fetched]
    for n, claim in enumerate(pvc_claims(spec)):
        name = "model" if n == 0 else f"model-{n}"  # the first keeps its historic name
        vols.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{MODELS_ROOT}/{claim}", "readOnly": True})
    if needs_vault(spec):
        more, more_mounts = vault_volumes(ctx, vault_ca_name(ctx))
        vols += more
        mounts += more_mounts
    return vols, mounts


def base_env(ctx: BuildContext) -> list[dict[str, Any]]:
    env = [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        # As under `freehold up`: the app never blocks its loop, so it runs on the
        # replica's own (one thread hop less per request; see bench/serving.py).
        {"name": "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "value": "0"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if ctx.vault_address:
        env.append({"name": "VAULT_ADDR", "value": ctx.vault_address})
    return env


def tolerations(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """GPU nodes' usual taint (when GPUs are requested) and the spec's own."""
    result: list[dict[str, Any]] = []
    gpu = spec.resources.gpu
    if gpu is not None and gpu.count > 0:
        result.append({"key": gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
    result += [t.model_dump(by_alias=True, exclude_none=True) for t in spec.placement.tolerations]
    return result


def model_image(spec: ModelDeploymentSpec, ctx: BuildContext) -> str:
    """The image of the model's Ray and serving pods: the vLLM image for engine vllm (the
    kind refuses that engine when none is configured)."""
    if spec.engine.name == "vllm" and ctx.serving_vllm_image is not None:
        return ctx.serving_vllm_image
    return ctx.serving_image


FETCHED = ("oci", "s3")  # schemes an init container fetches into the pod


def fetched_scheme(spec: ModelDeploymentSpec) -> str | None:
    scheme = spec.model.uri.split("://", 1)[0]
    return scheme if scheme in FETCHED else None


def fetched_adapters(spec: ModelDeploymentSpec) -> list[Adapter]:
    """LoRA adapters the init container fetches (oci://, s3://)."""
    return [a for a in spec.adapters if a.uri.split("://", 1)[0] in FETCHED]


def _fetched_signatures(spec: ModelDeploymentSpec) -> list[str]:
    refs = [spec.model.signature, *(a.signature for a in spec.adapters)]
    return [s.ref for s in refs if s is not None and s.ref.split("://", 1)[0] in FETCHED]


def signature_fetched(spec: ModelDeploymentSpec) -> bool:
    return bool(_fetched_signatures(spec))


def fetched_volumes(spec: ModelDeploymentSpec) -> list[tuple[str, str]]:
    """(volume, mount path) of what the init container fetches: models and adapters under
    MODELS_ROOT/SCHEME, signatures under MODELS_ROOT/signatures (the paths
    freehold_serving.model_files reads). The root filesystem is read-only."""
    schemes: list[str] = []
    for uri in [spec.model.uri, *(a.uri for a in fetched_adapters(spec))]:
        scheme = uri.split("://", 1)[0]
        if scheme in FETCHED and scheme not in schemes:
            schemes.append(scheme)
    # The first keeps its historic name.
    found = [
        ("model-fetched" if n == 0 else f"model-fetched-{scheme}", f"{MODELS_ROOT}/{scheme}")
        for n, scheme in enumerate(schemes)
    ]
    if signature_fetched(spec):
        found.append(("signature-fetched", f"{MODELS_ROOT}/signatures"))
    return found


def fetch_init_containers(
    spec: ModelDeploymentSpec, ctx: BuildContext, args: ServingArgs
) -> list[dict[str, Any]]:
    """An oci:// or s3:// model (and oci:// or s3:// LoRA adapters) are fetched by an init
    container of the serving image into the pod's volumes, and kept only if their sha256
    matches; the serving container starts after it and verifies again before loading. A
    store's access key is read from Vault by the init container itself (the model's JSON
    names where; never the key)."""
    fetched = fetched_volumes(spec)
    if not fetched:
        return []
    adapters = {a.name for a in fetched_adapters(spec)}
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "FREEHOLD_MODEL", "value": args.model.model_dump_json()},
    ]
    if adapters:
        listed = [a.model_dump(mode="json") for a in args.adapters if a.served_name in adapters]
        env.append({"name": "FREEHOLD_ADAPTERS", "value": json.dumps(listed)})
    if ctx.insecure_registries:
        insecure = ",".join(ctx.insecure_registries)
        env.append({"name": "FREEHOLD_INSECURE_REGISTRIES", "value": insecure})
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        *({"name": name, "mountPath": path} for name, path in fetched),
    ]
    if spec.model.s3 is not None and spec.model.s3.credentials is not None:
        mounts += vault_volumes(ctx, vault_ca_name(ctx))[1]
    return [
        {
            "name": "fetch-model",
            "image": ctx.serving_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["freehold", "model", "fetch", "--from-env"],
            "env": env,
            "resources": {
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"},
            },
            "securityContext": container_security_context(),
            "volumeMounts": mounts,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    ]


def pod_spec(
    spec: ModelDeploymentSpec,
    ctx: BuildContext,
    containers: list[dict[str, Any]],
    vols: list[dict[str, Any]],
    *,
    service_account: str | None,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": containers,
        "volumes": vols,
        "enableServiceLinks": False,
    }
    if init_containers:
        result["initContainers"] = init_containers
    if service_account is not None:
        result["serviceAccountName"] = service_account
    affinity = node_affinity(spec)
    if affinity is not None:
        result["affinity"] = affinity
    tol = tolerations(spec)
    if tol:
        result["tolerations"] = tol
    if spec.placement.node_selector:
        result["nodeSelector"] = dict(spec.placement.node_selector)
    return result
