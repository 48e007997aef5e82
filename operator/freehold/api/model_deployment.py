"""ModelDeployment: an open model served behind an OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from freehold.api.base import (
    ApiModel,
    Condition,
    DnsLabel,
    LocalObjectReference,
    Quantity,
    Residency,
    Sha256,
    VaultPath,
    cel,
    conditions_field,
    rules,
)
from freehold.api.eval_job import API_KEY_DESCRIPTION, EvalKey, EvalTemplate
from freehold_serving.args import (
    BatchSize,
    ContextLength,
    CpuKvCacheGib,
    Dtype,
    EngineConfig,
    GpuLayers,
    GpuMemoryUtilization,
    KvBlockSize,
    LlamaCppConfig,
    LoraRank,
    MaxNumSeqs,
    Parallel,
    PipelineParallelSize,
    PromptCacheMib,
    Quantization,
    RequestRouter,
    TensorParallelSize,
    Threads,
    VllmConfig,
)

MODEL_URI_PATTERN = r"^(pvc|oci|s3|file|package)://[^\s]+$"

ModelFormat = Literal["gguf", "safetensors"]
EngineName = Literal["llamacpp", "vllm"]


PEM_PUBLIC_KEY = r"^-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----\s*$"
PEM_CERTIFICATE = r"^-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*$"


class ModelSignature(ApiModel):
    """An OpenSSF model-signing signature (a Sigstore bundle, as `freehold model sign` or
    `model_signing sign` write it) over the model file, verified where the model is loaded,
    before the engine opens it, against a public key or a certificate chain and identity.
    Air-gapped: no transparency log is consulted. A missing, invalid or foreign signature
    means the model is never served."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.publicKey) != (has(self.certificateChain) && "
                "size(self.certificateChain) > 0)",
                "give exactly one of publicKey or certificateChain",
            ),
            cel(
                "!has(self.certificateChain) || size(self.certificateChain) == 0 || "
                "has(self.identity)",
                "a certificateChain needs the identity its signing certificate must carry",
                field_path=".identity",
            ),
        )
    )

    ref: str = Field(
        max_length=2048,
        pattern=MODEL_URI_PATTERN,
        description="Where the signature bundle is, with the same URI schemes as the model "
        "(on a pvc://, the same claim as the model).",
    )
    public_key: str | None = Field(
        default=None,
        max_length=4096,
        pattern=PEM_PUBLIC_KEY,
        description="PEM public key (ECDSA P-256/P-384/P-521) the signature must verify with.",
    )
    certificate_chain: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="PEM certificates (root first or last) the signing certificate must chain "
        "to; the signature bundle carries the signing certificate.",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 16384, "pattern": PEM_CERTIFICATE}
        },
    )
    identity: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Subject alternative name (email, URI or DNS name) the signing "
        "certificate must carry, exactly.",
    )


class S3Credentials(ApiModel):
    """Where the store's access key is: a Vault KV v2 secret with fields accessKey and
    secretKey, read by the fetch-model init container itself (never a Kubernetes Secret)."""

    mount: str = Field(
        default="secret",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="KV v2 mount in Vault.",
    )
    path: VaultPath = Field(description="Path below the mount (under the namespace's prefix).")


class S3Store(ApiModel):
    """An S3-compatible object store (MinIO, Ceph RGW, an in-country cloud region...)."""

    endpoint: str = Field(
        max_length=512,
        pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?/?$",
        description="Base URL of the store, https://HOST[:PORT] (plain http only to loopback "
        "or a host the platform team lists as insecure).",
    )
    region: str = Field(
        default="us-east-1",
        max_length=63,
        pattern=r"^[a-z0-9-]+$",
        description="Region the requests are signed for.",
    )
    credentials: S3Credentials | None = Field(
        default=None, description="The access key, in Vault; unset: anonymous reads."
    )


