"""The kinds of the freehold.dev API: names, models and what `kubectl get` shows."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from freehold.api.base import GROUP, VERSION
from freehold.api.eval_job import EvalJobSpec, EvalJobStatus
from freehold.api.memory_store import MemoryStoreSpec, MemoryStoreStatus
from freehold.api.model_deployment import ModelDeploymentSpec, ModelDeploymentStatus
from freehold.api.model_router import ModelRouterSpec, ModelRouterStatus
from freehold.api.sovereignty_policy import SovereigntyPolicySpec, SovereigntyPolicyStatus


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)
    categories: tuple[str, ...] = ("freehold",)
    scope: str = "Namespaced"  # or "Cluster"

    @property
    def group(self) -> str:
        return GROUP

    @property
    def version(self) -> str:
        return VERSION

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _condition(type_: str) -> str:
    return f'.status.conditions[?(@.type=="{type_}")]'


_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

MODEL_DEPLOYMENT = Kind(
    kind="ModelDeployment",
    plural="modeldeployments",
    singular="modeldeployment",
    short_names=("md", "mdep"),
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    description="An open model served on your own cluster behind an OpenAI-compatible "
    "endpoint, digest-verified, locked down, and kept where its residency says.",
    columns=(
        PrinterColumn("Ready", _condition("Ready") + ".status", description="Serving."),
        PrinterColumn("Model", ".status.servedName", description="Model name clients use."),
        PrinterColumn("Engine", ".spec.engine.name"),
        PrinterColumn("Replicas", ".status.readyReplicas", "integer", "Replicas serving."),
        PrinterColumn("Endpoint", ".status.endpoint", description="OpenAI-compatible base URL."),
        PrinterColumn("Reason", _condition("Ready") + ".reason", priority=1),
        PrinterColumn("Backend", ".status.backend", priority=1),
        PrinterColumn("Region", ".spec.residency.region", priority=1),
        _AGE,
    ),
)

MEMORY_STORE = Kind(
    kind="MemoryStore",
    plural="memorystores",
    singular="memorystore",
    short_names=("mem",),
    spec=MemoryStoreSpec,
    status=MemoryStoreStatus,
    description="Portable, encrypted memory for users and agents, exportable as signed bundles.",
    columns=(
        PrinterColumn("Ready", _condition("Ready") + ".status"),
        PrinterColumn("Backend", ".spec.backend.type"),
        PrinterColumn("Records", ".status.records.total", "integer", "Records held."),
        PrinterColumn("Subjects", ".status.subjects", "integer", "Users with records."),
        PrinterColumn("Endpoint", ".status.endpoint"),
        PrinterColumn("Replicas", ".status.readyReplicas", "integer", priority=1),
        PrinterColumn("Reason", _condition("Ready") + ".reason", priority=1),
        PrinterColumn("Region", ".spec.residency.region", priority=1),
        _AGE,
    ),
)

EVAL_JOB = Kind(
    kind="EvalJob",
    plural="evaljobs",
    singular="evaljob",
    short_names=("ej",),
    spec=EvalJobSpec,
    status=EvalJobStatus,
    description="An evaluation of a model on pinned datasets, with gates for promotion.",
    columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Gates", _condition("GatesPassed") + ".status", description="All passed."),
        PrinterColumn("Done", ".status.progress.completed", "integer", priority=1),
        PrinterColumn("Total", ".status.progress.total", "integer", priority=1),
        PrinterColumn("Artifact", ".status.artifact", priority=1),
        _AGE,
    ),
)

MODEL_ROUTER = Kind(
    kind="ModelRouter",
    plural="modelrouters",
    singular="modelrouter",
    short_names=("mr",),
    spec=ModelRouterSpec,
    status=ModelRouterStatus,
    description="One model name in front of several owned models: routed by cost, latency, "
    "quality or capability, with fallbacks and budgets.",
    columns=(
        PrinterColumn("Ready", _condition("Ready") + ".status"),
        PrinterColumn("Model", ".spec.servedName", description="Model name clients use."),
        PrinterColumn("Strategy", ".spec.strategy"),
        PrinterColumn("Targets", ".status.readyTargets", "integer", "Targets routed to."),
        PrinterColumn("Endpoint", ".status.endpoint"),
        PrinterColumn("Reason", _condition("Ready") + ".reason", priority=1),
        _AGE,
    ),
)

SOVEREIGNTY_POLICY = Kind(
    kind="SovereigntyPolicy",
    plural="sovereigntypolicies",
    singular="sovereigntypolicy",
    short_names=("sp", "sovpol"),
    spec=SovereigntyPolicySpec,
    status=SovereigntyPolicyStatus,
    description="Organisation-wide rules (regions, model sources, signatures, licences, "
    "external providers, content capture), enforced by the API server at admission and "
    "reported on every resource as PolicyCompliant.",
    columns=(
        PrinterColumn("Ready", _condition("Ready") + ".status", description="In force."),
        PrinterColumn("Rules", ".status.rules", "integer", "Rules enforced."),
        PrinterColumn("Admission", ".status.admissionPolicies", priority=1),
        _AGE,
    ),
    scope="Cluster",
)

KINDS: tuple[Kind, ...] = (
    MODEL_DEPLOYMENT,
    MEMORY_STORE,
    EVAL_JOB,
    MODEL_ROUTER,
    SOVEREIGNTY_POLICY,
)
KINDS_BY_NAME: dict[str, Kind] = {k.kind: k for k in KINDS}
