"""`freehold operator`: kopf with our settings, handlers and liveness endpoint."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from freehold.adapters.kubernetes import KubeApi, load_client
from freehold.adapters.vault import VaultApi
from freehold.controllers.model_deployment import ModelDeploymentController
from freehold.handlers import model_deployment
from freehold.settings import OperatorSettings

log = logging.getLogger(__name__)
ANNOTATION_PREFIX = "kopf.freehold.dev"


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # Users read conditions, not kopf's bookkeeping: keep that in annotations.
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    ks.persistence.finalizer = "freehold.dev/finalizer"
    # A watch that silently stalls would freeze reconciliation: time it out and reconnect.
    ks.watching.server_timeout = settings.watch_server_timeout
    ks.watching.client_timeout = settings.watch_client_timeout
    ks.watching.connect_timeout = 30
    ks.execution.max_workers = settings.workers
    # Our resources are known up front: no cluster-wide watch on CRDs (one permission
    # fewer for the chart's RBAC).
    ks.scanning.disabled = True
    ks.posting.level = logging.INFO
    ks.batching.worker_limit = 1000
    return ks


def connect_vault(settings: OperatorSettings) -> VaultApi | None:
    if not settings.vault_address:
        return None
    # A dev or break-glass token from the environment wins; otherwise the operator logs in
    # with its own ServiceAccount token.
    if token := os.environ.get("VAULT_TOKEN"):
        return VaultApi.connect(
            settings.vault_address,
            token,
            ca_bundle=settings.vault_ca_bundle,
            auth_mount=settings.vault_auth_mount,
        )
    return VaultApi.kubernetes_login(
        settings.vault_address,
        settings.vault_role,
        settings.vault_token_path,
        ca_bundle=settings.vault_ca_bundle,
        login_mount=settings.vault_auth_mount,
        auth_mount=settings.vault_auth_mount,
    )


def build_registry(settings: OperatorSettings, kube: KubeApi) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    controller = ModelDeploymentController(kube, settings, vault=connect_vault(settings))
    model_deployment.register(registry, controller, settings.resync_seconds, settings.namespaces)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    return registry


def run(settings: OperatorSettings) -> None:
    kube = KubeApi(load_client(), discovery_ttl=settings.discovery_seconds)
    log.info("watching %s", ", ".join(settings.namespaces) or "all namespaces")
    kopf.run(
        registry=build_registry(settings, kube),
        settings=kopf_settings(settings),
        # One replica (strategy Recreate in the chart): peering would freeze equals.
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
    )
