"""EvalJob -> a Kubernetes Job (restricted Pod Security, non-root, no API token) with its
config, a results volume, a ServiceAccount, default-deny NetworkPolicies that let it reach
only its target (and judge), and a Vault role that may only sign with the namespace's
evaluation key. Pure: the resolved target comes in as `Resolved`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from freehold.api.eval_job import EvalJobSpec, EvalKey
from freehold.builders.model_workload import (
    EVALUATES_LABEL,
    MANAGED_BY,
    SERVE_PORT,
    VAULT_CA_DIR,
    VAULT_TOKEN_DIR,
    BuildContext,
    base_env,
    container_security_context,
    pod_security_context,
    vault_volumes,
)
from freehold.builders.network import _ns, dns_egress
from freehold.builders.vault import VaultRole, acl_policy, key_in_vault, role_body
from freehold.evaluation.job import PROGRESS_PORT, RESULT_FILE, JobConfig, VaultSigner

EVAL_LABEL = "freehold.dev/eval-job"
CONFIG_KEY = "job.json"
CONFIG_DIR = "/etc/freehold"
RESULTS_DIR = "/results"
DATA_ROOT = "/data"
RESULTS_STORAGE = "256Mi"


@dataclass(frozen=True)
class Resolved:
    """Where the evaluated model is, pinned when the Job is first created."""

    endpoint: str  # base URL ending in /v1
    model: str | None
    model_digest: str | None
    target_pods: dict[str, str] | None  # pod labels of an in-cluster target, for egress
    judge_endpoint: str | None = None
    judge_model: str | None = None
    judge_pods: dict[str, str] | None = None
    baseline: dict[str, float] | None = None


# EVALUATES_LABEL is set on an evaluation's pods when it targets a ModelDeployment: the
# candidate of a promotion admits only pods with it (its own name as the value).


def job_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-eval"


def config_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-eval-config"


def results_claim(ctx: BuildContext) -> str:
    return f"{ctx.name}-results"


def ca_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-eval-vault-ca"


def artifact(ctx: BuildContext) -> str:
    return f"pvc://{results_claim(ctx)}/{RESULT_FILE}"


def signing_key_name(namespace: str) -> str:
    """One evaluation signing key per namespace: a team's results share a signer."""
    return f"freehold-{namespace}-eval-signing"


def labels(ctx: BuildContext, spec: EvalJobSpec | None = None) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "freehold-eval",
        "app.kubernetes.io/instance": ctx.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        EVAL_LABEL: ctx.name,
    }
    if spec is not None and spec.target.model_deployment_ref is not None:
        result[EVALUATES_LABEL] = spec.target.model_deployment_ref.name
    return result


def _meta(ctx: BuildContext, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.namespace, "labels": labels(ctx)}


def pvc_claims(spec: EvalJobSpec) -> list[str]:
    """Claims holding pvc:// datasets, mounted read-only at /data/CLAIM."""
    return sorted(
        {
            s.dataset.uri.removeprefix("pvc://").split("/", 1)[0]
            for s in spec.suites
            if s.dataset.uri.startswith("pvc://")
        }
    )


def job_config(spec: EvalJobSpec, ctx: BuildContext, resolved: Resolved) -> JobConfig:
    vault = None
    if ctx.vault_address:
        vault = VaultSigner(
            address=ctx.vault_address,
            role=eval_vault_name(ctx),
            key_name=signing_key_name(ctx.namespace),
            jwt_path=f"{VAULT_TOKEN_DIR}/token",
            ca_cert=f"{VAULT_CA_DIR}/ca.crt" if ctx.vault_ca_pem else None,
        )
    return JobConfig(
        name=ctx.name,
        namespace=ctx.namespace,
        spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        endpoint=resolved.endpoint,
        model=resolved.model,
        model_digest=resolved.model_digest,
        judge_endpoint=resolved.judge_endpoint,
        judge_model=resolved.judge_model,
        baseline=resolved.baseline,
        api_key=key_in_vault(spec.target.api_key),
        judge_api_key=key_in_vault(spec.judge.api_key if spec.judge else None),
        vault=vault,
        pvc_root=DATA_ROOT,
    )


def build_config_map(spec: EvalJobSpec, ctx: BuildContext, resolved: Resolved) -> dict[str, Any]:
    config = job_config(spec, ctx, resolved)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ctx, config_name(ctx)),
        "immutable": True,  # what was evaluated must not change under the Job
        "data": {CONFIG_KEY: json.dumps(config.model_dump(mode="json"), sort_keys=True)},
    }


