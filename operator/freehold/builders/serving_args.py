"""ModelDeployment spec -> serving application args: the one translation both the
operator (RayService serveConfigV2, Deployment env) and `freehold up` use."""

from __future__ import annotations

from freehold.api.model_deployment import (
    Auth,
    LlamaCppArgs,
    ModelDeploymentSpec,
    ModelSignature,
    VllmArgs,
)
from freehold.builders.model_workload import (
    AUDIT_DIR,
    MODELS_ROOT,
    SERVE_PORT,
    VAULT_CA_DIR,
    BuildContext,
)
from freehold.builders.vault import vault_name
from freehold.quantity import whole_cpus
from freehold_serving.args import (
    ApiKeysConfig,
    AuditConfig,
    AutoscalingConfig,
    EngineConfig,
    LlamaCppConfig,
    ModelConfig,
    S3Config,
    ServingArgs,
    SignatureConfig,
    TelemetryConfig,
    VaultKeySource,
    VllmConfig,
)


def api_keys_config(
    auth: Auth,
    *,
    file: str | None,
    vault_address: str | None,
    vault_role: str | None,
    vault_ca_cert: str | None,
) -> ApiKeysConfig | None:
    """Where a workload reads its API keys: a file (local mode), else the spec's Vault path
    (read by the workload itself), else none (no auth)."""
    if file is not None:
        return ApiKeysConfig(file=file)
    if auth.api_keys is None:
        return None
    keys = auth.api_keys
    return ApiKeysConfig(
        vault=VaultKeySource(
            mount=keys.mount,
            path=keys.path,
            address=vault_address,
            role=vault_role,
            ca_cert=vault_ca_cert,
        )
    )


def _signature(signature: ModelSignature | None) -> SignatureConfig | None:
    if signature is None:
        return None
    return SignatureConfig(
        ref=signature.ref,
        public_key=signature.public_key,
        certificate_chain=list(signature.certificate_chain),
        identity=signature.identity,
    )


def serving_args_for(
    spec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    *,
    otlp_endpoint: str | None = None,
    api_keys_file: str | None = None,
    vault_address: str | None = None,
    vault_role: str | None = None,
    vault_ca_cert: str | None = None,
) -> ServingArgs:
    """The serving args of a ModelDeployment.

    `api_keys_file` overrides where keys are read (local mode reads a file; on a
    cluster the workload reads the spec's Vault path itself).
    """
    engine = spec.engine
    llama = engine.llamacpp or LlamaCppArgs()
    vllm = engine.vllm or VllmArgs()
    threads = llama.threads or whole_cpus(spec.resources.cpu)
    gpus = spec.resources.gpu.count if spec.resources.gpu else 0
    api_keys = api_keys_config(
        spec.auth,
        file=api_keys_file,
        vault_address=vault_address,
        vault_role=vault_role,
        vault_ca_cert=vault_ca_cert,
    )
    store = (
        S3Config(
            endpoint=spec.model.s3.endpoint,
            region=spec.model.s3.region,
            credentials=(
                VaultKeySource(
                    mount=spec.model.s3.credentials.mount,
                    path=spec.model.s3.credentials.path,
                    address=vault_address,
                    role=vault_role,
                    ca_cert=vault_ca_cert,
                )
                if spec.model.s3.credentials is not None
                else None
            ),
        )
        if spec.model.s3 is not None
        else None
    )
    return ServingArgs(
        name=name,
        namespace=namespace,
        model=ModelConfig(
            uri=spec.model.uri,
            sha256=spec.model.sha256,
            served_name=spec.model.served_name or name,
            format=spec.model.format,
            s3=store,
            signature=_signature(spec.model.signature),
        ),
        engine=EngineConfig(
            name=engine.name,
            context_length=engine.context_length,
            gpus=gpus,
            llamacpp=LlamaCppConfig(**{**llama.model_dump(), "threads": threads}),
            vllm=VllmConfig(**vllm.model_dump()),
        ),
        autoscaling=AutoscalingConfig(
            min_replicas=spec.scaling.min_replicas,
            max_replicas=spec.scaling.max_replicas,
            target_ongoing_requests=spec.scaling.target_ongoing_requests,
            max_ongoing_requests=spec.scaling.max_ongoing_requests,
            max_queued_requests=spec.scaling.max_queued_requests,
        ),
        adapters=[
            ModelConfig(
                uri=a.uri,
                sha256=a.sha256,
                served_name=a.name,
                format="safetensors",
                # An s3:// adapter lives in the model's store (admission says so).
                s3=store if a.uri.startswith("s3://") else None,
                signature=_signature(a.signature),
            )
            for a in spec.adapters
        ],
        api_keys=api_keys,
        telemetry=TelemetryConfig(
            capture_content=spec.telemetry.capture_content,
            trace_sample_ratio=spec.telemetry.trace_sample_ratio,
            otlp_endpoint=otlp_endpoint,
        ),
    )


def workload_args(spec: ModelDeploymentSpec, ctx: BuildContext) -> ServingArgs:
    """The args a pod on the cluster gets: the shared translation, plus where the cluster
    mounts models, which Vault role the workload logs in with, and the OTLP endpoint."""
    args = serving_args_for(
        spec,
        ctx.name,
        ctx.namespace,
        otlp_endpoint=ctx.otel_endpoint,
        vault_address=ctx.vault_address,
        vault_role=vault_name(ctx),
        vault_ca_cert=f"{VAULT_CA_DIR}/ca.crt" if ctx.vault_ca_pem else None,
    )
    stores = spec.memory.store_refs if spec.memory is not None else []
    return args.model_copy(
        update={
            "model": args.model.model_copy(update={"models_root": MODELS_ROOT}),
            "adapters": [a.model_copy(update={"models_root": MODELS_ROOT}) for a in args.adapters],
            "audit": AuditConfig(directory=AUDIT_DIR),
            "memory_stores": {
                ref.name: f"http://{ref.name}.{ctx.namespace}.svc:{SERVE_PORT}/v1/memory"
                for ref in stores
            },
        }
    )
