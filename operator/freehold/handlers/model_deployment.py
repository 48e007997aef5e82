"""kopf registrations for ModelDeployment. Thin: the controller does the work."""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from freehold.api.base import GROUP, VERSION
from freehold.controllers.model_deployment import ModelDeploymentController

PLURAL = "modeldeployments"
log = logging.getLogger(__name__)


def register(
    registry: kopf.OperatorRegistry,
    controller: ModelDeploymentController,
    resync_seconds: float,
    namespaces: list[str],
) -> None:
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        def notify(type_: str, reason: str, message: str) -> None:
            kopf.event(body, type=type_, reason=reason, message=message)

        controller.reconcile(body, patch.status.update, notify)

    # Only ModelDeployments that use Vault carry our finalizer; kopf adds none of its own
    # (optional=True), so deleting the others never waits for the operator.
    @kopf.on.delete(GROUP, VERSION, PLURAL, optional=True, registry=registry)
    def finalize(body: kopf.Body, **_: Any) -> None:
        controller.finalize(body)

    # Level-based drift repair: every resync, each resource is reconciled again, so a
    # deleted or edited child is restored and status follows what the children report.
    # A thread rather than kopf.timer, which would add a finalizer to every resource.
    stop = threading.Event()

    def resync_forever() -> None:
        while not stop.wait(resync_seconds):
            try:
                controller.resync(namespaces or [None])
            except Exception:  # keep resyncing: one bad pass must not end drift repair
                log.exception("resync pass failed")

    @kopf.on.startup(registry=registry)
    def start_resync(**_: Any) -> None:
        threading.Thread(target=resync_forever, name="resync", daemon=True).start()

    @kopf.on.cleanup(registry=registry)
    def stop_resync(**_: Any) -> None:
        stop.set()
