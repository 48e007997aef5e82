"""What the operator saw and did, in the same hash-chained, signed audit log the data plane
writes (freehold_serving.audit; `freehold audit verify` checks it offline).

Events: a resource observed, updated (a new generation) or deleted, with its spec hash, model
digest, region and the field managers that wrote it; a model digest that started serving
(first deployment or promotion); an evaluation's result and gates; every child created,
updated or pruned; every Vault policy and role written or removed; a problem when a
resource's reason changes. Never a
spec's values, a status message or anything read from Vault.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freehold_serving.audit import AuditLog, AuditMetrics, AuditWriter, EventExport
from freehold_serving.signing import Signer

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
        self._served: dict[str, str] = {}  # ModelDeployment uid -> digest it serves
        self._evaluated: set[str] = set()  # EvalJob uids whose result is recorded

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
            export=export,
        )
        return cls(AuditWriter(log, signer is not None, metrics=metrics))

    def resource(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        self._spec_change(kind, event_type, body)
        if event_type != "DELETED":
            self._status_change(kind, body)

    def _status_change(self, kind: str, body: Mapping[str, Any]) -> None:
        """What the status says happened: a digest that started serving (a promotion),
        an evaluation's result and gates."""
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        uid = str(meta.get("uid"))
        resource = {"kind": kind, "namespace": meta.get("namespace"), "name": meta.get("name")}
        if kind == "ModelDeployment" and status.get("servedDigest"):
            digest = str(status["servedDigest"])
            previous = self._served.get(uid)
            if previous != digest:
                self._served[uid] = digest
                self._log.record(
                    "model.served",
                    resource=resource,
                    uid=uid,
                    modelDigest=digest,
                    previousDigest=previous,
                    region=((body.get("spec") or {}).get("residency") or {}).get("region"),
                    backend=status.get("backend"),
                )
        elif (
            kind == "EvalJob"
            and status.get("phase") in ("Succeeded", "Failed")
            and uid not in self._evaluated
        ):
            self._evaluated.add(uid)
            self._log.record(
                "evaluation.finished",
                resource=resource,
                uid=uid,
                phase=status.get("phase"),
                modelDigest=status.get("modelDigest"),
                resultDigest=status.get("resultDigest"),
                signer=status.get("signer"),
                gates=[
                    {
                        "suite": g.get("suite"),
                        "metric": g.get("metric"),
                        "operator": g.get("operator"),
                        "threshold": g.get("threshold"),
                        "value": g.get("value"),
                        "passed": g.get("passed"),
                    }
                    for g in status.get("gates") or []
                ],
            )

    def _spec_change(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid"))
        generation = int(meta.get("generation") or 0)
        if event_type == "DELETED":
            self._generations.pop(uid, None)
            self._served.pop(uid, None)
            self._evaluated.discard(uid)
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
            region=((body.get("spec") or {}).get("residency") or {}).get("region"),
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
