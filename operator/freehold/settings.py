"""Process settings, read once at the entry point and passed down (never read deeper)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class LocalSettings(BaseSettings):
    """`freehold up`: one ModelDeployment (and a MemoryStore) on this machine."""

    model_config = SettingsConfigDict(env_prefix="FREEHOLD_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    cpus: int | None = Field(default=None, ge=1, description="CPUs Ray may use; default all.")
    api_keys_file: Path | None = Field(
        default=None, description="File of accepted API keys, one per line; unset: no auth."
    )
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP trace endpoint.")
    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "freehold",
        description="Local state: memory stores under memory/, access records under audit/, "
        "key files under keys/.",
    )
    ready_timeout_s: float = Field(default=600.0, gt=0)


class OperatorSettings(BaseSettings):
    """`freehold operator`: the control plane. FREEHOLD_OPERATOR_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="FREEHOLD_OPERATOR_", extra="ignore")

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty: the whole cluster."
    )
    serving_image: str = Field(
        default="ghcr.io/freehold-dev/freehold-serving:0.1.0",
        description="Image of the serving pods (Ray + freehold_serving).",
    )
    serving_vllm_image: str | None = Field(
        default=None,
        description="Image of ModelDeployments with engine vllm: Freehold's serving code on "
        "vLLM 0.29.0 and what ray.serve.llm imports (`scripts/images --vllm` builds one with "
        "vLLM's CPU build from docker/vllm.Dockerfile). Unset: they report "
        "EngineUnavailable.",
    )
    ray_version: str = Field(default="2.60.0", description="Ray version in the serving image.")
    resync_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Safety-net resync: every resource is reconciled again this often. Watches "
        "on the children repair drift within seconds; this catches what a watch cannot see.",
    )
    head_cpu: str = Field(default="1", description="CPU of a RayService head pod.")
    head_memory: str = Field(default="2Gi", description="Memory of a RayService head pod.")
    vault_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FREEHOLD_OPERATOR_VAULT_ADDRESS", "VAULT_ADDR"),
        description="Vault (or OpenBao) URL.",
    )
    vault_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FREEHOLD_OPERATOR_VAULT_TOKEN", "VAULT_TOKEN"),
        description="A static Vault token (development, break-glass); unset: the operator "
        "logs in with its ServiceAccount token.",
    )
    vault_kv_prefix: str = Field(
        default="{namespace}/",
        description="Workloads may only read KV paths starting with this prefix "
        "({namespace} is replaced): one team cannot name another team's secrets.",
    )
    vault_namespace: str = Field(default="vault", description="Namespace of Vault pods.")
    vault_ca_bundle: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FREEHOLD_OPERATOR_VAULT_CA_BUNDLE", "VAULT_CACERT"),
        description="CA bundle for Vault's TLS.",
    )
    vault_role: str = Field(
        default="freehold-operator", description="The operator's Kubernetes-auth role."
    )
    vault_auth_mount: str = Field(default="kubernetes", description="Kubernetes auth mount.")
    vault_token_path: str = Field(
        default="/var/run/secrets/kubernetes.io/serviceaccount/token",
        description="The operator's ServiceAccount token, for Vault's Kubernetes auth.",
    )
    vault_port: int = Field(default=8200, description="Vault's port, for NetworkPolicies.")
    otel_namespace: str | None = Field(
        default=None, description="Namespace of the OpenTelemetry collector, if any."
    )
    insecure_registries: list[str] = Field(
        default_factory=list,
        description="Registry hosts oci:// models may be pulled from over plain HTTP "
        "(loopback always may); everything else is pulled over TLS.",
    )
    prometheus_namespace: str | None = Field(
        default=None,
        description="Namespace of the Prometheus that scrapes the workloads' /metrics: their "
        "NetworkPolicies admit it on the serving port. Unset: no scraper is admitted.",
    )
    pod_namespace: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FREEHOLD_OPERATOR_POD_NAMESPACE", "POD_NAMESPACE"),
        description="The operator's own namespace: memory stores admit its status probe.",
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint: the workloads' telemetry and the operator's "
        "reconcile spans.",
    )
    kuberay_namespace: str = Field(
        default="kuberay-system",
        description="Namespace of the KubeRay operator, which must reach the Ray dashboard.",
    )
    api_server_cidr: str | None = Field(
        default=None,
        description="Where the Kubernetes API server is (a CIDR), for the Ray autoscaler's "
        "egress. The chart sets it; unset, the operator uses the address it connects to, "
        "if that is an IP address, and otherwise refuses to start.",
    )
    dns_namespace: str = Field(
        default="kube-system", description="Namespace of the cluster DNS pods (egress rules)."
    )
    dns_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"k8s-app": "kube-dns"},
        description="Labels of the cluster DNS pods (egress rules).",
    )
    dns_ports: list[int] = Field(
        default_factory=lambda: [53],
        description="Ports the DNS server listens on (policies match after the Service's "
        "DNAT): 53, or e.g. 1053 for a CoreDNS on the host network.",
    )
    dns_cidrs: list[str] = Field(
        default_factory=list,
        description="Addresses of a DNS with no pod to select (host network, node-local "
        "cache on 169.254.20.10/32): workloads may reach them on the DNS ports.",
    )
    liveness_host: str = Field(default="0.0.0.0", description="Address of /healthz.")
    liveness_port: int = Field(default=8080, description="Port of /healthz.")
    metrics_host: str = Field(default="0.0.0.0", description="Address of /metrics.")
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Port of the operator's /metrics; 0: off."
    )
    audit_dir: Path | None = Field(
        default=None,
        description="Where the operator appends its hash-chained audit log (operator.jsonl); "
        "unset: no audit log.",
    )
    audit_signing_key: str = Field(
        default="freehold-operator-audit",
        description="Vault transit key (ed25519, created if missing) that signs the audit "
        "log's checkpoints; without Vault the log is chained but unsigned.",
    )
    watch_server_timeout: int = Field(
        default=300, description="Seconds the API server keeps a watch open."
    )
    watch_client_timeout: int = Field(
        default=330, description="Seconds without data after which a watch is reconnected."
    )
    workers: int = Field(
        default=8, ge=1, le=64, description="Resources reconciled at once (threads)."
    )
    discovery_seconds: float = Field(
        default=60.0, gt=0, description="How long API discovery (is KubeRay installed?) is cached."
    )


class VaultCliSettings(BaseSettings):
    """Where Vault is and who the admin is: Vault's own environment variables."""

    model_config = SettingsConfigDict(extra="ignore")

    address: str | None = Field(default=None, validation_alias=AliasChoices("VAULT_ADDR"))
    token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("VAULT_TOKEN"))
    ca_cert: str | None = Field(default=None, validation_alias=AliasChoices("VAULT_CACERT"))
