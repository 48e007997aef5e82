"""The serving application's arguments: the contract between control and data plane.

The operator writes these into a KubeRay RayService `serveConfigV2` (``import_path`` +
``args``) and ``freehold up`` passes the same object locally. Both derive them from a
ModelDeployment spec with one function (``freehold.builders.serving_args``). This module
imports pydantic only, so the operator can validate what it generates.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

IMPORT_PATH = "freehold_serving.app:build_app"

# Engine settings, defined once. The API (freehold.api.model_deployment) uses these types
# and takes its defaults from the configs below; tests/unit/test_serving_args.py checks
# that the two cannot drift.
Threads = Annotated[int, Field(ge=1, le=512)]
GpuLayers = Annotated[int, Field(ge=-1, le=1024)]
BatchSize = Annotated[int, Field(ge=1, le=65536)]
TensorParallelSize = Annotated[int, Field(ge=1, le=64)]
GpuMemoryUtilization = Annotated[float, Field(ge=0.05, le=1.0)]
Dtype = Literal["auto", "float16", "bfloat16", "float32"]
Quantization = Literal["awq", "gptq", "fp8", "gguf", "bitsandbytes"]
MaxNumSeqs = Annotated[int, Field(ge=1, le=4096)]
PipelineParallelSize = Annotated[int, Field(ge=1, le=64)]
CpuKvCacheGib = Annotated[int, Field(ge=1, le=1024)]
KvBlockSize = Literal[16, 32, 64, 128]
RequestRouter = Literal["prefix-aware", "power-of-two"]
LoraRank = Literal[8, 16, 32, 64, 128, 256]
ContextLength = Annotated[int, Field(ge=128, le=1048576)]
PromptCacheMib = Annotated[int, Field(ge=0, le=65536)]
Parallel = Annotated[int, Field(ge=1, le=64)]


def serving_runtime_env() -> dict[str, Any]:
    """Runtime env of a Ray Serve worker that answers requests: Ray starts workers at nice
    15 so they cannot starve its daemons, and at nice 15 any busy process on the same cores
    (a model's engine, running at nice 0) takes them from a process every request waits
    on. A fresh dict each call: Ray Serve LLM adds to the one it is given."""
    return {"env_vars": {"RAY_worker_niceness": "0"}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlamaCppConfig(Strict):
    threads: Threads = 2
    gpu_layers: GpuLayers = 0
    batch_size: BatchSize = 512
    flash_attention: bool = False
    prompt_cache_mib: PromptCacheMib = 128
    parallel: Parallel = 1
    request_router: RequestRouter = "prefix-aware"


class VllmConfig(Strict):
    tensor_parallel_size: TensorParallelSize = 1
    pipeline_parallel_size: PipelineParallelSize = 1
    gpu_memory_utilization: GpuMemoryUtilization = 0.9
    dtype: Dtype = "auto"
    quantization: Quantization | None = None
    max_num_seqs: MaxNumSeqs = 256
    max_lora_rank: LoraRank = 16
    # None: eager on CPU (torch.compile there costs a minute of start for ~15% speed),
    # compiled with CUDA graphs on GPU.
    enforce_eager: bool | None = None
    cpu_kv_cache_gib: CpuKvCacheGib = 2
    # None: vLLM's own choice (16 tokens on GPU, 128 on CPU).
    block_size: KvBlockSize | None = None
    request_router: RequestRouter = "prefix-aware"


class EngineConfig(Strict):
    name: Literal["llamacpp", "vllm"] = "llamacpp"
    context_length: ContextLength = 4096
    llamacpp: LlamaCppConfig = Field(default_factory=LlamaCppConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    gpus: int = Field(default=0, ge=0, description="GPUs per replica.")


class SignatureConfig(Strict):
    """A model-signing (OpenSSF) signature and whom to trust: a public key, or a
    certificate chain plus the signing certificate's identity."""

    ref: str = Field(description="Where the signature bundle is (URI schemes as the model).")
    public_key: str | None = Field(default=None, description="PEM public key (EC).")
    certificate_chain: list[str] = Field(
        default_factory=list, description="PEM certificates the signing certificate chains to."
    )
    identity: str | None = Field(
        default=None, description="Required subject alternative name of the signing certificate."
    )


class S3Config(Strict):
    endpoint: str
    region: str = "us-east-1"
    credentials: VaultKeySource | None = Field(
        default=None, description="Vault KV secret with accessKey and secretKey."
    )


class ModelConfig(Strict):
    uri: str = Field(description="pvc://, file://, package:// ... as in the spec.")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    served_name: str
    format: Literal["gguf", "safetensors"] = "gguf"
    models_root: str = Field(
        default="/models",
        description="Where pvc:// claims are mounted inside the serving pod.",
    )
    signature: SignatureConfig | None = Field(
        default=None, description="Verified before the file is loaded, when set."
    )
    s3: S3Config | None = Field(default=None, description="The store of an s3:// model.")
    verified_identity: str | None = Field(
        default=None,
        description="Set by `freehold up` only, after it verified this very file on this "
        "machine (device:inode:size:mtime_ns): the replica then skips hashing it again.",
    )


class AutoscalingConfig(Strict):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=4, ge=1)
    max_queued_requests: int = Field(default=16, ge=0)

    def serve_options(self) -> dict[str, Any]:
        """Ray Serve's replica count: fixed, or autoscaled on ongoing requests per replica
        (the model deployment of either engine)."""
        if self.min_replicas == self.max_replicas:
            return {"num_replicas": self.max_replicas}
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": 5,
                "downscale_delay_s": 300,
            }
        }


class VaultKeySource(Strict):
    """API keys read from Vault KV v2 by the workload itself (never put in args)."""

    mount: str = "secret"
    path: str
    address: str | None = Field(default=None, description="Vault address.")
    ca_cert: str | None = Field(
        default=None, description="CA bundle (a path) for Vault's TLS; unset: system CAs."
    )
    role: str | None = Field(default=None, description="Kubernetes auth role to log in with.")
    auth_mount: str = "kubernetes"
    jwt_path: str = Field(
        default="/var/run/secrets/vault/token",
        description="Projected ServiceAccount token with Vault's audience.",
    )
    refresh_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Re-read keys this often: a revoked or rotated key stops working within "
        "this bound (an expiry is exact).",
    )
    grace_seconds: float = Field(
        default=900.0,
        ge=0,
        description="While Vault cannot be read, the last keys stay valid this long; then "
        "none is accepted until Vault answers again. (An emptied or deleted secret revokes "
        "every key at the next refresh.)",
    )


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


class AuditConfig(Strict):
    """Inference access records (who called which model, tokens, latency, status; never
    prompts or completions), hash-chained in DIRECTORY/access/NAME-SLOT.jsonl."""

    directory: str
    signing_key_file: str | None = Field(
        default=None,
        description="Ed25519 key (PEM, created if absent) that signs checkpoints; unset: "
        "the chain is hash-linked but unsigned.",
    )


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
    audit: AuditConfig | None = None
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    adapters: list[ModelConfig] = Field(
        default_factory=list,
        description="LoRA adapters of the model (engine vllm), each a Hugging Face adapter "
        "directory pinned by its digest; requests address one by its served_name.",
    )
    memory_stores: dict[str, str] = Field(
        default_factory=dict,
        description="MemoryStores a chat request may name (`memory.store`): name -> base URL "
        "of its memory API (.../v1/memory).",
    )
    retry_after_seconds: int = Field(default=1, ge=1)
