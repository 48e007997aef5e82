"""The fleet as Prometheus gauges, computed at scrape time from the resources the
controller already holds (no API call per scrape): what is deployed where, which digest
serves, how many replicas are ready, what the latest evaluations scored.

Unlike the operator's counters these name resources (namespace and name, as
kube-state-metrics does): a fleet view is about which deployment is where. They never
carry a spec's values, a message or anything read from Vault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from freehold.conditions import is_true

Snapshot = Callable[[], Iterable[tuple[str, Mapping[str, Any]]]]  # (kind, body)


def _ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class FleetCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "freehold_resource_ready",
            "1 if the resource's Ready (EvalJob: Completed) condition is True.",
            labels=["kind", "namespace", "name"],
        )
        info = GaugeMetricFamily(
            "freehold_model_deployment_info",
            "One per ModelDeployment: the digest it serves, its region, backend and engine.",
            labels=["namespace", "name", "served_digest", "region", "backend", "engine"],
        )
        replicas = GaugeMetricFamily(
            "freehold_model_deployment_replicas",
            "Replicas of a ModelDeployment by state (desired, ready).",
            labels=["namespace", "name", "state"],
        )
        score = GaugeMetricFamily(
            "freehold_eval_score",
            "Latest value of each suite of a finished EvalJob, by the model digest evaluated.",
            labels=["namespace", "evaljob", "suite", "metric", "model_digest"],
        )
        gate = GaugeMetricFamily(
            "freehold_eval_gate_passed",
            "1 if a gate of a finished EvalJob held, 0 if it failed.",
            labels=["namespace", "evaljob", "suite", "metric", "model_digest"],
        )
        finished = GaugeMetricFamily(
            "freehold_eval_completion_timestamp_seconds",
            "When a finished EvalJob completed (Unix time), with whether all its gates held.",
            labels=["namespace", "evaljob", "model_digest", "gates_passed"],
        )
        for kind, body in self._snapshot():
            meta = body.get("metadata") or {}
            spec, status = body.get("spec") or {}, body.get("status") or {}
            ns, name = str(meta.get("namespace")), str(meta.get("name"))
            up = is_true(body, "Completed" if kind == "EvalJob" else "Ready")
            ready.add_metric([kind, ns, name], 1.0 if up else 0.0)
            if kind == "ModelDeployment":
                info.add_metric(
                    [
                        ns,
                        name,
                        str(status.get("servedDigest") or ""),
                        str((spec.get("residency") or {}).get("region") or ""),
                        str(status.get("backend") or ""),
                        str((spec.get("engine") or {}).get("name") or ""),
                    ],
                    1.0,
                )
                for state in ("desired", "ready"):
                    value = status.get(f"{state}Replicas")
                    if value is not None:
                        replicas.add_metric([ns, name, state], float(value))
            elif kind == "EvalJob" and status.get("phase") in ("Succeeded", "Failed"):
                digest = str(status.get("modelDigest") or "")
                for suite in status.get("suites") or []:
                    if suite.get("value") is not None:
                        labels = [ns, name, str(suite["name"]), str(suite["metric"]), digest]
                        score.add_metric(labels, float(suite["value"]))
                for result in status.get("gates") or []:
                    labels = [ns, name, str(result["suite"]), str(result["metric"]), digest]
                    gate.add_metric(labels, 1.0 if result.get("passed") else 0.0)
                done = _ts(status.get("completionTime"))
                if done is not None:
                    passed = "true" if is_true(body, "GatesPassed") else "false"
                    finished.add_metric([ns, name, digest, passed], done)
        yield from (ready, info, replicas, score, gate, finished)
