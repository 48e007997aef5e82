"""A tamper-evident audit log: JSON Lines, each event carrying the hash of the one before,
with signed checkpoints.

Every line is canonical JSON with `seq`, `time`, `component`, `type`, `data`, `prev` (the
previous line's hash; 64 zeros for the first) and `hash` (sha256 of the line without
`hash`). A checkpoint is a line of type `checkpoint` whose data signs `seq:hash` of the
event before it (Ed25519). Editing, deleting or reordering a line breaks the chain;
appending after the last checkpoint is visible as events no signature covers. Events never
hold content: subjects are pseudonyms, never texts or prompts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

GENESIS = "0" * 64


class Signer(Protocol):
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hash(event: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in event.items() if k != "hash"})).hexdigest()


def key_id(public: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public).hexdigest()[:16]


class AuditLog:
    """Appends events (fsync'd: an acknowledged event survives a crash) and resumes the
    chain from the last complete line after a restart."""

    def __init__(
        self, path: Path, component: str, signer: Signer | None = None, checkpoint_every: int = 1
    ) -> None:
        self.path = path
        self._component = component
        self._signer = signer
        self._every = checkpoint_every
        self._lock = threading.Lock()
        self._since = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev = self._resume()
        self._file = path.open("ab")

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
            "component": self._component,
            "type": kind,
            "data": data,
            "prev": self._prev,
        }
        event["hash"] = _hash(event)
        self._file.write(_canonical(event) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._seq, self._prev = event["seq"], event["hash"]
        return event

    def record(self, kind: str, **data: Any) -> dict[str, Any]:
        with self._lock:
            event = self._append(kind, data)
            self._since += 1
            if self._signer is not None and self._since >= self._every:
                self.checkpoint()
            return event

    def checkpoint(self) -> None:
        """Sign `seq:hash` of the latest event (call with the lock held or alone)."""
        assert self._signer is not None
        message = f"{self._seq}:{self._prev}".encode()
        public = self._signer.public_key()
        self._append(
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

    def close(self) -> None:
        self._file.close()


@dataclass
class Verdict:
    events: int = 0
    covered_upto: int = 0  # last seq a valid checkpoint signs
    problems: list[str] = field(default_factory=list)  # tampering: edited, deleted, ...
    warnings: list[str] = field(default_factory=list)  # unsigned tail, partial last line

    @property
    def exit_code(self) -> int:
        """0 intact and signed; 1 tampered; 2 intact but partly unsigned or cut short."""
        if self.problems:
            return 1
        return 2 if self.warnings else 0


def verify(path: Path, trusted: set[bytes] | None = None) -> Verdict:
    """Check one log offline. `trusted`: public keys whose checkpoints count (None: any
    key the log names, which proves order and integrity but not who signed)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    verdict = Verdict()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        verdict.warnings.append("the last line is incomplete (a write cut short); ignored")
        data = data[: data.rfind(b"\n") + 1]
    prev, expected_seq = GENESIS, 1
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
                Ed25519PublicKey.from_public_bytes(public).verify(
                    base64.b64decode(body["signature"]), f"{body['upto']}:{body['hash']}".encode()
                )
                valid = body["upto"] == seq - 1 and body["hash"] == prev
            except (InvalidSignature, KeyError, ValueError):
                valid = False
            if not valid:
                verdict.problems.append(f"checkpoint {seq} (line {number}) does not verify")
            elif trusted is not None and public not in trusted:
                verdict.problems.append(
                    f"checkpoint {seq} is signed by an untrusted key {key_id(public)}"
                )
            else:
                verdict.covered_upto = seq
        prev, expected_seq = claimed, seq + 1
        verdict.events += 1
    if verdict.events > verdict.covered_upto:
        verdict.warnings.append(
            f"event(s) {verdict.covered_upto + 1}-{verdict.events} come after the last valid "
            "checkpoint: no signature covers them (appended later, or not yet checkpointed)"
        )
    return verdict
