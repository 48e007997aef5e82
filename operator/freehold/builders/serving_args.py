"""ModelDeployment spec -> serving application args: the one translation both the
operator (RayService serveConfigV2) and `freehold up` use."""

from __future__ import annotations

import math
import re

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold_serving.args import (
    ApiKeysConfig,
    AutoscalingConfig,
    EngineConfig,
    LlamaCppConfig,
    ModelConfig,
    ServingArgs,
    TelemetryConfig,
    VaultKeySource,
    VllmConfig,
)

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")


def cpu_count(quantity: str) -> float:
    """CPUs in a Kubernetes quantity ('2', '500m', '1.5')."""
    match = _CPU.match(quantity)
    if match is None:
        raise ValueError(f"cannot read CPU quantity {quantity!r}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def serving_args_for(
    spec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    *,
    otlp_endpoint: str | None = None,
    api_keys_file: str | None = None,
    vault_address: str | None = None,
    vault_role: str | None = None,
) -> ServingArgs:
    """The serving args of a ModelDeployment.

    `api_keys_file` overrides where keys are read (local mode reads a file; on a
    cluster the workload reads the spec's Vault path itself).
    """
    engine = spec.engine
    cpus = cpu_count(spec.resources.cpu)
    llama = engine.llamacpp
    threads = llama.threads if llama and llama.threads else max(1, math.floor(cpus))
    gpus = spec.resources.gpu.count if spec.resources.gpu else 0
    vllm = engine.vllm
    api_keys = None
    if api_keys_file is not None:
        api_keys = ApiKeysConfig(file=api_keys_file)
    elif spec.auth.api_keys is not None:
        keys = spec.auth.api_keys
        api_keys = ApiKeysConfig(
            vault=VaultKeySource(
                mount=keys.mount, path=keys.path, address=vault_address, role=vault_role
            )
        )
    return ServingArgs(
        name=name,
        namespace=namespace,
        model=ModelConfig(
            uri=spec.model.uri,
            sha256=spec.model.sha256,
            served_name=spec.model.served_name or name,
            format=spec.model.format,
            signature_ref=spec.model.signature.ref if spec.model.signature else None,
            signer=spec.model.signature.signer if spec.model.signature else None,
        ),
        engine=EngineConfig(
            name=engine.name,
            context_length=engine.context_length,
            gpus=gpus,
            llamacpp=LlamaCppConfig(
                threads=threads,
                gpu_layers=llama.gpu_layers if llama else 0,
                batch_size=llama.batch_size if llama else 512,
                flash_attention=llama.flash_attention if llama else False,
            ),
            vllm=VllmConfig(
                tensor_parallel_size=vllm.tensor_parallel_size if vllm else 1,
                gpu_memory_utilization=vllm.gpu_memory_utilization if vllm else 0.9,
                dtype=vllm.dtype if vllm else "auto",
                quantization=vllm.quantization if vllm else None,
                max_num_seqs=vllm.max_num_seqs if vllm else 256,
            ),
        ),
        autoscaling=AutoscalingConfig(
            min_replicas=spec.scaling.min_replicas,
            max_replicas=spec.scaling.max_replicas,
            target_ongoing_requests=spec.scaling.target_ongoing_requests,
            max_ongoing_requests=spec.scaling.max_ongoing_requests,
            max_queued_requests=spec.scaling.max_queued_requests,
        ),
        api_keys=api_keys,
        telemetry=TelemetryConfig(
            capture_content=spec.telemetry.capture_content,
            trace_sample_ratio=spec.telemetry.trace_sample_ratio,
            otlp_endpoint=otlp_endpoint,
        ),
    )
