"""The operator's own Prometheus metrics, on their own port.

Counter labels are kinds, child kinds and condition reasons only: never a resource's name,
spec, secret or prompt (names can be personal data in a namespace-per-user setup). The fleet
gauges (fleet_metrics) name resources, as a fleet view must.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from freehold.adapters.fleet_metrics import FleetCollector, Snapshot

VAULT_REASONS = frozenset(
    {"VaultSealed", "VaultUnreachable", "VaultForbidden", "VaultNotConfigured", "VaultError"}
)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "freehold_operator_reconcile_duration_seconds",
            "Time one reconcile pass took, by kind and result (ok, problem, retry, error).",
            ["kind", "result"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.problems = Counter(
            "freehold_operator_reconcile_problems_total",
            "Passes that ended with a problem reported in status, by kind and reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.drift_repairs = Counter(
            "freehold_operator_drift_repairs_total",
            "Children created or changed back while their owner's spec had not changed.",
            ["kind", "child_kind"],
            registry=self.registry,
        )
        self.vault_failures = Counter(
            "freehold_operator_vault_failures_total",
            "Passes that could not reach or use Vault, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "freehold_operator_queue_depth",
            "Resources waiting for a reconcile pass.",
            registry=self.registry,
        )

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def track_fleet(self, snapshot: Snapshot) -> None:
        self.registry.register(FleetCollector(snapshot))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe(
        self,
        kind: str,
        seconds: float,
        result: str,
        problem_reason: str | None,
        repaired: list[str],
    ) -> None:
        self.reconcile_seconds.labels(kind, result).observe(seconds)
        if problem_reason is not None:
            self.problems.labels(kind, problem_reason).inc()
            if problem_reason in VAULT_REASONS:
                self.vault_failures.labels(problem_reason).inc()
        for child_kind in repaired:
            self.drift_repairs.labels(kind, child_kind).inc()
