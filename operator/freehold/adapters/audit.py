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
import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freehold_serving.audit import AuditLog, Signer

if TYPE_CHECKING:
    from freehold.reconciler import Outcome

log = logging.getLogger(__name__)
Key = tuple[str, str, str]


def spec_hash(body: Mapping[str, Any]) -> str:
    spec = body.get("spec") or {}
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def managers(body: Mapping[str, Any]) -> list[str]:
    fields = (body.get("metadata") or {}).get("managedFields") or []
    return sorted({str(f.get("manager")) for f in fields if f.get("manager")})


class _Writer:
    """Appends from one thread so the controller's event loop never waits on a disk sync
    or a Vault signature; a checkpoint is signed whenever the queue runs dry, so the last
    event written is always covered soon after."""

    def __init__(self, log: AuditLog, signed: bool) -> None:
        self._log = log
        self._signed = signed
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def record(self, kind: str, **data: Any) -> None:
        self._queue.put((kind, data))

    def _run(self) -> None:
        pending = 0
        while True:
            item = self._queue.get()
            if item is not None:
                try:
                    self._log.record(item[0], **item[1])
                    pending += 1
                except Exception as exc:  # never take the operator down; say so loudly
                    log.error(
                        "audit event %s not written: %s: %s", item[0], type(exc).__name__, exc
                    )
            if pending and self._signed and (item is None or self._queue.empty()):
                try:
                    self._log.checkpoint()
                    pending = 0
                except Exception as exc:  # Vault sealed or away: the next event retries
                    log.warning(
                        "audit checkpoint not signed (%s); retried with the next event",
                        type(exc).__name__,
                    )
            if item is None:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        self._log.close()


class OperatorAudit:
    def __init__(self, log: AuditLog, signed: bool = False) -> None:
        self._log = _Writer(log, signed)
        self._generations: dict[str, int] = {}  # uid -> last recorded generation
        self._reasons: dict[Key, str | None] = {}

    @classmethod
    def open(cls, directory: Path, signer: Signer | None) -> OperatorAudit:
        # Checkpoints are signed by the writer when it has caught up, not per event.
        log = AuditLog(directory / "operator.jsonl", "operator", signer, checkpoint_every=2**62)
        return cls(log, signed=signer is not None)

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

    def close(self) -> None:
        self._log.close()
