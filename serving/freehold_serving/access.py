"""Inference access records: one audit event per request a model replica answered or
refused (API key id and tenant, operation, model and digest, tokens, latency, status),
never a prompt or a completion.

Each replica appends to its own hash-chained file, DIRECTORY/access/NAME-SLOT.jsonl: a
replica claims the first slot no other live process holds (an advisory lock), so replicas
never interleave one chain, and a restarted replica resumes the chain of the slot it
finds free.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Any

from freehold_serving.args import AuditConfig, ServingArgs
from freehold_serving.audit import AuditLog, AuditMetrics, AuditWriter, OtlpEventExport
from freehold_serving.private_files import private_dir

log = logging.getLogger(__name__)
MAX_SLOTS = 1024


def _claim(directory: Path, name: str) -> tuple[Path, IO[bytes]]:
    private_dir(directory)
    for slot in range(MAX_SLOTS):
        lock = (directory / f"{name}-{slot}.lock").open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return directory / f"{name}-{slot}.jsonl", lock
    raise RuntimeError(f"more than {MAX_SLOTS} replicas of {name} write access records")


class AccessLog:
    """The access records of one replica (a writer thread; requests never wait on disk)."""

    def __init__(self, args: ServingArgs, config: AuditConfig, export: Any = None) -> None:
        if export is None and args.telemetry.otlp_endpoint:
            export = OtlpEventExport(args.telemetry.otlp_endpoint, f"freehold-{args.name}")
        # The digest of what answered: the model, or the LoRA adapter a request named.
        digests = {args.model.served_name: f"sha256:{args.model.sha256}"} | {
            a.served_name: f"sha256:{a.sha256}" for a in args.adapters
        }
        self._open(
            args.name, f"serving/{args.namespace}/{args.name}", config, export, digests,
            f"sha256:{args.model.sha256}",
        )  # fmt: skip

    @classmethod
    def of_router(
        cls, name: str, namespace: str, config: AuditConfig, otlp_endpoint: str | None
    ) -> AccessLog:
        """A router's records: each names the target that answered (its own records
        name the digest), and the caller's key id and tenant."""
        log_ = cls.__new__(cls)
        export = (
            OtlpEventExport(otlp_endpoint, f"freehold-router-{name}") if otlp_endpoint else None
        )
        log_._open(f"router-{name}", f"router/{namespace}/{name}", config, export, {}, None)
        return log_

    def _open(
        self,
        name: str,
        component: str,
        config: AuditConfig,
        export: Any,
        digests: dict[str, str],
        digest: str | None,
    ) -> None:
        path, self._lock = _claim(Path(config.directory) / "access", name)
        signer = None
        if config.signing_key_file:
            from freehold_serving.signing import FileSigner

            signer = FileSigner(Path(config.signing_key_file))
        metrics = AuditMetrics.of()
        audit = AuditLog(
            path, component, signer, checkpoint_every=2**62, metrics=metrics, export=export
        )
        self._writer = AuditWriter(audit, signer is not None, metrics=metrics)
        self._digests = digests
        self._digest = digest
        self.path = path
        log.info("access records in %s (%s)", path, "signed" if signer else "unsigned")

    def record(
        self,
        *,
        operation: str,
        model: str,
        key: str | None,
        tenant: str | None,
        status: int,
        latency_s: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
        ttft_s: float | None = None,
        error: str | None = None,
        target: str | None = None,
    ) -> None:
        extra = {"target": target} if target is not None else {}
        self._writer.record(
            "inference.access",
            **extra,
            keyId=key,
            tenant=tenant,
            operation=operation,
            model=model,
            modelDigest=(
                self._digests.get(model, self._digest) if operation != "embeddings" else None
            ),
            status=status,
            error=error,
            inputTokens=input_tokens,
            outputTokens=output_tokens,
            latencyMs=round(latency_s * 1000, 2),
            ttftMs=round(ttft_s * 1000, 2) if ttft_s is not None else None,
            pid=os.getpid(),
        )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._lock.close()
