"""ModelDeployment -> Deployment + Service, when KubeRay is not installed.

Each pod runs a single-node Ray with the same serving application and args as the
RayService path; replicas are pods, so scaling is the Deployment's (no scale to zero).
"""

from __future__ import annotations

from typing import Any

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.model_workload import (
    SERVE_PORT,
    BuildContext,
    base_env,
    container_security_context,
    fetch_init_containers,
    labels,
    metadata,
    model_image,
    model_resources,
    pod_spec,
    selector,
    service_account_name,
    volumes,
)
from freehold.builders.serving_args import workload_args

ARGS_ENV = "FREEHOLD_SERVING_ARGS"


def deployment_replicas(spec: ModelDeploymentSpec) -> int:
    # A plain Deployment cannot wake from zero on a request: keep one replica.
    return max(spec.scaling.min_replicas, 1)


def build_deployment(spec: ModelDeploymentSpec, ctx: BuildContext) -> dict[str, Any]:
    vols, mounts = volumes(spec, ctx)
    args = workload_args(spec, ctx)
    # One model replica per pod, sized by the pod's resources: scaling is the
    # Deployment's job. (Ray Serve autoscaling inside a pod would start maxReplicas
    # engines in a pod sized for one, and the pod would be OOM-killed.)
    one = args.autoscaling.model_copy(update={"min_replicas": 1, "max_replicas": 1})
    args = args.model_copy(update={"autoscaling": one})
    probe = {"httpGet": {"path": "/health", "port": SERVE_PORT}}
    container = {
        "name": "serving",
        "image": model_image(spec, ctx),
        "imagePullPolicy": "IfNotPresent",
        "command": ["freehold", "serve"],
        "env": [*base_env(ctx), {"name": ARGS_ENV, "value": args.model_dump_json()}],
        "ports": [{"name": "http", "containerPort": SERVE_PORT}],
        "resources": model_resources(spec),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        # Verifying and loading a model can take minutes on a cold node.
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
    }
    gpu = spec.resources.gpu is not None and spec.resources.gpu.count > 0
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, ctx.name, "model"),
        "spec": {
            "replicas": deployment_replicas(spec),
            "selector": {"matchLabels": selector(ctx)},
            # GPUs are scarce: replace pods in place instead of surging (kuberay#1476).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0 if gpu else 1, "maxUnavailable": 1 if gpu else 0},
            },
            "template": {
                "metadata": {"labels": labels(ctx, "model")},
                "spec": pod_spec(
                    spec,
                    ctx,
                    [container],
                    vols,
                    service_account=service_account_name(ctx),
                    init_containers=fetch_init_containers(spec, ctx, args),
                ),
            },
        },
    }


def build_service(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, ctx.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ctx),
            "ports": [
                {"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"}
            ],
        },
    }