def build_job(spec: EvalJobSpec, ctx: BuildContext) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "results", "mountPath": RESULTS_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    vols: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_name(ctx)}},
        {"name": "results", "persistentVolumeClaim": {"claimName": results_claim(ctx)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    for n, claim in enumerate(pvc_claims(spec)):
        vols.append(
            {"name": f"data-{n}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": f"data-{n}", "mountPath": f"{DATA_ROOT}/{claim}", "readOnly": True})
    if ctx.vault_address:
        more, more_mounts = vault_volumes(ctx, ca_name(ctx))
        vols += more
        mounts += more_mounts
    container = {
        "name": "eval",
        "image": ctx.serving_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "freehold",
            "eval",
            "job",
            "--config",
            f"{CONFIG_DIR}/{CONFIG_KEY}",
            "--out",
            RESULTS_DIR,
            "--listen",
            f"0.0.0.0:{PROGRESS_PORT}",
        ],
        "env": base_env(ctx),
        "ports": [{"name": "progress", "containerPort": PROGRESS_PORT}],
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": container_security_context(),
        # The outcome (a <= 4 KiB summary) reaches the operator here, with no API token.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(ctx, job_name(ctx)),
        "spec": {
            # Re-running is a new EvalJob: a failure is reported, never silently retried.
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": spec.timeout_seconds,
            "template": {
                "metadata": {"labels": labels(ctx, spec)},
                "spec": {
                    "serviceAccountName": f"{ctx.name}-eval",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "restartPolicy": "Never",
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": vols,
                },
            },
        },
    }


def _egress_to(url: str, pods: dict[str, str] | None) -> dict[str, Any]:
    """An in-cluster model: its pods on the serving port. An outside URL: its port only
    (a NetworkPolicy cannot name a host; an IP address is narrowed to that address)."""
    if pods is not None:
        return {
            "to": [{"podSelector": {"matchLabels": pods}}],
            "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
        }
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port}]}
    host = parsed.hostname or ""
    if host.replace(".", "").isdigit():
        rule["to"] = [{"ipBlock": {"cidr": f"{host}/32"}}]
    return rule


def build_network(ctx: BuildContext, resolved: Resolved) -> list[dict[str, Any]]:
    own = {"matchLabels": {EVAL_LABEL: ctx.name}}
    egress: list[dict[str, Any]] = [
        dns_egress(ctx),
        _egress_to(resolved.endpoint, resolved.target_pods),
    ]
    if resolved.judge_endpoint is not None:
        egress.append(_egress_to(resolved.judge_endpoint, resolved.judge_pods))
    if ctx.vault_address:
        egress.append(
            {
                "to": [_ns(ctx.vault_namespace)],
                "ports": [{"protocol": "TCP", "port": ctx.vault_port}],
            }
        )
    operator = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "freehold-operator"}}}
    if ctx.operator_namespace and ctx.operator_namespace != ctx.namespace:
        operator = {**_ns(ctx.operator_namespace), **operator}
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(ctx, f"{ctx.name}-eval-default-deny"),
            "spec": {"podSelector": own, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(ctx, f"{ctx.name}-eval-allow"),
            "spec": {
                "podSelector": own,
                "policyTypes": ["Ingress", "Egress"],
                # Only the operator, reading progress.
                "ingress": [
                    {"from": [operator], "ports": [{"protocol": "TCP", "port": PROGRESS_PORT}]}
                ],
                "egress": egress,
            },
        },
    ]


def build_results_claim(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(ctx, results_claim(ctx)),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": RESULTS_STORAGE}},
        },
    }


def build_service_account(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ctx, f"{ctx.name}-eval"),
        "automountServiceAccountToken": False,
    }


def build_vault_ca(ctx: BuildContext) -> dict[str, Any] | None:
    if not (ctx.vault_address and ctx.vault_ca_pem):
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ctx, ca_name(ctx)),
        "data": {"ca.crt": ctx.vault_ca_pem},
    }


def eval_vault_name(ctx: BuildContext) -> str:
    """Apart from workloads' roles (freehold.NS.NAME): object names hold no dots."""
    return f"freehold.{ctx.namespace}.evaljob.{ctx.name}"


def api_keys(spec: EvalJobSpec) -> list[EvalKey]:
    """The Vault fields holding the target's and the judge's API keys, where named."""
    found = [spec.target.api_key, spec.judge.api_key if spec.judge else None]
    return [key for key in found if key is not None]


def build_vault_role(spec: EvalJobSpec, ctx: BuildContext) -> VaultRole:
    """May sign with the namespace's evaluation key and read its public key, and read the
    secrets holding the target's and judge's API keys; nothing else."""
    key = signing_key_name(ctx.namespace)
    name = eval_vault_name(ctx)
    paths = {f"transit/sign/{key}": "update", f"transit/keys/{key}": "read"}
    paths.update({f"{k.mount}/data/{k.path}": "read" for k in api_keys(spec)})
    return VaultRole(
        name=name,
        policy=acl_policy(paths),
        body=role_body(name, f"{ctx.name}-eval", ctx.namespace),
        transit_keys=((key, "ed25519"),),
    )
