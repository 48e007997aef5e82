"""What the operator saw and did, in the same hash-chained, signed audit log the data plane
writes (freehold_serving.audit; `freehold audit verify` checks it offline).

Events: a resource observed, updated (a new generation) or deleted, with its spec hash, model
digest and the field managers that wrote it; every child created, updated or pruned; every
Vault policy and role written or removed; a problem when a resource's reason changes. Never a
spec's values, a status message or anything read from Vault.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freehold_serving.audit import AuditLog, AuditMetrics, AuditWriter, EventExport, Signer

if TYPE_CHECKING:
    from freehold.reconciler import Outcome

Key = tuple[str, str, str]


def spec_hash(body: Mapping[str, Any]) -> str:
    spec = body.get("spec") or {}
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def managers(body: Mapping[str, Any]) -> list[str]:
    fields = (body.get("metadata") or {}).get("managedFields") or []
    return sorted({str(f.get("manager")) for f in fields if f.get("manager")})


class OperatorAudit:
    def __init__(self, writer: AuditWriter) -> None:
        self._log = writer
        self._generations: dict[str, int] = {}  # uid -> last recorded generation
        self._reasons: dict[Key, str | None] = {}

    @classmethod
    def open(
        cls,
        directory: Path,
        signer: Signer | None,
        *,
        registry: Any = None,
        export: EventExport | None = None,
    ) -> OperatorAudit:
        # Checkpoints are signed by the writer when it has caught up, not per event.
        metrics = AuditMetrics.of(registry) if registry is not None else None
        log = AuditLog(
            directory / "operator.jsonl",
            "operator",
            signer,
            checkpoint_every=2**62,
            metrics=metrics,
        )
        return cls(AuditWriter(log, signer is not None, metrics=metrics, export=export))

    def resource(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid"))
        generation = int(meta.get("generation") or 0)
        if event_type == "DELETED":
            self._generations.pop(uid, None)
            action = "deleted"
        elif uid not in self._generations:
            action = "observed"  # created, or first seen since the operator started
        elif generation > self._generations[uid]:
            action = "updated"
        else:
            return  # a status or metadata change: not a change of what is wanted
        if event_type != "DELETED":
            self._generations[uid] = generation
        model = ((body.get("spec") or {}).get("model") or {}).get("sha256")
        self._log.record(
            f"resource.{action}",
            resource={"kind": kind, "namespace": meta.get("namespace"), "name": meta.get("name")},
            uid=uid,
            generation=generation,
            specHash=spec_hash(body),
            modelDigest=f"sha256:{model}" if model else None,
            managers=managers(body),
        )

    def outcome(self, key: Key, outcome: Outcome) -> None:
        kind, namespace, name = key
        owner = {"kind": kind, "namespace": namespace, "name": name}
        for action, child_kind, child_name in outcome.changes:
            self._log.record(
                f"child.{action}", owner=owner, child={"kind": child_kind, "name": child_name}
            )
        for action, external in outcome.vault:
            self._log.record(f"vault.{action}", owner=owner, role=external)
        reason = outcome.problem.reason if outcome.problem is not None else None
        if self._reasons.get(key, None) != reason:
            self._reasons[key] = reason
            self._log.record("reconcile.outcome", owner=owner, reason=reason or "Ok")

    def record(self, kind: str, **data: Any) -> None:
        self._log.record(kind, **data)

    def flush(self) -> None:
        self._log.flush()

    def close(self) -> None:
        self._log.close()
