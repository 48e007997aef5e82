"""ModelRouter: one served model name in front of several owned models (and, only when the
spec allows it, external OpenAI-compatible providers), chosen by cost, latency, quality
and capability, with fallbacks, cooldowns and budgets per API key."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from freehold.api.base import (
    ApiModel,
    Condition,
    DnsLabel,
    ExternalSecret,
    LocalObjectReference,
    cel,
    conditions_field,
    rules,
)
from freehold.api.model_deployment import Auth, Network, Telemetry
from freehold.api.postgres import PostgresConnection

Capability = Literal["chat", "completions", "embeddings", "json_schema", "logprobs"]
Strategy = Literal["weighted", "priority", "least_latency", "least_cost", "capability"]
FallbackCause = Literal["5xx", "timeout", "429", "context_length"]


class TargetKey(ExternalSecret):
    """The router's own API key for a ModelDeployment that requires keys, in Vault (KV v2):
    a key that model accepts, presented by the router instead of the caller's."""


class External(ApiModel):
    """An OpenAI-compatible provider reached through any-llm (chat and embeddings)."""

    provider: str = Field(
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="any-llm provider name (openai, mistral, ...).",
    )
    model: str = Field(max_length=253, description="The provider's model name.")
    base_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="API base URL, for self-hosted or regional endpoints.",
    )
    api_key: ExternalSecret | None = Field(default=None, description="Where the key is.")


class Cost(ApiModel):
    """Cost per 1,000 tokens, in the organisation's unit of account."""

    input: float = Field(default=0.0, ge=0, description="Per 1,000 prompt tokens.")
    output: float = Field(default=0.0, ge=0, description="Per 1,000 completion tokens.")


class RouterTarget(ApiModel):
    """One model the router may send a request to."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.modelDeploymentRef) != has(self.external)",
                "set exactly one of modelDeploymentRef and external",
            ),
            cel(
                "!has(self.apiKey) || has(self.modelDeploymentRef)",
                "apiKey is the router's key for a modelDeploymentRef target; an external "
                "provider's key is external.apiKey",
            ),
        )
    )

    name: DnsLabel = Field(description="Target name (response header X-Freehold-Target).")
    model_deployment_ref: LocalObjectReference | None = Field(
        default=None, description="A ModelDeployment in this namespace."
    )
    external: External | None = Field(
        default=None, description="An external provider (needs spec.allowExternal)."
    )
    api_key: TargetKey | None = Field(
        default=None,
        description="The router's own key for a ModelDeployment that requires API keys "
        "(spec.auth.apiKeys): a Vault KV v2 field holding a key that model accepts (make one "
        "with `freehold keys create --of modeldeployment/NAME --tenant router --into "
        "MOUNT/PATH`). The router "
        "re-reads it every 30 s, so a rotation needs no restart. Without it, a keyed target is "
        "not routed to.",
    )
    weight: int = Field(default=1, ge=0, le=1000, description="Share under `weighted`.")
    priority: int = Field(
        default=0, ge=0, le=100, description="Order under `priority` (lower first)."
    )
    cost: Cost = Field(default_factory=Cost, description="Cost per 1,000 tokens.")
    context_limit: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Prompt + completion tokens it accepts; longer requests skip it.",
    )
    capabilities: list[Capability] = Field(
        default=["chat", "completions"],
        min_length=1,
        max_length=5,
        description="What it can do; a request needing another capability skips it.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Fallback(ApiModel):
    """When a target fails, try the next one (in the strategy's order)."""

    when: list[FallbackCause] = Field(
        default=["5xx", "timeout", "429", "context_length"],
        max_length=4,
        description="Failures that move on to the next target (5xx includes an "
        "unreachable target).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    timeout_seconds: float = Field(
        default=60.0, ge=0.1, le=3600, description="Until the first byte of an answer."
    )
    cooldown_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="A failed target is skipped this long."
    )
    max_attempts: int = Field(default=3, ge=1, le=16, description="Targets tried per request.")


class Budget(ApiModel):
    """What one tenant (an API key's tenant) may spend per period; fallbacks count too."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("has(self.tokens) || has(self.cost)", "set tokens, cost or both"),
        )
    )

    tenant: str = Field(
        max_length=63,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The tenant of the API keys it limits (`*`-free; see auth.apiKeys).",
    )
    tokens: int | None = Field(default=None, ge=1, description="Prompt + completion tokens.")
    cost: float | None = Field(
        default=None, ge=0.000001, description="Cost, from the targets' costs."
    )
    period: Literal["hour", "day", "month"] = Field(default="day", description="Resets each.")


class KeyRateLimit(ApiModel):
    """What each API key of the tenant may do per minute."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.requestsPerMinute) || has(self.tokensPerMinute)",
                "set requestsPerMinute, tokensPerMinute or both",
            ),
        )
    )

    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests.")
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Tokens, counted when a request is admitted at the most it may use "
        "(prompt bound + max_tokens; without max_tokens, what the minute leaves, forwarded).",
    )


