"""MemoryStore as the reconciler sees it: checks, children, Vault keys and role, status.
Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freehold.adapters.kubernetes import ResourceType
from freehold.api import kinds as api_kinds
from freehold.api.memory_store import MemoryStoreSpec
from freehold.builders.memory_args import transit_key_names
from freehold.builders.memory_store import (
    build_memory_children,
    build_vault_role,
    workload_kind,
)
from freehold.builders.model_workload import SERVE_PORT, BuildContext
from freehold.builders.vault import transit_key_ref, vault_name
from freehold.conditions import condition
from freehold.kinds.base import (
    CONFIG_MAP,
    DEPLOYMENT,
    NETWORK_POLICY,
    PDB,
    SERVICE,
    SERVICE_ACCOUNT,
    STATEFULSET,
    VAULT_FINALIZER,
    VAULT_REASONS,
    KindBase,
)
from freehold.kinds.checks import (
    api_keys_in_namespace,
    positive_quantities,
    postgres_credentials_in_namespace,
)
from freehold.reconciler import (
    ChildKey,
    Desired,
    Facts,
    Probe,
    Problem,
    StatusReport,
)

PROBE_SECONDS = 60.0
CHILD_TYPES: tuple[ResourceType, ...] = (
    SERVICE_ACCOUNT,
    SERVICE,
    STATEFULSET,
    DEPLOYMENT,
    PDB,
    NETWORK_POLICY,
    CONFIG_MAP,
)


class MemoryStoreKind(KindBase[MemoryStoreSpec]):
    api = api_kinds.MEMORY_STORE
    child_types: tuple[ResourceType, ...] = CHILD_TYPES
    status_from = frozenset({"StatefulSet", "Deployment"})
    # The store's keys live in Vault: its role always, its transit keys on Destroy.
    finalizer: str | None = VAULT_FINALIZER

    def check(self, spec: MemoryStoreSpec, meta: Mapping[str, Any]) -> None:
        sqlite = spec.backend.sqlite
        quantities = [
            ("spec.resources.cpu", spec.resources.cpu),
            ("spec.resources.memory", spec.resources.memory),
        ]
        if sqlite is not None and spec.backend.type == "sqlite":
            quantities.append(("spec.backend.sqlite.storageSize", sqlite.storage_size))
        positive_quantities(quantities)
        api_keys_in_namespace(spec.auth, self.config.vault_kv_prefix, meta["namespace"])
        pg = spec.backend.postgres if spec.backend.type == "postgres" else None
        if pg is not None:
            postgres_credentials_in_namespace(
                pg.credentials, self.config.vault_kv_prefix, meta["namespace"]
            )

    def build(self, spec: MemoryStoreSpec, meta: Mapping[str, Any], facts: Facts) -> Desired:
        ctx = self.context(meta)
        # Encryption at rest needs Vault on a cluster (a key file would sit beside the
        # data it protects): without it the reconciler reports VaultNotConfigured.
        return Desired(build_memory_children(spec, ctx), [build_vault_role(spec, ctx)])

    def external_names(self, parent: Mapping[str, Any]) -> list[str]:
        meta = parent["metadata"]
        names = [vault_name(self.context(meta))]
        try:
            spec = self.parse(dict(parent))
        except Exception:
            return names  # an unreadable spec: keep the keys (the safe side)
        if spec.deletion_policy == "Destroy":
            mount = spec.encryption.transit_mount
            key, signing = transit_key_names(meta["namespace"], meta["name"], spec)
            names += [transit_key_ref(mount, key), transit_key_ref(mount, signing)]
        return names

    def probe(
        self,
        spec: MemoryStoreSpec,
        meta: Mapping[str, Any],
        children: Mapping[ChildKey, Any],
        facts: Facts,
    ) -> Probe | None:
        """While the store serves, read its aggregate counts (no subject, no content)."""
        ctx = self.context(meta)
        workload = children.get(("apps/v1", workload_kind(spec), ctx.name)) or {}
        if int((workload.get("status") or {}).get("readyReplicas") or 0) < 1:
            return None
        return Probe(f"{endpoint(ctx)}/status", every=PROBE_SECONDS)

    def status(
        self,
        spec: MemoryStoreSpec,
        meta: Mapping[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
    ) -> StatusReport:
        ctx = self.context(meta)
        kind = workload_kind(spec)
        workload = children.get(("apps/v1", kind, ctx.name))
        ready_replicas = int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)
        if problem is not None:
            reason = "SecretsUnavailable" if problem.reason in VAULT_REASONS else problem.reason
            ready = condition("Ready", False, reason, problem.message)
        elif workload is None:
            ready = condition("Ready", False, "Creating", f"creating the {kind}")
        elif ready_replicas >= 1:
            ready = condition("Ready", True, "Serving", "the memory API is serving")
        else:
            ready = condition(
                "Ready",
                False,
                "Starting",
                "waiting for the store's pod: it binds its volume, unwraps its keys in "
                "Vault and loads the embedding model before it reports ready"
                if kind == "StatefulSet"
                else "waiting for a store replica: it connects to PostgreSQL with credentials "
                "from Vault, unwraps its keys and loads the embedding model before it "
                "reports ready",
            )
        vault_problem = problem is not None and problem.reason in VAULT_REASONS
        conditions = [
            ready,
            condition(
                "Progressing",
                problem is None and ready_replicas < 1,
                "Reconciling" if problem is None and ready_replicas < 1 else "Stable",
                "rolling out the current spec" if ready_replicas < 1 else "up to date",
            ),
            condition(
                "SecretsUnavailable",
                vault_problem,
                problem.reason if vault_problem and problem else "VaultReady",
                f"{problem.message}; retrying"
                if vault_problem and problem
                else "the store's transit keys, policy and role are set",
            ),
        ]
        fields: dict[str, Any] = {"endpoint": endpoint(ctx), "backend": spec.backend.type}
        if kind == "Deployment":
            fields["readyReplicas"] = ready_replicas
        fields.update(observed_fields(facts.observed))
        return StatusReport(conditions, fields)


def endpoint(ctx: BuildContext) -> str:
    return f"http://{ctx.name}.{ctx.namespace}.svc:{SERVE_PORT}/v1/memory"


def observed_fields(observed: Mapping[str, Any] | None) -> dict[str, Any]:
    """The store's /status answer, checked against the status schema: a store that
    answers nonsense changes nothing."""
    if not observed:
        return {}
    from pydantic import ValidationError

    from freehold.api.memory_store import MemoryStoreStatus

    picked = {
        "records": observed.get("records"),
        "subjects": observed.get("subjects"),
        "lastExport": observed.get("lastExport"),
        "lastImport": observed.get("lastImport"),
        "signer": observed.get("signer"),
        "signerPublicKey": observed.get("signerPublicKey"),
    }
    try:
        status = MemoryStoreStatus.model_validate(
            {k: v for k, v in picked.items() if v is not None}
        )
    except ValidationError:
        return {}
    dumped = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    dumped.pop("conditions", None)
    return dumped
