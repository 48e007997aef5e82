"""One OpenTelemetry span per reconcile pass, exported over OTLP/HTTP when the operator has
an endpoint (FREEHOLD_OPERATOR_OTEL_ENDPOINT).

Attributes are the resource's identity (kind, namespace, name) and what the pass did
(result, problem reason, children applied and deleted, drift repaired): never a spec, a
status message (it may quote a spec) or anything read from Vault.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode

if TYPE_CHECKING:
    from freehold.reconciler import Outcome


class ReconcileTracing:
    def __init__(self, exporter: SpanExporter, processor: SpanProcessor | None = None) -> None:
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": "freehold-operator"})
        )
        self._provider.add_span_processor(processor or BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("freehold.operator")

    @classmethod
    def otlp(cls, endpoint: str) -> ReconcileTracing:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces"))

    @contextmanager
    def span(self, kind: str, namespace: str, name: str) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            f"reconcile {kind}",
            attributes={
                "freehold.kind": kind,
                "k8s.namespace.name": namespace,
                "freehold.resource.name": name,
            },
        ) as span:
            yield span

    @staticmethod
    def record(span: Span, outcome: Outcome) -> None:
        problem = outcome.problem
        result = "retry" if outcome.retry else ("problem" if problem else "ok")
        span.set_attribute("freehold.result", result)
        span.set_attribute("freehold.children.applied", len(outcome.applied))
        span.set_attribute("freehold.children.deleted", len(outcome.deleted))
        span.set_attribute("freehold.drift.repaired", len(outcome.repaired))
        if problem is not None:
            span.set_attribute("freehold.problem.reason", problem.reason)
            if problem.retry:
                span.set_status(Status(StatusCode.ERROR, problem.reason))

    def shutdown(self) -> None:
        self._provider.shutdown()
