"""EvalJob: evaluate a model on pinned datasets and gate its promotion."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from freehold.api.base import (
    ApiModel,
    Condition,
    ExternalSecret,
    LocalObjectReference,
    Sha256,
    cel,
    conditions_field,
    rules,
)

DATASET_URI_PATTERN = r"^(pvc|oci|s3|file|package|https?)://[^\s]+$"

Task = Literal[
    "exact_match",
    "contains",
    "regex",
    "multiple_choice",
    "generation",
    "json_schema",
    "latency",
    "judge",
]
Metric = Literal[
    "exact_match",
    "contains",
    "regex_match",
    "accuracy",
    "acc_norm",
    "chrf",
    "bleu",
    "rouge_l",
    "json_valid",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "tokens_per_s",
    "judge_score",
]
# What each task computes; a suite's `metric` (the one its gates read) must be among them.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "exact_match": ("exact_match",),
    "contains": ("contains",),
    "regex": ("regex_match",),
    "multiple_choice": ("accuracy", "acc_norm"),
    "generation": ("chrf", "bleu", "rouge_l"),
    "json_schema": ("json_valid",),
    "latency": ("ttft_p50_ms", "ttft_p95_ms", "tokens_per_s"),
    "judge": ("judge_score",),
}
# Metrics where lower is better: a regression is a rise, not a fall.
LOWER_IS_BETTER = frozenset({"ttft_p50_ms", "ttft_p95_ms"})
Operator = Literal[">=", ">", "<=", "<", "=="]
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


class EvalKey(ExternalSecret):
    """A key the evaluated (or judging) model accepts, in Vault (KV v2): the evaluation's
    pod reads it itself, as its own workload, and sends it with every request."""


API_KEY_DESCRIPTION = (
    "For a model that requires API keys (a ModelDeployment's spec.auth.apiKeys, or an "
    "endpoint's own): a Vault KV v2 field holding a key it accepts (make one with `freehold "
    "keys create --of modeldeployment/NAME --tenant evaluation --into MOUNT/PATH`), in "
    "this namespace's Vault paths. The evaluation's pod reads it as its own workload; the "
    "key is never in the spec, the Job or its config."
)


class Target(ApiModel):
    """What is evaluated: a ModelDeployment or any OpenAI-compatible endpoint."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.modelDeploymentRef) != has(self.endpoint)",
                "set exactly one of target.modelDeploymentRef and target.endpoint",
            ),
            cel(
                "!self.candidate || has(self.modelDeploymentRef)",
                "candidate applies to a modelDeploymentRef only",
                field_path=".candidate",
            ),
        )
    )

    model_deployment_ref: LocalObjectReference | None = Field(
        default=None, description="A ModelDeployment in this namespace."
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of an OpenAI-compatible API (ending before /v1).",
    )
    model: str | None = Field(
        default=None,
        max_length=253,
        description="Model name to request at the endpoint; defaults to its first model "
        "(for a ModelDeployment, its served name).",
    )
    candidate: bool = Field(
        default=False,
        description="Evaluate the ModelDeployment's candidate (the new model digest its "
        "promotion holds back) instead of what it serves. Set by the operator on the "
        "EvalJobs it creates for spec.promotion.",
    )
    api_key: EvalKey | None = Field(default=None, description=API_KEY_DESCRIPTION)


