"""A tamper-evident audit log: JSON Lines, each event carrying the hash of the one before,
with signed checkpoints.

Every line is canonical JSON with `seq`, `time`, `component`, `type`, `data`, `prev` (the
previous line's hash; 64 zeros for the first) and `hash` (sha256 of the line without
`hash`). A checkpoint is a line of type `checkpoint` whose data signs `seq:hash` of the
event before it (Ed25519). Editing, deleting or reordering a line breaks the chain;
appending after the last checkpoint is visible as events no signature covers. Events never
hold content: subjects are pseudonyms, never texts or prompts.

Trust comes from outside the file: a verifier names the public keys it trusts (the
operator's and each store's are published); a checkpoint whose key the log itself names
proves nothing, since whoever rewrote the log could sign it with a key of their own. Every
log begins with a `log.opened` event, so an empty file is never a valid log. A component
resumes its log only when every event is covered by a checkpoint signed with its own key;
otherwise it sets the file aside (`NAME.rejected-TIME.jsonl`), raises
freehold_audit_chain_intact to 0 and starts a new log whose first event names the one set
aside: it never signs over history it cannot vouch for.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from freehold_serving.private_files import private_dir, private_file
from freehold_serving.signing import Signer, canonical, key_id, verifies

GENESIS = "0" * 64
_log = logging.getLogger(__name__)


def _hash(event: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in event.items() if k != "hash"})).hexdigest()


class AuditLog:
    """Appends events (fsync'd: an acknowledged event survives a crash) and resumes the
    chain from the last complete line after a restart."""

    def __init__(
        self,
        path: Path,
        component: str,
        signer: Signer | None = None,
        checkpoint_every: int = 1,
        metrics: AuditMetrics | None = None,
        export: EventExport | None = None,
    ) -> None:
        """`export`: ship each event (checkpoints included) as it is written."""
        self.path = path
        self.component = component
        self._metrics = metrics
        self._export = export
        self._kind = _component_kind(component)
        self._signer = signer
        self._every = checkpoint_every
        self._lock = threading.Lock()
        self._since = 0
        private_dir(path.parent)
        # What is on disk is checked before anything is added to it: a log edited while
        # this component was down is reported (freehold_audit_chain_intact) and never
        # silently extended as if it were whole.
        self.resumed_intact = True
        self.rejected: Path | None = None
        previous: dict[str, Any] | None = None
        if path.exists():
            reason = self._unresumable()
            if reason is not None:
                self.resumed_intact = False
                previous = self._set_aside(reason)
        self._seq, self._prev = self._resume()
        private_file(path)
        self._file = path.open("ab")
        if self._seq == 0:
            self._append("log.opened", {"previous": previous})
        if metrics is not None:
            metrics.intact.labels(self._kind).set(1 if self.resumed_intact else 0)

    def _unresumable(self) -> str | None:
        """Why the log on disk cannot be continued, or None. Continuing means signing the
        next checkpoint over everything before it: only history this component's own
        checkpoints already cover qualifies."""
        trusted: set[bytes] | None = None
        if self._signer is not None:
            try:
                trusted = {self._signer.public_key()}
            except Exception as exc:  # Vault away: nothing can be vouched for yet
                return f"its signing key could not be read ({type(exc).__name__})"
        verdict = verify(self.path, trusted, self._anchor())
        if verdict.problems:
            return "; ".join(verdict.problems[:3])
        if verdict.events == 0:
            return "it holds no event (a log always begins with log.opened)"
        if trusted is not None and verdict.covered_upto < verdict.events:
            return (
                f"event(s) {verdict.covered_upto + 1}-{verdict.events} are covered by no "
                "checkpoint of this component (written after its last signature, or added "
                "by someone else)"
            )
        return None

    @property
    def anchor_path(self) -> Path:
        return self.path.with_name(self.path.name + ".anchor")

    def _anchor(self) -> list[tuple[int, str]]:
        """The last checkpoint this component wrote, as `seq:hash` beside the log: a log
        cut back (or restored from an older copy) ends before it and is not resumed. It
        is on the same disk, so it stops accidents and careless edits; against someone
        who rewrites both, only anchors kept elsewhere help (docs/audit.md)."""
        try:
            seq, _, digest = self.anchor_path.read_text().strip().partition(":")
            return [(int(seq), digest)]
        except (OSError, ValueError):
            return []

    def _write_anchor(self, seq: int, digest: str) -> None:
        part = self.anchor_path.with_name(self.anchor_path.name + ".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{seq}:{digest}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, self.anchor_path)

    def _set_aside(self, reason: str) -> dict[str, Any]:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.stem}.rejected-{stamp}{self.path.suffix}")
        data = self.path.read_bytes()
        lines = data[: data.rfind(b"\n") + 1].splitlines()
        last: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            last = json.loads(lines[-1]) if lines else {}
        os.replace(self.path, aside)
        if self.anchor_path.exists():
            os.replace(self.anchor_path, aside.with_name(aside.name + ".anchor"))
        self.rejected = aside
        _log.error(
            "audit log %s cannot be continued: %s. Kept as %s; a new log starts, linked to it",
            self.path,
            reason,
            aside.name,
        )
        digest = hashlib.sha256(data).hexdigest()
        return {
            "file": aside.name,
            "sha256": digest,
            "lastEvent": f"{last.get('seq')}:{last.get('hash')}" if last else None,
            "reason": reason,
        }

    def _resume(self) -> tuple[int, str]:
        if not self.path.exists():
            return 0, GENESIS
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            # A write cut short by a crash: drop the partial line, keep the chain.
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        lines = complete.splitlines()
        if not lines:
            return 0, GENESIS
        last = json.loads(lines[-1])
        return int(last["seq"]), str(last["hash"])

    def _append(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        event: dict[str, Any] = {
            "seq": self._seq + 1,
            "time": datetime.now(UTC).isoformat(),
            "component": self.component,
            "type": kind,
            "data": data,
            "prev": self._prev,
        }
        event["hash"] = _hash(event)
        self._file.write(canonical(event) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._seq, self._prev = event["seq"], event["hash"]
        if self._metrics is not None:
            self._metrics.events.labels(self._kind, kind).inc()
            if kind == "checkpoint":
                self._metrics.signed_at.labels(self._kind).set(time.time())
        if self._export is not None:
            try:
                self._export.export(event)
            except Exception as exc:  # the file is the record; shipping is best effort
                _log.warning("audit event not exported: %s", type(exc).__name__)
        return event

    def record(self, kind: str, **data: Any) -> dict[str, Any]:
        with self._lock:
            event = self._append(kind, data)
            self._since += 1
            if self._signer is not None and self._since >= self._every:
                self.checkpoint()
            return event

    def checkpoint(self) -> dict[str, Any]:
        """Sign `seq:hash` of the latest event (call with the lock held or alone)."""
        assert self._signer is not None
        message = f"{self._seq}:{self._prev}".encode()
        public = self._signer.public_key()
        event = self._append(
            "checkpoint",
            {
                "upto": self._seq,
                "hash": self._prev,
                "keyId": key_id(public),
                "publicKey": base64.b64encode(public).decode(),
                "signature": base64.b64encode(self._signer.sign(message)).decode(),
            },
        )
        self._since = 0
        self._write_anchor(event["seq"], event["hash"])
        return event

    def close(self) -> None:
        self._file.close()
        if self._export is not None:
            self._export.shutdown()


@dataclass
class Verdict:
    trusted: bool = True  # False: no trust anchor was given; nothing says who signed
    events: int = 0
    covered_upto: int = 0  # last seq a valid checkpoint signs
    problems: list[str] = field(default_factory=list)  # tampering: edited, deleted, ...
    warnings: list[str] = field(default_factory=list)  # unsigned tail, partial last line
    last: tuple[int, str] = (0, GENESIS)  # (seq, hash) of the last event: an anchor to keep

    @property
    def exit_code(self) -> int:
        """0 intact and signed by a trusted key; 1 tampered; 2 intact but partly unsigned
        or cut short; 4 unverified: no trusted key was given."""
        if self.problems:
            return 1
        if not self.trusted:
            return 4
        return 2 if self.warnings else 0


def verify(
    path: Path, trusted: set[bytes] | None = None, anchors: Iterable[tuple[int, str]] = ()
) -> Verdict:
    """Check one log offline. `trusted`: public keys whose checkpoints count. None checks
    the chain alone and the verdict is unverified (exit code 4): a log re-signed with any
    key would pass that check, so it never counts as intact. `anchors`:
    (seq, hash) pairs known from outside the file (a previous verify's last event, the
    copy a collector received over OTLP): cutting events off the end leaves a chain that
    is intact by itself, and only an anchor beyond the end shows it."""
    verdict = Verdict(trusted=trusted is not None)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        verdict.warnings.append("the last line is incomplete (a write cut short); ignored")
        data = data[: data.rfind(b"\n") + 1]
    prev, expected_seq = GENESIS, 1
    hashes: dict[int, str] = {}
    for number, line in enumerate(data.splitlines(), 1):
        try:
            event = json.loads(line)
            seq, claimed = int(event["seq"]), str(event["hash"])
        except (ValueError, KeyError, TypeError):
            verdict.problems.append(f"line {number}: not an audit event")
            return verdict
        if claimed != _hash(event):
            verdict.problems.append(
                f"event {seq} (line {number}) was edited: its hash does not match"
            )
        if seq < expected_seq:
            verdict.problems.append(f"event {seq} (line {number}) is out of order")
        elif seq > expected_seq:
            gone = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
            verdict.problems.append(f"event(s) {gone} were deleted before line {number}")
        if event.get("prev") != prev and seq == expected_seq:
            verdict.problems.append(f"event {seq} (line {number}) does not follow its predecessor")
        if event.get("type") == "checkpoint":
            body = event.get("data") or {}
            try:
                public = base64.b64decode(body["publicKey"])
                valid = (
                    verifies(
                        public,
                        base64.b64decode(body["signature"]),
                        f"{body['upto']}:{body['hash']}".encode(),
                    )
                    and body["upto"] == seq - 1
                    and body["hash"] == prev
                )
            except (KeyError, ValueError, TypeError):
                public, valid = b"", False
            if not valid:
                verdict.problems.append(f"checkpoint {seq} (line {number}) does not verify")
            elif trusted is not None and public not in trusted:
                verdict.problems.append(
                    f"checkpoint {seq} is signed by an untrusted key {key_id(public)}"
                )
            else:
                verdict.covered_upto = seq
        prev, expected_seq = claimed, seq + 1
        hashes[seq] = claimed
        verdict.events += 1
    verdict.last = (expected_seq - 1, prev)
    if verdict.events == 0:
        verdict.problems.append("the log holds no event: a log always begins with log.opened")
    for seq, digest in anchors:
        if seq > expected_seq - 1:
            verdict.problems.append(
                f"the log was truncated: it ends at event {expected_seq - 1}, but anchored "
                f"event {seq} existed"
            )
        elif hashes.get(seq) != digest:
            verdict.problems.append(f"event {seq} does not match its anchor (edited or replaced)")
    if verdict.events > verdict.covered_upto:
        verdict.warnings.append(
            f"event(s) {verdict.covered_upto + 1}-{verdict.events} come after the last valid "
            "checkpoint: no signature covers them (appended later, or not yet checkpointed)"
        )
    return verdict


def _component_kind(component: str) -> str:
    # Metric labels carry the kind of component only ("memory", not "memory/ns/name"):
    # resource names can be personal data in namespace-per-user clusters.
    return component.split("/", 1)[0]


class AuditMetrics:
    """Prometheus view of an audit log: what it wrote, when it was last signed, whether
    writing or signing failed, and whether the chain it resumed was intact."""

    _by_registry: dict[int, AuditMetrics] = {}

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.events = Counter(
            "freehold_audit_events_total",
            "Audit events written, by component kind and event type.",
            ["component", "type"],
            registry=registry,
        )
        self.failures = Counter(
            "freehold_audit_failures_total",
            "Audit events not written or checkpoints not signed, by component kind and stage.",
            ["component", "stage"],
            registry=registry,
        )
        self.intact = Gauge(
            "freehold_audit_chain_intact",
            "1 if the audit log this process resumed verified when it started, 0 if it was "
            "tampered with (see freehold audit verify).",
            ["component"],
            registry=registry,
        )
        self.signed_at = Gauge(
            "freehold_audit_last_checkpoint_timestamp_seconds",
            "When the audit log was last covered by a signed checkpoint (Unix time).",
            ["component"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: Any = None) -> AuditMetrics:
        """One set per registry and process (None: prometheus_client's default registry)."""
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        found = cls._by_registry.get(id(registry))
        if found is None:
            found = cls._by_registry[id(registry)] = cls(registry)
        return found


class EventExport(Protocol):
    def export(self, event: dict[str, Any]) -> None: ...

    def shutdown(self) -> None: ...


class OtlpEventExport:
    """Ships each written event as an OpenTelemetry log record over OTLP/HTTP, so a
    collector can forward the trail; the body is the event's canonical JSON, so what
    arrives can be checked against the chain."""

    def __init__(self, endpoint: str, service_name: str, exporter: Any = None) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

            exporter = OTLPLogExporter(endpoint=endpoint.rstrip("/") + "/v1/logs")
        self._provider = LoggerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        self._logger = self._provider.get_logger("freehold.audit")

    def export(self, event: dict[str, Any]) -> None:
        from opentelemetry._logs import SeverityNumber

        self._logger.emit(
            body=canonical(event).decode(),
            event_name=f"freehold.audit.{event['type']}",
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            attributes={
                "freehold.audit.component": str(event["component"]),
                "freehold.audit.type": str(event["type"]),
                "freehold.audit.seq": int(event["seq"]),
                "freehold.audit.hash": str(event["hash"]),
            },
        )

    def shutdown(self) -> None:
        self._provider.shutdown()


class AuditWriter:
    """Appends from one thread, so a caller (an event loop, a request) never waits on a
    disk sync or a signature. A checkpoint is signed whenever the queue runs dry (and at
    least every `checkpoint_every` events under steady load), so the newest event is
    covered soon after it is written."""

    def __init__(
        self,
        log: AuditLog,
        signed: bool,
        *,
        metrics: AuditMetrics | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        """`metrics` counts failures here; give the same object (and any exporter) to the
        AuditLog, which counts and ships the events it writes."""
        self._log = log
        self._signed = signed
        self._metrics = metrics
        self._every = checkpoint_every
        self._kind = _component_kind(log.component)
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def record(self, kind: str, **data: Any) -> None:
        self._queue.put((kind, data))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown paths)."""
        done = threading.Event()
        self._queue.put(("__flush__", {"done": done}))
        done.wait(timeout)

    def _failed(self, stage: str) -> None:
        if self._metrics is not None:
            self._metrics.failures.labels(self._kind, stage).inc()

    def _run(self) -> None:
        pending = 0
        while True:
            item = self._queue.get()
            if item is not None and item[0] == "__flush__":
                item[1]["done"].set()
                continue
            if item is not None:
                try:
                    self._log.record(item[0], **item[1])
                    pending += 1
                except Exception as exc:  # never take the component down; say so loudly
                    self._failed("write")
                    _log.error(
                        "audit event %s not written: %s: %s", item[0], type(exc).__name__, exc
                    )
            drained = item is None or self._queue.empty() or pending >= self._every
            if pending and self._signed and drained:
                try:
                    self._log.checkpoint()
                    pending = 0
                except Exception as exc:  # Vault sealed or away: the next event retries
                    self._failed("sign")
                    _log.warning(
                        "audit checkpoint not signed (%s); retried with the next event",
                        type(exc).__name__,
                    )
            if item is None:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        self._log.close()