class RateLimit(KeyRateLimit):
    """What one tenant (an API key's tenant) may do per minute, on a sliding window: over
    the limit, 429 `rate_limit_exceeded` with Retry-After."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.requestsPerMinute) || has(self.tokensPerMinute) || has(self.perKey)",
                "set requestsPerMinute, tokensPerMinute, perKey or several",
            ),
        )
    )

    tenant: str = Field(
        max_length=63,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The tenant of the API keys it limits (see auth.apiKeys).",
    )
    per_key: KeyRateLimit | None = Field(
        default=None, description="Limits of each key of the tenant, besides the tenant's."
    )


class RouterState(ApiModel):
    """Where the router keeps what each tenant has spent and holds."""

    postgres: PostgresConnection | None = Field(
        default=None,
        description="An existing PostgreSQL: every replica shares the budgets, a restart "
        "loses nothing, and while it cannot be reached budgeted requests are refused (503). "
        "Unset: in the router's memory (one replica; a restart starts the period afresh).",
    )


class ModelRouterSpec(ApiModel):
    """Desired state of a ModelRouter."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.allowExternal || self.targets.all(t, !has(t.external))",
                "external targets need spec.allowExternal: true",
                field_path=".targets",
            ),
            cel(
                "self.strategy != 'weighted' || self.targets.exists(t, t.weight > 0)",
                "the weighted strategy needs a target with weight > 0",
                field_path=".targets",
            ),
            cel(
                "size(self.budgets) == 0 || has(self.auth.apiKeys)",
                "budgets are per API key tenant: set auth.apiKeys",
                field_path=".budgets",
            ),
            cel(
                "size(self.rateLimits) == 0 || has(self.auth.apiKeys)",
                "rate limits are per API key tenant and key: set auth.apiKeys",
                field_path=".rateLimits",
            ),
            cel(
                "self.replicas == 1 || has(self.state.postgres)",
                "more than one replica needs state.postgres (each replica would count "
                "budgets of its own)",
                field_path=".replicas",
            ),
        )
    )

    served_name: str = Field(
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The model name clients ask for.",
    )
    targets: list[RouterTarget] = Field(
        min_length=1,
        max_length=16,
        description="Models it routes to.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    strategy: Strategy = Field(default="priority", description="How a target is chosen.")
    fallback: Fallback = Field(default_factory=Fallback, description="Retries on failure.")
    budgets: list[Budget] = Field(
        default_factory=list,
        max_length=256,
        description="Per tenant spending limits.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["tenant"],
        },
    )
    rate_limits: list[RateLimit] = Field(
        default_factory=list,
        max_length=256,
        description="Per tenant (and per key) requests and tokens per minute.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["tenant"],
        },
    )
    allow_external: bool = Field(
        default=False, description="Allow external providers (off: owned models only)."
    )
    require_passing_eval: bool = Field(
        default=False,
        description="Route only to ModelDeployment targets whose latest EvalJob passed.",
    )
    auth: Auth = Field(default_factory=Auth, description="Who may call the router.")
    network: Network = Field(default_factory=Network, description="Who may reach it.")
    telemetry: Telemetry = Field(default_factory=Telemetry, description="Telemetry settings.")
    state: RouterState = Field(default_factory=RouterState, description="Where budgets are kept.")
    replicas: int = Field(
        default=1, ge=1, le=16, description="Router replicas (more than one: state.postgres)."
    )


class TargetStatus(ApiModel):
    """One target as the operator sees it."""

    name: DnsLabel = Field(description="Target name.")
    ready: bool = Field(default=False, description="Serving now.")
    admitted: bool = Field(default=False, description="Routed to (ready, eval passed).")
    eval_state: Annotated[str, Field(max_length=32)] | None = Field(
        default=None, description="Passed, Failed, Pending or None (no EvalJob)."
    )
    latency_ms: float | None = Field(
        default=None, description="Measured p50 latency (ms) at the router."
    )
    endpoint: str | None = Field(default=None, max_length=2048, description="Its URL.")
    message: str | None = Field(
        default=None, max_length=1024, description="Why it is not admitted, when not obvious."
    )


class ModelRouterStatus(ApiModel):
    """Observed state of a ModelRouter."""

    conditions: list[Condition] = conditions_field("Ready, Progressing, Degraded, PolicyCompliant.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status describes."
    )
    endpoint: str | None = Field(default=None, max_length=2048, description="Base URL.")
    targets: list[TargetStatus] = Field(
        default_factory=list, max_length=16, description="Each target's state."
    )
    ready_targets: int | None = Field(default=None, ge=0, description="Targets routed to.")