class Dataset(ApiModel):
    """A pinned dataset: the digest makes results reproducible and auditable."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "(self.format == 'lm-eval') == has(self.dataSha256)",
                "an lm-eval task pins its data file too: set dataSha256 (and only then)",
                field_path=".dataSha256",
            ),
        )
    )

    uri: str = Field(
        max_length=2048,
        pattern=DATASET_URI_PATTERN,
        description="Location of the dataset (JSON Lines), or of an lm-evaluation-harness "
        "task YAML when format is lm-eval.",
    )
    sha256: Sha256 = Field(description="Required SHA-256 of the file at uri.")
    format: Literal["jsonl", "lm-eval"] = Field(
        default="jsonl",
        description="jsonl: items in Freehold's fields. lm-eval: an lm-evaluation-harness "
        "task (generate_until or multiple_choice, templates only, zero-shot) whose data "
        "file is local, beside the YAML; its prompts, targets, stops and metric options "
        "are used as lm-evaluation-harness uses them.",
    )
    data_sha256: Sha256 | None = Field(
        default=None, description="lm-eval: SHA-256 of the task's test-split data file."
    )


class Generation(ApiModel):
    """Generation arguments for generative suites."""

    max_tokens: int = Field(default=256, ge=1, le=32768, description="Tokens per answer.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, ge=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=4, description="Stop sequences."
    )


class Normalize(ApiModel):
    """How answers and targets are normalised before they are compared (in this order)."""

    ignore: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=8,
        description="Regular expressions removed first (lm-evaluation-harness's "
        "regexes_to_ignore).",
    )
    lowercase: bool = Field(default=True, description="Compare case-insensitively.")
    strip_punctuation: bool = Field(default=True, description="Drop punctuation.")
    collapse_whitespace: bool = Field(default=True, description="Trim; one space between words.")


class Suite(ApiModel):
    """One evaluation suite: a task over a pinned dataset (JSON Lines; see
    docs/evaluation.md for each task's fields)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                " || ".join(
                    f"(self.task == '{task}' && self.metric in {list(metrics)})"
                    for task, metrics in TASK_METRICS.items()
                ),
                "metric must be one the task computes: exact_match: exact_match; contains: "
                "contains; regex: regex_match; multiple_choice: accuracy or acc_norm; "
                "generation: chrf, bleu or rouge_l; json_schema: json_valid; latency: "
                "ttft_p50_ms, ttft_p95_ms or tokens_per_s; judge: judge_score",
                field_path=".metric",
            ),
            cel(
                "(self.task == 'judge') == has(self.rubric)",
                "a judge suite needs a rubric, and only a judge suite takes one",
                field_path=".rubric",
            ),
        )
    )

    name: str = Field(
        max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$", description="Suite name."
    )
    task: Task = Field(default="exact_match", description="How each item is scored.")
    dataset: Dataset = Field(description="The suite's dataset.")
    metric: Metric = Field(description="The metric its gates read (the task computes all of its).")
    normalize: Normalize = Field(
        default_factory=Normalize, description="Normalisation for exact_match and contains."
    )
    limit: int | None = Field(
        default=None, ge=1, le=10000000, description="Evaluate only the first N samples."
    )
    few_shot: int = Field(default=0, ge=0, le=64, description="Examples put before each one.")
    generation: Generation = Field(default_factory=Generation, description="Generation arguments.")
    rubric: str | None = Field(
        default=None,
        max_length=4096,
        description="judge suites: how the judge model scores an answer from 1 (worst) to "
        "5 (best). The judge sees the rubric, the input, the reference (if the item has "
        "one) and the answer, and replies with JSON-schema-constrained output.",
    )


class Gate(ApiModel):
    """A bound a suite's metric must meet: a threshold, or the most it may regress from
    the baseline EvalJob's value."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.threshold) != has(self.maxRegression)",
                "set exactly one of threshold and maxRegression",
            ),
        )
    )

    suite: str = Field(max_length=63, description="Name of a suite of this job.")
    metric: Metric = Field(description="The metric compared.")
    operator: Operator = Field(default=">=", description="Comparison with the threshold.")
    threshold: float | None = Field(default=None, description="Value the metric is compared with.")
    max_regression: float | None = Field(
        default=None,
        ge=0,
        description="Most the metric may be worse than in the baseline (absolute: 0.02 is "
        "two points of accuracy; for latency, milliseconds more). Needs spec.baseline, or "
        "runs under a ModelDeployment's promotion, whose baseline is the served version.",
    )


_TEMPLATE_RULES = (
    cel(
        "self.gates.all(g, self.suites.exists(s, s.name == g.suite))",
        "every gate must name a suite of this job",
        field_path=".gates",
    ),
    cel(
        "self.gates.all(g, self.suites.exists(s, s.name == g.suite && s.metric == g.metric))",
        "a gate's metric must be the metric its suite computes",
        field_path=".gates",
    ),
    cel(
        "!self.suites.exists(s, s.task == 'judge') || has(self.judge)",
        "judge suites need spec.judge: the model that scores the answers",
        field_path=".judge",
    ),
)


class Judge(ApiModel):
    """The model that scores judge suites: a ModelDeployment or an endpoint."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.modelDeploymentRef) != has(self.endpoint)",
                "set exactly one of judge.modelDeploymentRef and judge.endpoint",
            ),
        )
    )

    model_deployment_ref: LocalObjectReference | None = Field(
        default=None, description="A ModelDeployment in this namespace."
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of an OpenAI-compatible API (ending before /v1).",
    )
    model: str | None = Field(default=None, max_length=253, description="Model name to request.")
    api_key: EvalKey | None = Field(default=None, description=API_KEY_DESCRIPTION)


