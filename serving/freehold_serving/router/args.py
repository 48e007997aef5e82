"""What the router application needs, built from a ModelRouter spec by the operator (and
by `freehold up`): targets resolved to URLs, with their admission decided."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from freehold_serving.args import ApiKeysConfig, AuditConfig, Strict, TelemetryConfig
from freehold_serving.memory.args import PostgresArgs

ARGS_ENV = "FREEHOLD_ROUTER_ARGS"


class ExternalConfig(Strict):
    """A provider reached through any-llm."""

    provider: str
    model: str
    base_url: str | None = None
    # The key: read from Vault KV v2 by the router itself, or (locally) from an env var.
    vault_mount: str | None = None
    vault_path: str | None = None
    vault_key: str = "api_key"
    api_key_env: str | None = None


class KeyInVault(Strict):
    """A key the router reads from Vault KV v2 itself (as its own workload)."""

    mount: str = "secret"
    path: str
    field: str = "api_key"


class TargetConfig(Strict):
    name: str
    url: str | None = Field(default=None, description="OpenAI-compatible base URL (.../v1).")
    model: str | None = Field(default=None, description="Model name to ask the target for.")
    external: ExternalConfig | None = None
    weight: int = 1
    priority: int = 0
    cost_input: float = 0.0  # per 1,000 tokens
    cost_output: float = 0.0
    context_limit: int | None = None
    capabilities: list[str] = Field(default_factory=lambda: ["chat", "completions"])
    admitted: bool = True
    api_key_file: str | None = Field(
        default=None,
        description="A file holding the router's own key for this target (never the "
        "caller's): `freehold up` makes one when the models behind a router need keys.",
    )
    api_key_vault: KeyInVault | None = Field(
        default=None,
        description="Where in Vault the router's own key for this target is (on a cluster, "
        "spec.targets[].apiKey); read at start, then every 30 s and after the target refuses it.",
    )


Cause = Literal["5xx", "timeout", "429", "context_length"]
ALL_CAUSES: list[Cause] = ["5xx", "timeout", "429", "context_length"]


class FallbackConfig(Strict):
    on: list[Cause] = Field(default_factory=lambda: list(ALL_CAUSES))
    timeout_seconds: float = 60.0
    cooldown_seconds: float = 30.0
    max_attempts: int = 3


class BudgetConfig(Strict):
    tenant: str
    tokens: int | None = None
    cost: float | None = None
    period: Literal["hour", "day", "month"] = "day"


class RateLimitConfig(Strict):
    """Per minute, for a tenant as a whole and (key_*) for each of its keys."""

    tenant: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    key_requests_per_minute: int | None = None
    key_tokens_per_minute: int | None = None


class RouterArgs(Strict):
    name: str
    namespace: str = "default"
    served_name: str
    targets: list[TargetConfig]
    strategy: Literal["weighted", "priority", "least_latency", "least_cost", "capability"] = (
        "priority"
    )
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    rate_limits: list[RateLimitConfig] = Field(default_factory=list)
    api_keys: ApiKeysConfig | None = None
    vault_address: str | None = None
    vault_role: str | None = None
    vault_ca_cert: str | None = None
    # The projected ServiceAccount token (audience vault) the router logs in with.
    vault_jwt_path: str = "/var/run/secrets/vault/token"
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    replicas: int = Field(default=1, ge=1)
    audit: AuditConfig | None = Field(
        default=None,
        description="Access records of routed requests (the caller's key id and tenant, the "
        "target that answered, tokens, status), hash-chained and signed like a model's.",
    )
    state_postgres: PostgresArgs | None = Field(
        default=None,
        description="Budgets kept in this PostgreSQL, shared by every replica and kept across "
        "restarts; unset: in the router's memory (one replica).",
    )
