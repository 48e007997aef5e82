"""Reconcile spans: one per pass, through the controller, with what the pass did and the
resource's identity, never its spec or a status message. (Exporting over OTLP is the SDK's;
an in-memory exporter stands in for the collector, which cannot run here.)"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from freehold.adapters.tracing import ReconcileTracing
from freehold.controller import Controller
from freehold.reconciler import Outcome, Problem

CANARY = "canary-7f3a-secret-ish"


class FixedReconciler:
    """Returns a fixed outcome: the controller's side is what is tested here."""

    def reconcile(self, kind: Any, parent: dict[str, Any], owned: Any) -> Outcome:
        return Outcome(problem=Problem("InvalidSpec", f"spec.x: {CANARY} is wrong", False))


class AnyKind:
    class api:  # noqa: N801 - mirrors KindController.api
        kind = "ModelDeployment"

    status_from: frozenset[str] = frozenset()


async def _one_pass(tracing: ReconcileTracing) -> None:
    controller = Controller(
        FixedReconciler(),  # type: ignore[arg-type]
        [AnyKind()],  # type: ignore[list-item]
        workers=1,
        resync_seconds=3600,
        tracing=tracing,
    )
    await controller.start()
    body = {
        "metadata": {"name": "gemma", "namespace": "team", "uid": "u1", "resourceVersion": "1"},
        "spec": {"model": {"uri": CANARY}},
    }
    controller.parent_event("ModelDeployment", "ADDED", body)
    await asyncio.sleep(0.3)
    await controller.stop()


def test_one_span_per_pass_without_spec_or_messages() -> None:
    exporter = InMemorySpanExporter()
    tracing = ReconcileTracing(exporter, SimpleSpanProcessor(exporter))
    asyncio.run(_one_pass(tracing))
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["reconcile ModelDeployment"]
    attrs = dict(spans[0].attributes or {})
    assert attrs["freehold.kind"] == "ModelDeployment"
    assert attrs["k8s.namespace.name"] == "team" and attrs["freehold.resource.name"] == "gemma"
    assert attrs["freehold.result"] == "problem"
    assert attrs["freehold.problem.reason"] == "InvalidSpec"
    assert CANARY not in repr(attrs) and CANARY not in repr(spans[0].events)