class EvalTemplate(ApiModel):
    """What to evaluate and the gates, without the target: a ModelDeployment's promotion
    creates an EvalJob from it for each model digest."""

    model_config = ConfigDict(json_schema_extra=rules(*_TEMPLATE_RULES))

    suites: list[Suite] = Field(
        min_length=1,
        max_length=32,
        description="Suites to run.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    gates: list[Gate] = Field(
        default_factory=list, max_length=64, description="Bounds that must all hold."
    )
    judge: Judge | None = Field(default=None, description="The model judge suites ask.")
    concurrency: int = Field(default=4, ge=1, le=256, description="Requests in flight at once.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for sampling and shuffling.")
    timeout_seconds: int = Field(
        default=21600,
        ge=60,
        le=604800,
        description="The evaluation Job's deadline (activeDeadlineSeconds).",
    )


class EvalJobSpec(EvalTemplate):
    """Desired state of an EvalJob."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            *_TEMPLATE_RULES,
            cel(
                "!self.gates.exists(g, has(g.maxRegression)) || has(self.baseline)",
                "maxRegression gates compare with a baseline: set spec.baseline",
                field_path=".baseline",
            ),
            cel(
                "!self.offline || self.suites.all(s, !s.dataset.uri.startsWith('http'))",
                "offline jobs cannot fetch datasets over http(s): use pvc://, file:// or "
                "package://, or set offline to false",
                field_path=".suites",
            ),
            cel(
                "self == oldSelf",
                "an EvalJob is immutable: create a new one to evaluate again",
                reason="FieldValueForbidden",
            ),
        )
    )

    target: Target = Field(description="What is evaluated.")
    baseline: LocalObjectReference | None = Field(
        default=None,
        description="A finished EvalJob (this namespace) that maxRegression gates compare "
        "with, suite by suite.",
    )
    offline: bool = Field(
        default=True,
        description="Run with no network access beyond the target (datasets must be local).",
    )


class SuiteResult(ApiModel):
    """The outcome of one suite."""

    name: str = Field(max_length=63, description="Suite name.")
    metric: Metric = Field(description="Metric computed.")
    value: float | None = Field(default=None, description="Metric value.")
    low: float | None = Field(default=None, description="Lower end of the 95% interval.")
    high: float | None = Field(default=None, description="Upper end of the 95% interval.")
    samples: int = Field(default=0, ge=0, description="Samples evaluated.")


class GateResult(ApiModel):
    """The outcome of one gate."""

    suite: str = Field(max_length=63, description="Suite the gate reads.")
    metric: Metric = Field(description="The metric compared.")
    operator: Operator = Field(description="Comparison.")
    threshold: float | None = Field(default=None, description="Bound compared with.")
    baseline: float | None = Field(default=None, description="Baseline value (regression).")
    value: float | None = Field(default=None, description="Observed value.")
    passed: bool = Field(description="Whether the gate holds.")


class Progress(ApiModel):
    """How far the job has come."""

    completed: int = Field(default=0, ge=0, description="Samples done.")
    total: int = Field(default=0, ge=0, description="Samples in all.")


class EvalJobStatus(ApiModel):
    """Observed state of an EvalJob."""

    phase: Phase = Field(default="Pending", description="Pending, Running, Succeeded, Failed.")
    conditions: list[Condition] = conditions_field("Completed, GatesPassed, PolicyCompliant.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status describes."
    )
    progress: Progress | None = Field(default=None, description="Samples done of all.")
    suites: list[SuiteResult] = Field(
        default_factory=list, max_length=32, description="Per-suite results."
    )
    gates: list[GateResult] = Field(
        default_factory=list, max_length=64, description="Per-gate results."
    )
    artifact: str | None = Field(
        default=None, max_length=2048, description="Where the full, signed results are."
    )
    result_digest: str | None = Field(
        default=None, max_length=71, description="sha256 of the result's canonical JSON."
    )
    signer: str | None = Field(
        default=None, max_length=128, description="Key id that signed the result."
    )
    model_digest: str | None = Field(
        default=None, max_length=71, description="sha256 of the model file evaluated."
    )
    endpoint: str | None = Field(default=None, max_length=2048, description="URL evaluated.")
    message: str | None = Field(
        default=None, max_length=1024, description="Why the evaluation failed, if it did."
    )
    start_time: datetime | None = Field(default=None, description="When the job started.")
    completion_time: datetime | None = Field(default=None, description="When it finished.")
