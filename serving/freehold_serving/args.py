"""The serving application's arguments: the contract between control and data plane.

The operator writes these into a KubeRay RayService `serveConfigV2` (``import_path`` +
``args``) and ``freehold up`` passes the same object locally. Both derive them from a
ModelDeployment spec with one function (``freehold.builders.serving_args``). This module
imports pydantic only, so the operator can validate what it generates.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IMPORT_PATH = "freehold_serving.app:build_app"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlamaCppConfig(Strict):
    threads: int = Field(default=2, ge=1, le=512)
    gpu_layers: int = Field(default=0, ge=-1, le=1024)
    batch_size: int = Field(default=512, ge=1, le=65536)
    flash_attention: bool = False


class VllmConfig(Strict):
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    quantization: str | None = None
    max_num_seqs: int = Field(default=256, ge=1)


class EngineConfig(Strict):
    name: Literal["llamacpp", "vllm"] = "llamacpp"
    context_length: int = Field(default=4096, ge=128)
    llamacpp: LlamaCppConfig = Field(default_factory=LlamaCppConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    gpus: int = Field(default=0, ge=0, description="GPUs per replica.")


class ModelConfig(Strict):
    uri: str = Field(description="pvc://, file://, package:// ... as in the spec.")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    served_name: str
    format: Literal["gguf", "safetensors"] = "gguf"
    models_root: str = Field(
        default="/models",
        description="Where pvc:// claims are mounted inside the serving pod.",
    )
    signature_ref: str | None = Field(default=None, description="Detached signature URI.")
    signer: str | None = Field(default=None, description="Expected signer.")


class AutoscalingConfig(Strict):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=4, ge=1)
    max_queued_requests: int = Field(default=16, ge=0)


class VaultKeySource(Strict):
    """API keys read from Vault KV v2 by the workload itself (never put in args)."""

    mount: str = "secret"
    path: str
    address: str | None = Field(default=None, description="Vault address; default VAULT_ADDR.")
    role: str | None = Field(default=None, description="Kubernetes auth role to log in with.")
    auth_mount: str = "kubernetes"
    jwt_path: str = Field(
        default="/var/run/secrets/vault/token",
        description="Projected ServiceAccount token with Vault's audience.",
    )
    refresh_seconds: float = Field(default=300.0, gt=0, description="Re-read keys this often.")


class ApiKeysConfig(Strict):
    """Where the accepted API keys come from. Exactly one source is set.

    Args are visible to anyone who can read the RayService, so they carry a
    reference to the keys, never the keys.
    """

    file: str | None = Field(default=None, description="File with one key per line (tmpfs).")
    vault: VaultKeySource | None = None


class TelemetryConfig(Strict):
    capture_content: bool = False
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    otlp_endpoint: str | None = None


class EmbeddingsConfig(Strict):
    enabled: bool = True
    model: Literal["all-minilm-l6-v2"] = "all-minilm-l6-v2"
    max_batch: int = Field(default=256, ge=1)


class ServingArgs(Strict):
    """Everything one serving application needs. Built from a ModelDeployment spec."""

    name: str
    namespace: str = "default"
    model: ModelConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    api_keys: ApiKeysConfig | None = None
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    retry_after_seconds: int = Field(default=1, ge=1)
