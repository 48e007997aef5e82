"""ModelDeployment -> KubeRay RayService (ray.io/v1), with the serving args in serveConfigV2."""

from __future__ import annotations

from typing import Any

import yaml

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
    service_account_name,
    volumes,
)
from freehold.builders.serving_args import workload_args
from freehold.quantity import whole_cpus
from freehold_serving.args import IMPORT_PATH

HEAD_PORTS = [
    {"name": "gcs", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
    {"name": "serve", "containerPort": SERVE_PORT},
]


SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def serve_config(spec: ModelDeploymentSpec, ctx: BuildContext) -> str:
    """serveConfigV2: one application, built by our typed app builder from the args."""
    args = workload_args(spec, ctx)
    config = {
        "applications": [
            {
                "name": ctx.name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": args.model_dump(mode="json"),
            }
        ]
    }
    # libyaml's emitter (4x faster than PyYAML's own, the same text: tests/unit/test_builders).
    return yaml.dump(config, Dumper=SAFE_DUMPER, sort_keys=True)


def _container(
    name: str,
    image: str,
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
    env: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "env": env,
    }
    if ports:
        container["ports"] = ports
    return container


def build_rayservice(spec: ModelDeploymentSpec, ctx: BuildContext) -> dict[str, Any]:
    vols, mounts = volumes(spec, ctx)
    env = base_env(ctx)
    fetch = fetch_init_containers(spec, ctx, workload_args(spec, ctx))
    head_resources = {
        "requests": {"cpu": ctx.head_cpu, "memory": ctx.head_memory},
        "limits": {"cpu": ctx.head_cpu, "memory": ctx.head_memory},
    }
    head_vols = [v for v in vols if v["name"] in {"tmp", "shm"}]
    head_mounts = [m for m in mounts if m["name"] in {"tmp", "shm"}]
    # The head builds the Serve application too (Ray Serve LLM for engine vllm): same image.
    image = model_image(spec, ctx)
    head = _container("ray-head", image, head_resources, head_mounts, env, HEAD_PORTS)
    worker = _container("ray-worker", image, model_resources(spec), mounts, env)
    scale = spec.scaling
    gpus = spec.resources.gpu.count if spec.resources.gpu else 0
    worker_start: dict[str, str] = {"num-cpus": str(whole_cpus(spec.resources.cpu))}
    if gpus:
        worker_start["num-gpus"] = str(gpus)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata(ctx, ctx.name),
        "spec": {
            "serveConfigV2": serve_config(spec, ctx),
            "rayClusterConfig": {
                "rayVersion": ctx.ray_version,
                "enableInTreeAutoscaling": scale.max_replicas > scale.min_replicas,
                "headGroupSpec": {
                    # The head runs Ray's control plane and HTTP proxy, never a model.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {
                        "metadata": {"labels": labels(ctx, "head")},
                        "spec": pod_spec(spec, ctx, [head], head_vols, service_account=None),
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "model",
                        "replicas": scale.min_replicas,
                        "minReplicas": scale.min_replicas,
                        "maxReplicas": scale.max_replicas,
                        "rayStartParams": worker_start,
                        "template": {
                            "metadata": {"labels": labels(ctx, "model")},
                            "spec": pod_spec(
                                spec,
                                ctx,
                                [worker],
                                vols,
                                service_account=service_account_name(ctx),
                                init_containers=fetch,
                            ),
                        },
                    }
                ],
            },
        },
    }


def serve_service_name(ctx: BuildContext) -> str:
    """The Service KubeRay creates in front of the Serve proxies."""
    return f"{ctx.name}-serve-svc"
