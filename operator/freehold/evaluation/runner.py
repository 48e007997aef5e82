"""Run an EvalJob's suites against an endpoint; compute metrics with intervals and gates.

Used by `freehold eval run` and by the EvalJob's Kubernetes Job (`freehold eval job`). Items are
scored concurrently but results are kept in dataset order, and the bootstrap is seeded:
the same endpoint, data and seed give the same result file.
"""

from __future__ import annotations

import hashlib
import json
import operator as op
import random
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freehold.api.eval_job import LOWER_IS_BETTER, TASK_METRICS, EvalJobSpec, Gate, Suite
from freehold.evaluation import datasets, lm_eval_tasks
from freehold.evaluation.client import Endpoint
from freehold.evaluation.tasks import Scored, check_items, score

FORMAT = "freehold.dev/eval-result"
BOOTSTRAP = 1000
COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": op.ge,
    ">": op.gt,
    "<=": op.le,
    "<": op.lt,
    "==": op.eq,
}


@dataclass
class MetricValue:
    value: float
    low: float  # 95% bootstrap interval
    high: float
    stderr: float


@dataclass
class SuiteOutcome:
    name: str
    task: str
    metric: str
    samples: int
    dataset: dict[str, str]
    metrics: dict[str, MetricValue]
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GateOutcome:
    suite: str
    metric: str
    operator: str
    threshold: float | None
    value: float | None
    passed: bool
    baseline: float | None = None
    reason: str = ""


def summarise(metric: str, values: list[float], seed: int) -> MetricValue:
    """Mean (or percentile, for latency) with a seeded 95% bootstrap interval."""

    def stat(sample: list[float]) -> float:
        if metric == "ttft_p50_ms":
            return statistics.median(sample)
        if metric == "ttft_p95_ms":
            ordered = sorted(sample)
            return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return statistics.fmean(sample)

    rng = random.Random(seed)
    value = stat(values)
    resampled = sorted(stat(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP))
    stderr = statistics.pstdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return MetricValue(
        value, resampled[int(0.025 * BOOTSTRAP)], resampled[int(0.975 * BOOTSTRAP) - 1], stderr
    )


def run_suite(
    suite: Suite,
    items: list[datasets.Item],
    endpoint: Endpoint,
    concurrency: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
    judge: Endpoint | None = None,
) -> SuiteOutcome:
    chosen = chosen_items(suite, items)

    def one(item: datasets.Item) -> Scored:
        result = score(suite, endpoint, item, items, judge)
        if progress is not None:
            progress(1)
        return result

    # Latency is measured one request at a time: concurrency would measure queueing.
    workers = 1 if suite.task == "latency" else concurrency
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scored = list(pool.map(one, chosen))
    metrics = {
        name: summarise(name, [s.scores[name] for s in scored], seed)
        for name in TASK_METRICS[suite.task]
    }
    return SuiteOutcome(
        name=suite.name,
        task=suite.task,
        metric=suite.metric,
        samples=len(scored),
        dataset={"uri": suite.dataset.uri, "sha256": suite.dataset.sha256},
        metrics=metrics,
        items=[{"index": s.index, "output": s.output, "scores": s.scores} for s in scored],
    )


def check_gates(
    gates: list[Gate], suites: list[SuiteOutcome], baseline: dict[str, float] | None = None
) -> list[GateOutcome]:
    """Each gate against its suite's value. A maxRegression gate becomes a threshold
    from the baseline's value of the same suite: at least baseline - maxRegression (at
    most baseline + maxRegression for latency, where lower is better)."""
    by_name = {s.name: s for s in suites}
    out = []
    for gate in gates:
        measured = by_name.get(gate.suite)
        value = measured.metrics[gate.metric].value if measured else None
        if gate.max_regression is None:
            assert gate.threshold is not None  # the CRD's CEL rule: exactly one of the two
            passed = value is not None and COMPARE[gate.operator](value, gate.threshold)
            out.append(
                GateOutcome(gate.suite, gate.metric, gate.operator, gate.threshold, value, passed)
            )
            continue
        base = (baseline or {}).get(gate.suite)
        if base is None:
            out.append(
                GateOutcome(
                    gate.suite,
                    gate.metric,
                    gate.operator,
                    None,
                    value,
                    False,
                    reason=f"no baseline value for suite {gate.suite}",
                )
            )
            continue
        lower = gate.metric in LOWER_IS_BETTER
        bound = base + gate.max_regression if lower else base - gate.max_regression
        operator = "<=" if lower else ">="
        passed = value is not None and COMPARE[operator](value, bound)
        out.append(
            GateOutcome(gate.suite, gate.metric, operator, bound, value, passed, baseline=base)
        )
    return out


def load_suites(
    spec: EvalJobSpec, pvc_root: Path = Path("/data"), file_root: Path | None = None
) -> tuple[EvalJobSpec, dict[str, list[datasets.Item]]]:
    """Every suite's items, read once: every digest and item is checked before anything
    runs. lm-eval task suites come back as lm-evaluation-harness would run them (their
    stops, lengths and exact_match options), so the spec returned is the one to run."""
    loaded = {}
    suites = []
    for given in spec.suites:
        path, raw = datasets.read(given.dataset.uri, given.dataset.sha256, pvc_root, file_root)
        suite = given
        if given.dataset.format == "lm-eval":
            assert given.dataset.data_sha256 is not None  # the CRD's CEL rule
            suite, items = lm_eval_tasks.load(given, raw, path, given.dataset.data_sha256)
        else:
            items = datasets.parse(given.dataset.uri, raw)
        check_items(suite, items)
        loaded[suite.name] = items
        suites.append(suite)
    return spec.model_copy(update={"suites": suites}), loaded


def chosen_items(suite: Suite, items: list[datasets.Item]) -> list[datasets.Item]:
    return items[: suite.limit] if suite.limit else items


def run(
    spec: EvalJobSpec,
    loaded: dict[str, list[datasets.Item]],
    endpoint: Endpoint,
    name: str,
    progress: Callable[[int], None] | None = None,
    *,
    judge: Endpoint | None = None,
    baseline: dict[str, float] | None = None,
    model_digest: str | None = None,
) -> dict[str, Any]:
    """`loaded`: the suites' items, from load_suites; `baseline`: suite -> value of the
    baseline EvalJob, for maxRegression gates."""
    started = datetime.now(UTC)
    suites = [
        run_suite(s, loaded[s.name], endpoint, spec.concurrency, spec.seed, progress, judge)
        for s in spec.suites
    ]
    gates = check_gates(spec.gates, suites, baseline)
    result = {
        "format": FORMAT,
        "formatVersion": 1,
        "job": name,
        "target": {"model": endpoint.model, "url": endpoint.base_url, "digest": model_digest},
        "judge": {"model": judge.model, "url": judge.base_url} if judge else None,
        "baseline": baseline,
        "seed": spec.seed,
        "startTime": started.isoformat(),
        "completionTime": datetime.now(UTC).isoformat(),
        "suites": [asdict(s) for s in suites],
        "gates": [asdict(g) for g in gates],
        "gatesPassed": all(g.passed for g in gates),
    }
    canonical = json.dumps(
        {k: v for k, v in result.items() if k not in ("startTime", "completionTime")},
        sort_keys=True,
        separators=(",", ":"),
    )
    result["digest"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return result
