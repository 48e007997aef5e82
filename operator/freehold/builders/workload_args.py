"""The serving args a pod on the cluster gets: the shared translation, plus where the
cluster mounts models, which Vault and role the workload uses, and the OTLP endpoint."""

from __future__ import annotations

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.common import MODELS_ROOT, BuildContext
from freehold.builders.serving_args import serving_args_for
from freehold.builders.vault import vault_name
from freehold_serving.args import ServingArgs


def workload_args(spec: ModelDeploymentSpec, ctx: BuildContext) -> ServingArgs:
    args = serving_args_for(
        spec,
        ctx.name,
        ctx.namespace,
        otlp_endpoint=ctx.otel_endpoint,
        vault_address=ctx.vault_address,
        vault_role=vault_name(ctx),
    )
    return args.model_copy(
        update={"model": args.model.model_copy(update={"models_root": MODELS_ROOT})}
    )