class ModelSource(ApiModel):
    """The model file and what it must hash to."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!self.uri.startsWith('s3://') || has(self.s3)",
                "s3:// models need spec.model.s3 (the store's endpoint)",
                field_path=".s3",
            ),
            cel(
                "self.uri.startsWith('s3://') || !has(self.s3)",
                "spec.model.s3 is only for s3:// models",
                field_path=".s3",
            ),
        )
    )

    uri: str = Field(
        max_length=2048,
        pattern=MODEL_URI_PATTERN,
        description="Location of the model: pvc://CLAIM/PATH, oci://REF, s3://BUCKET/KEY, "
        "file:///PATH, or package://DISTRIBUTION/FILE for a model shipped in a Python package. "
        "A safetensors model is a Hugging Face directory (config, tokenizer, weights): the "
        "uri names the directory (oci://: an artifact with its files; s3://: a prefix).",
    )
    format: ModelFormat = Field(
        default="gguf",
        description="gguf: one GGUF file (engine llamacpp). safetensors: a Hugging Face "
        "directory (engine vllm).",
    )
    sha256: Sha256 = Field(
        description="Required SHA-256 of the model file (lowercase hex); for a directory, its "
        "directory digest (`freehold model digest DIR`: sha256 over the `sha256sum` lines of "
        "its files in byte order). The engine refuses to load anything else."
    )
    served_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Model name clients pass in the `model` field of API calls. Defaults to "
        "the resource name.",
    )
    signature: ModelSignature | None = Field(
        default=None, description="Optional signature to verify together with the digest."
    )
    s3: S3Store | None = Field(
        default=None, description="The object store of an s3://BUCKET/KEY model."
    )
    license: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9.+:()-][A-Za-z0-9.+:() -]*$",
        description="The model's licence as an SPDX expression (Apache-2.0, gemma, ...): "
        "recorded in the ML-BOM and checked against a SovereigntyPolicy's allowedLicenses.",
    )


class Adapter(ApiModel):
    """A LoRA adapter of the model (engine vllm): a Hugging Face adapter directory
    (adapter_config.json, adapter_model.safetensors) pinned by its directory digest, loaded
    on a replica when a request first names it."""

    name: str = Field(
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The model name requests use for this adapter.",
    )
    uri: str = Field(
        max_length=2048,
        pattern=r"^(pvc|file|package|oci|s3)://[^\s]+$",
        description="The adapter directory: pvc://CLAIM/PATH, file:///PATH, "
        "package://DISTRIBUTION/DIR, oci://REGISTRY/REPO:TAG (one artifact holding the "
        "directory's files) or s3://BUCKET/PREFIX (in the model's own store, spec.model.s3, "
        "read with its credentials); oci:// and s3:// are fetched by the pod's init container.",
    )
    sha256: Sha256 = Field(
        description="Directory digest of the adapter (`freehold model digest DIR`)."
    )
    signature: ModelSignature | None = Field(
        default=None, description="Verified with the digest before the adapter loads."
    )


# Defaults come from the serving contract (freehold_serving.args): one definition.
_LLAMA = LlamaCppConfig()
_VLLM = VllmConfig()


class LlamaCppArgs(ApiModel):
    """Arguments for the llama.cpp engine."""

    threads: Threads | None = Field(
        default=None,
        description="CPU threads per replica. Defaults to the replica's CPU request.",
    )
    gpu_layers: GpuLayers = Field(
        default=_LLAMA.gpu_layers,
        description="Layers offloaded to the GPU; -1 offloads all. Ignored without a GPU.",
    )
    batch_size: BatchSize = Field(
        default=_LLAMA.batch_size, description="Prompt-processing batch size in tokens."
    )
    flash_attention: bool = Field(
        default=_LLAMA.flash_attention, description="Use flash attention kernels."
    )
    prompt_cache_mib: PromptCacheMib = Field(
        default=_LLAMA.prompt_cache_mib,
        description="MiB per replica (within resources.memory) for the KV states of "
        "earlier conversations, so a returning conversation's history is not evaluated "
        "again; 0 keeps only the last one.",
    )
    parallel: Parallel = Field(
        default=_LLAMA.parallel,
        description="Sequences a replica decodes together (continuous batching): "
        "concurrent requests share each step. Each sequence holds a KV cache of "
        "contextLength tokens (memory grows with it). Where the model's CPU kernels make "
        "a sequence's logits depend on its batch (some K-quants), seeded requests run "
        "alone so that they stay reproducible; see docs/concepts/engines.md.",
    )
    request_router: RequestRouter = Field(
        default=_LLAMA.request_router,
        description="How requests pick a replica when there can be more than one "
        "(RayService backend, scaling.maxReplicas > 1): prefix-aware (a conversation's "
        "turns go to the replica that holds its earlier turns, unless that one is busier "
        "than another by more than two requests) or power-of-two (the less loaded of two "
        "random replicas). Prefix-aware puts the API in a replica of its own, one more "
        "hop per request.",
    )


class VllmArgs(ApiModel):
    """Arguments for the vLLM engine (Ray Serve LLM: continuous batching, prefix-aware
    routing across replicas). On GPUs (resources.gpu), or on CPU with vLLM's CPU backend
    (for small models: a replica uses its CPU request)."""

    tensor_parallel_size: TensorParallelSize = Field(
        default=_VLLM.tensor_parallel_size,
        description="GPUs one replica shards each layer across (tensor parallel).",
    )
    pipeline_parallel_size: PipelineParallelSize = Field(
        default=_VLLM.pipeline_parallel_size,
        description="GPUs one replica splits the layers across (pipeline parallel). A "
        "replica uses tensorParallelSize x pipelineParallelSize GPUs.",
    )
    gpu_memory_utilization: GpuMemoryUtilization = Field(
        default=_VLLM.gpu_memory_utilization, description="Fraction of GPU memory vLLM may use."
    )
    dtype: Dtype = Field(default=_VLLM.dtype, description="Weight and activation data type.")
    quantization: Quantization | None = Field(
        default=None, description="Quantization method of the weights, if any."
    )
    max_num_seqs: MaxNumSeqs = Field(
        default=_VLLM.max_num_seqs, description="Sequences batched together per step."
    )
    max_lora_rank: LoraRank = Field(
        default=_VLLM.max_lora_rank, description="The largest LoRA rank among spec.adapters."
    )
    enforce_eager: bool | None = Field(
        default=None,
        description="Run without torch.compile and CUDA graphs. Unset: eager on CPU "
        "(compiling there costs about a minute of start-up), compiled on GPU.",
    )
    cpu_kv_cache_gib: CpuKvCacheGib = Field(
        default=_VLLM.cpu_kv_cache_gib,
        description="On CPU only: GiB of memory for the KV cache, within resources.memory.",
    )
    block_size: KvBlockSize | None = Field(
        default=None,
        description="Tokens per KV-cache block, the unit the prefix cache reuses: a "
        "returning conversation finds its history cached up to the last whole block. "
        "Smaller blocks reuse more of a multi-turn history. Unset: vLLM's default (16 on "
        "GPU; 128 on CPU, whose kernels want a multiple of 32).",
    )
    request_router: RequestRouter = Field(
        default=_VLLM.request_router,
        description="How requests pick a replica: prefix-aware (to the replica whose KV "
        "cache holds the longest shared prefix, unless one replica has "
        "scaling.targetOngoingRequests more requests in flight than another) or "
        "power-of-two (the less loaded of two random replicas).",
    )


class Engine(ApiModel):
    """The inference engine and its arguments."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.name == 'vllm' || !has(self.vllm)",
                "engine.vllm is only valid with engine.name vllm",
                field_path=".vllm",
            ),
            cel(
                "self.name == 'llamacpp' || !has(self.llamacpp)",
                "engine.llamacpp is only valid with engine.name llamacpp",
                field_path=".llamacpp",
            ),
        )
    )

    name: EngineName = Field(
        default="llamacpp",
        description="llamacpp (one GGUF file; CPU, GPU offload when a GPU is requested) or "
        "vllm (a Hugging Face directory; GPUs, or CPU with vLLM's CPU backend).",
    )
    context_length: ContextLength = Field(
        default=EngineConfig.model_fields["context_length"].default,
        description="Context window in tokens.",
    )
    llamacpp: LlamaCppArgs | None = Field(default=None, description="llama.cpp arguments.")
    vllm: VllmArgs | None = Field(default=None, description="vLLM arguments.")


class GpuResources(ApiModel):
    """GPUs per replica."""

    count: int = Field(default=0, ge=0, le=16, description="GPUs per replica.")
    resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^[a-z0-9.-]+/[a-z0-9._-]+$",
        description="Extended resource name of the GPU, for example nvidia.com/gpu.",
    )
    product: str | None = Field(
        default=None,
        max_length=63,
        description="Required value of the node label nvidia.com/gpu.product, if any.",
    )


class Toleration(ApiModel):
    """A node taint the model's pods tolerate (as in a pod's tolerations)."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; unset: any.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; unset: any."
    )


class Placement(ApiModel):
    """Which nodes run the model (the serving pods; on KubeRay, the Ray workers)."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the model's pods require (GPU pools, machine types).",
        json_schema_extra={"maxProperties": 16},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=16,
        description="Taints of dedicated nodes (a GPU pool) the model's pods tolerate.",
    )


class Resources(ApiModel):
    """Compute per replica."""

    cpu: Quantity = Field(default="2", description="CPU request and limit per replica.")
    memory: Quantity = Field(default="4Gi", description="Memory request and limit per replica.")
    gpu: GpuResources | None = Field(default=None, description="GPUs per replica.")


class Scaling(ApiModel):
    """Replica autoscaling on ongoing requests (Ray Serve autoscaling)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "scaling.minReplicas must be less than or equal to scaling.maxReplicas",
                field_path=".minReplicas",
            ),
            cel(
                "self.targetOngoingRequests <= self.maxOngoingRequests",
                "scaling.targetOngoingRequests must not exceed scaling.maxOngoingRequests",
                field_path=".targetOngoingRequests",
            ),
        )
    )

    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest replicas; 0 scales to zero when idle."
    )
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_ongoing_requests: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Ongoing requests per replica the autoscaler aims for.",
    )
    max_ongoing_requests: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Requests one replica holds at once (running plus queued in the replica).",
    )
    max_queued_requests: int = Field(
        default=16,
        ge=0,
        le=100000,
        description="Requests waiting for a replica before new ones are refused with 503.",
    )


class SecretRef(ApiModel):
    """A Vault KV v2 secret the workload may read."""

    name: str = Field(
        max_length=63,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name the workload knows the secret by.",
    )
    mount: str = Field(
        default="secret",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="KV v2 mount in Vault.",
    )
    path: VaultPath = Field(description="Path below the mount. No wildcards.")


class ApiKeys(ApiModel):
    """API keys for the inference endpoint, held in Vault."""

    mount: str = Field(
        default="secret",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="KV v2 mount in Vault.",
    )
    path: VaultPath = Field(
        description="KV v2 path whose values are the accepted API keys (one per entry)."
    )


class Auth(ApiModel):
    """Who may call the endpoint."""

    api_keys: ApiKeys | None = Field(
        default=None,
        description="Require `Authorization: Bearer KEY` with a key from Vault. Unset: no key.",
    )


class Telemetry(ApiModel):
    """OpenTelemetry metrics and traces of the workload."""

    capture_content: bool = Field(
        default=False,
        description="Record prompt and completion text in traces. Off by default: content "
        "often holds personal data.",
    )
    trace_sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Fraction of requests traced."
    )


class PeerSelector(ApiModel):
    """Pods allowed to call the endpoint (a NetworkPolicy peer)."""

    namespace_selector: dict[str, str] | None = Field(
        default=None,
        max_length=32,
        description="Labels of allowed namespaces; unset means this namespace.",
    )
    pod_selector: dict[str, str] | None = Field(
        default=None, max_length=32, description="Labels of allowed pods; unset means all pods."
    )


class Network(ApiModel):
    """Network exposure. All other ingress and egress is denied."""

    allow_from: list[PeerSelector] = Field(
        default_factory=list,
        max_length=32,
        description="Who may reach the endpoint. Empty: only pods in this namespace.",
    )


class ModelNetwork(Network):
    """Network exposure of a model. All other ingress and egress is denied."""

    allow_from: list[PeerSelector] = Field(
        default_factory=list,
        max_length=32,
        description="Who may reach the endpoint. Empty: only pods in this namespace. While a "
        "ModelRouter with budgets or rate limits targets this model, only that router (and "
        "Freehold's EvalJobs and MemoryStores of this namespace) may, unless directAccess.",
    )
    direct_access: bool = Field(
        default=False,
        description="Let allowFrom's callers reach the model directly even while a ModelRouter "
        "with budgets or rate limits targets it (those limits then do not hold for them).",
    )


class MemoryAccess(ApiModel):
    """MemoryStores a chat request may name (the `memory` request field): the server
    recalls the subject's records into the prompt, with the caller's own API key."""

    store_refs: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=8,
        description="MemoryStores in this namespace. Their pods become reachable from the "
        "model's pods (NetworkPolicy egress on port 8000).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class Promotion(ApiModel):
    """Evaluation gates every new model digest must pass before it serves.

    The first version is served at once (there is nothing older to keep). From then on,
    a change of spec.model does not touch what serves: the operator starts the new
    digest as a candidate (reachable only by its evaluation), creates an EvalJob from
    the template for it, and rolls it out only when every gate passed. maxRegression
    gates compare with the EvalJob of the version being served, which the operator also
    creates from the template."""

    eval_template: EvalTemplate = Field(
        description="Suites and gates of the EvalJob created for each model digest."
    )
    api_key: EvalKey | None = Field(
        default=None,
        description="Required with spec.auth.apiKeys: the key the evaluation of the version "
        "being served presents (candidates need none: only their evaluation can reach "
        "them). " + API_KEY_DESCRIPTION,
    )


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.engine.name != 'llamacpp' || self.model.format == 'gguf'",
                "engine llamacpp serves gguf models only: set model.format to gguf or use "
                "engine vllm",
                field_path=".model.format",
            ),
            cel(
                "self.engine.name != 'vllm' || self.model.format == 'safetensors'",
                "engine vllm serves Hugging Face model directories: set model.format to "
                "safetensors (the uri names the directory, sha256 is its directory digest: "
                "freehold model digest DIR)",
                field_path=".model.format",
            ),
            cel(
                "self.engine.name == 'vllm' || size(self.adapters) == 0",
                "spec.adapters: LoRA adapters are served by engine vllm (llama.cpp adapters "
                "are planned)",
                field_path=".adapters",
            ),
            cel(
                "self.model.uri.startsWith('s3://') || "
                "self.adapters.all(a, !a.uri.startsWith('s3://'))",
                "spec.adapters: an s3:// adapter is read from the model's own store with its "
                "credentials: the model must be s3:// too (spec.model.s3), or put the adapter "
                "in an OCI registry, a claim or a package",
                field_path=".adapters",
            ),
            cel(
                "!has(self.model.servedName) || "
                "self.adapters.all(a, a.name != self.model.servedName)",
                "spec.adapters: an adapter's name must differ from model.servedName",
                field_path=".adapters",
            ),
            cel(
                "!has(self.promotion) || !has(self.auth) || !has(self.auth.apiKeys) || "
                "has(self.promotion.apiKey)",
                "spec.promotion.apiKey: this ModelDeployment requires API keys "
                "(spec.auth.apiKeys), so the evaluation of the version it serves needs one: "
                "name a Vault KV v2 field holding a key it accepts (freehold keys create --of "
                "modeldeployment/NAME --tenant evaluation --into MOUNT/PATH)",
                field_path=".promotion.apiKey",
            ),
            cel(
                "self.engine.name != 'llamacpp' || !has(self.engine.llamacpp) || "
                "self.engine.llamacpp.parallel <= self.scaling.maxOngoingRequests",
                "spec.engine.llamacpp.parallel: a replica decodes at most "
                "scaling.maxOngoingRequests requests at once: raise maxOngoingRequests to at "
                "least parallel, or lower parallel",
                field_path=".engine.llamacpp.parallel",
            ),
            cel(
                "!has(oldSelf.residency) || has(self.residency)",
                "residency cannot be removed once set",
                field_path=".residency",
                reason="FieldValueForbidden",
            ),
        )
    )

    model: ModelSource = Field(description="The model to serve.")
    engine: Engine = Field(default_factory=Engine, description="The inference engine.")
    adapters: list[Adapter] = Field(
        default_factory=list,
        max_length=64,
        description="LoRA adapters served on this model (engine vllm), addressed by name in "
        "requests' `model` field.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: Resources = Field(default_factory=Resources, description="Compute per replica.")
    scaling: Scaling = Field(default_factory=Scaling, description="Replica autoscaling.")
    placement: Placement = Field(
        default_factory=Placement, description="Node selectors and tolerations of the pods."
    )
    residency: Residency | None = Field(
        default=None, description="Where the model may run. Unset: anywhere in the cluster."
    )
    secrets: list[SecretRef] = Field(
        default_factory=list,
        max_length=64,
        description="Vault KV v2 secrets the workload may read, and nothing else.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    auth: Auth = Field(default_factory=Auth, description="Who may call the endpoint.")
    telemetry: Telemetry = Field(default_factory=Telemetry, description="Telemetry settings.")
    network: ModelNetwork = Field(default_factory=ModelNetwork, description="Network exposure.")
    memory: MemoryAccess | None = Field(
        default=None, description="Memory in chat: the MemoryStores requests may use."
    )
    promotion: Promotion | None = Field(
        default=None, description="Evaluation gates before promotion."
    )


class Candidate(ApiModel):
    """A model digest the promotion holds back until its evaluation passes."""

    digest: str = Field(max_length=71, description="sha256 of the candidate model file.")
    eval_job: str = Field(max_length=253, description="The EvalJob that decides it.")
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        description="Where the candidate serves (only its evaluation may call it).",
    )
    ready: bool = Field(default=False, description="Whether the candidate serves.")


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment."""

    conditions: list[Condition] = conditions_field(
        "Ready, ModelVerified, PolicyCompliant, Progressing, Degraded (and SecretsUnavailable "
        "when Vault cannot be reached)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status describes."
    )
    endpoint: str | None = Field(
        default=None, max_length=2048, description="Base URL of the OpenAI-compatible API."
    )
    ready_replicas: int | None = Field(default=None, ge=0, description="Replicas serving.")
    desired_replicas: int | None = Field(default=None, ge=0, description="Replicas wanted now.")
    served_digest: str | None = Field(
        default=None, max_length=71, description="sha256 of the model file being served."
    )
    backend: Literal["RayService", "Deployment"] | None = Field(
        default=None, description="What the operator runs the model on."
    )
    served_name: str | None = Field(
        default=None, max_length=253, description="Model name clients use."
    )
    candidate: Candidate | None = Field(
        default=None,
        description="The new model digest awaiting promotion, while there is one.",
    )
    ml_bom: str | None = Field(
        default=None,
        max_length=512,
        description="Where the CycloneDX 1.6 ML-BOM of what serves is (configmap://NAME/KEY): "
        "model, digest, source, licence, signer, engine and serving image.",
    )


class ModelDeploymentRef(LocalObjectReference):
    """A ModelDeployment in the same namespace."""


__all__ = [
    "DnsLabel",
    "Engine",
    "ModelDeploymentRef",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
]
