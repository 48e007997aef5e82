"""The memory service: the store plus what it needs from outside (keys, embedder, the
extracting model), independent of the HTTP framework."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from freehold_serving.audit import AuditLog, AuditMetrics, OtlpEventExport
from freehold_serving.memory import bundle, crypto, importers
from freehold_serving.memory.affinity import Member, Membership, peer_url, sign_peer, verify_peer
from freehold_serving.memory.args import MemoryArgs
from freehold_serving.memory.database import Database, SqliteDatabase
from freehold_serving.memory.records import (
    RECORD_TYPES,
    NewRecord,
    Provenance,
    Record,
    RecordFields,
    SearchRequest,
)
from freehold_serving.memory.store import Retention, Store, StoreError
from freehold_serving.signing import FileSigner, Signer, TransitSigner, key_id

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], list[list[float]]]


class UpstreamError(StoreError):
    """A model the store depends on (embedder, extractor) failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502)


def _transit(args: MemoryArgs) -> Any:
    from freehold_serving.transit import login

    vault = args.vault
    assert vault is not None
    return login(
        vault.address,
        vault.role,
        vault.jwt_path,
        auth_mount=vault.auth_mount,
        ca_cert=vault.ca_cert,
        mount=vault.mount,
    )


def key_material(args: MemoryArgs) -> tuple[crypto.KeyWrapper, Signer]:
    """The store's KEK and bundle signer: Vault transit in a cluster, key files locally."""
    if args.vault is not None:
        transit = _transit(args)
        return (
            crypto.TransitKeyWrapper(transit, args.vault.key_name),
            TransitSigner(transit, args.vault.signing_key_name),
        )
    data = Path(args.data_dir)
    key_file = Path(args.key_file) if args.key_file else data / "keys" / "store.key"
    signing = (
        Path(args.signing_key_file) if args.signing_key_file else data / "keys" / "signing.pem"
    )
    return crypto.FileKeyWrapper(key_file), FileSigner(signing)


def open_database(args: MemoryArgs) -> Database:
    """The store's SQL engine: PostgreSQL when the args name one, else SQLite in data_dir."""
    if args.postgres is not None:
        from freehold_serving.memory.pg_credentials import open_postgres

        return open_postgres(args)
    return SqliteDatabase(Path(args.data_dir) / "memory.db")


def builtin_embedder() -> tuple[str, int, Embed]:
    from freehold_serving import embeddings

    model = embeddings.Embedder(threads=1)
    return embeddings.MODEL_ID, model.dimensions, lambda texts: model.embed(texts).vectors


def remote_embedder(
    url: str, model: str, headers: dict[str, str] | None = None
) -> tuple[str, int, Embed]:
    client = httpx.Client(base_url=url, timeout=60, headers=headers or {})

    def embed(texts: list[str]) -> list[list[float]]:
        try:
            response = client.post("/embeddings", json={"model": model, "input": texts})
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the embedding model at {url} failed: {exc}") from None
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        return [list(map(float, d["embedding"])) for d in data]

    return model, len(embed(["dimension probe"])[0]), embed


@dataclass(frozen=True)
class Exported:
    bundle: bundle.Bundle
    records: int


EXTRACTION_SYSTEM = (
    "You extract durable memories about the user from a conversation. Each memory is one "
    "short sentence in the third person about the user, with its type: preference (likes, "
    "dislikes, wishes), fact (about the user or their life), task (something to do), "
    "entity (a person, place or thing in the user's life), episode (an event), relation, "
    "or note. Only include what the user said; no duplicates. Answer in JSON."
)


def extraction_schema(limit: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "memories": {
                "type": "array",
                "maxItems": limit,
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {"enum": list(RECORD_TYPES)},
                        "text": {"type": "string", "minLength": 3, "maxLength": 200},
                    },
                    "required": ["type", "text"],
                },
            }
        },
        "required": ["memories"],
    }


class MemoryService:
    def __init__(
        self,
        args: MemoryArgs,
        *,
        embedder: tuple[str, int, Embed],
        keys: tuple[crypto.KeyWrapper, Signer],
    ) -> None:
        self.args = args
        model, dimension, self._embed = embedder
        wrapper, self._signer = keys
        self.store = Store(
            open_database(args),
            wrapper,
            embedding_model=model,
            dimension=dimension,
            retention=Retention(args.retention_default_seconds, dict(args.retention_per_type)),
            index_budget_bytes=args.index_budget_bytes,
        )
        # Subject affinity between PostgreSQL replicas (affinity.py): set by join().
        self.peers: Membership | None = None
        self._peer_http: httpx.AsyncClient | None = None
        if self.store.needs_reembed():
            old = self.store.stored_embedding_model()
            log.warning("embedding model changed from %s to %s: re-embedding", old, model)
            self.store.reembed(self._embed)
        # Exports, imports and erasures, by subject pseudonym (never content), hash-chained
        # and signed with the bundle key: `freehold audit verify` checks the file offline.
        self.audit = AuditLog(
            Path(args.data_dir) / "audit" / "memory.jsonl",
            f"memory/{args.namespace}/{args.name}",
            signer=self._signer,
            metrics=AuditMetrics.of(),
            export=(
                OtlpEventExport(args.otlp_endpoint, f"freehold-memory-{args.name}")
                if args.otlp_endpoint
                else None
            ),
        )
        own = self._signer.public_key()
        self._trusted = {own, *(base64.b64decode(k) for k in args.trusted_signers)}
        # Per tenant: one tenant never sees when another last exported or imported.
        self.last_export: dict[str, dict[str, Any]] = {}
        self.last_import: dict[str, dict[str, Any]] = {}

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embed, texts)

    def _check_scopes(self, agent_id: str | None, session_id: str | None, where: str) -> None:
        for scope, value in (("agent", agent_id), ("session", session_id)):
            if value is not None and scope not in self.args.scopes:
                raise StoreError(
                    f"this store keeps no {scope}-scoped records (spec.scopes: "
                    f"{', '.join(self.args.scopes)})",
                    param=f"{where}{scope}_id",
                )

    async def add(self, tenant: str, records: list[NewRecord]) -> list[Record]:
        for i, record in enumerate(records):
            self._check_scopes(record.agent_id, record.session_id, f"records[{i}].")
        missing = [i for i, r in enumerate(records) if r.embedding is None]
        computed = await self.embed([records[i].text for i in missing]) if missing else []
        vectors: list[list[float] | None] = [r.embedding for r in records]
        for i, vector in zip(missing, computed, strict=True):
            vectors[i] = vector
        items = [
            (r.subject, RecordFields.model_validate(r.model_dump(exclude={"subject"})))
            for r in records
        ]
        return await asyncio.to_thread(self.store.add, tenant, items, vectors)

    async def update(
        self, tenant: str, record_id: str, subject: str, fields: RecordFields
    ) -> Record:
        self._check_scopes(fields.agent_id, fields.session_id, "")
        vector = fields.embedding or (await self.embed([fields.text]))[0]
        return await asyncio.to_thread(
            self.store.update, tenant, record_id, subject, fields, vector
        )

    def join(self, address: str) -> Membership:
        """Take part in subject affinity as the replica at `address` (host:port)."""
        self.peers = Membership(self.store.database, address)
        # Pooled: a forwarded search costs one request on a kept-alive connection. A
        # replica that does not connect within a second is passed over (answered here).
        self._peer_http = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=1.0),
            limits=httpx.Limits(max_keepalive_connections=32),
        )
        return self.peers

    async def search(self, tenant: str, request: SearchRequest) -> list[Record]:
        return (await self.search_routed(tenant, request))[0]

    async def search_routed(
        self, tenant: str, request: SearchRequest
    ) -> tuple[list[Record], str | None]:
        """The records found, and (with subject affinity) the replica that found them."""
        vector = request.embedding
        if vector is None and request.query and request.mode != "keyword":
            vector = (await self.embed([request.query]))[0]
        if vector is None and not request.query:
            raise StoreError("give a query, an embedding, or both", param="query")
        if self.peers is not None and request.as_of is None:
            # Searches as of a past time read the database only: any replica will do.
            member = self.peers.owner_of(self.store.subject_tag(tenant, request.subject))
            if member is not None:
                found = await self._ask(member, tenant, request, vector)
                if found is not None:
                    return found, member.name
        here = await asyncio.to_thread(self.store.search, tenant, request, vector)
        return here, None if self.peers is None else self.peers.me.name

    async def peer_search(self, headers: Any, raw: bytes) -> list[Record]:
        """A search another replica of this store sent here, the subject's owner: MACed
        with the store's peer key, naming the caller's tenant, its vector computed."""
        tenant = None
        if self.peers is not None:
            tenant = verify_peer(self.store.peer_key, headers, raw, time.time())
        if tenant is None:
            raise StoreError("Not a request from a replica of this store.", status=401)
        request = SearchRequest.model_validate_json(raw)
        return await asyncio.to_thread(self.store.search, tenant, request, request.embedding)

    async def _ask(
        self, member: Member, tenant: str, request: SearchRequest, vector: list[float] | None
    ) -> list[Record] | None:
        """The owner's answer, or None when it cannot give one (then this replica
        answers). An error the owner answers with is the caller's answer."""
        assert self.peers is not None and self._peer_http is not None
        body = request.model_copy(update={"embedding": vector}).model_dump_json().encode()
        headers = sign_peer(self.store.peer_key, tenant, body, time.time())
        try:
            response = await self._peer_http.post(
                peer_url(member.address),
                content=body,
                headers={**headers, "content-type": "application/json"},
            )
        except httpx.HTTPError:
            self.peers.unreachable(member)
            return None
        if response.status_code == 200:
            return [Record.model_validate(r) for r in response.json()["data"]]
        if response.status_code in (401, 404, 405):
            # Not (yet) a replica that takes peer requests, e.g. mid-upgrade.
            self.peers.unreachable(member)
            return None
        try:
            error = response.json()["error"]
            raise StoreError(str(error["message"]), response.status_code, error.get("param"))
        except (ValueError, KeyError, TypeError):
            self.peers.unreachable(member)
            return None

    async def export(self, tenant: str, subject: str, include_embeddings: bool | None) -> Exported:
        versions = await asyncio.to_thread(self.store.subject_versions, tenant, subject)
        if not versions:
            raise StoreError(f"subject {subject!r} has no records", status=404)
        with_vectors = (
            self.args.include_embeddings if include_embeddings is None else include_embeddings
        )
        made = await asyncio.to_thread(
            bundle.write,
            versions,
            signer=self._signer,
            subject_id=self.store.pseudonym("subject", subject),
            embedding=(self.store.embedding_model, self.store.dimension) if with_vectors else None,
            producer=f"freehold memory {self.args.namespace}/{self.args.name}",
        )
        self.last_export[tenant] = {
            "time": _now(),
            "records": made.manifest["counts"]["records"],
            "digest": made.digest,
        }
        self.audit.record(
            "memory.export",
            subject=self.store.pseudonym("subject", subject),
            tenant=self.store.pseudonym("tenant", tenant),
            records=made.manifest["counts"]["records"],
            digest=made.digest,
        )
        return Exported(made, made.manifest["counts"]["records"])

    async def import_bundle(self, tenant: str, data: bytes) -> dict[str, Any]:
        try:
            contents = await asyncio.to_thread(bundle.read, data, self._trusted)
        except bundle.BundleError as exc:
            raise StoreError(f"bundle refused: {exc}", param="bundle") from None
        versions = contents.versions
        embedding = contents.manifest.get("embedding")
        if embedding is None or (embedding.get("model"), embedding.get("dimension")) != (
            self.store.embedding_model,
            self.store.dimension,
        ):
            # Vectors from another model are never mixed in: embed the text here.
            texts = [r.text or "" for r, _ in versions if not r.deleted]
            fresh = iter(await self.embed(texts)) if texts else iter(())
            versions = [(r, None if r.deleted else next(fresh)) for r, _ in versions]
        for record, _vector in versions:
            if not record.deleted:
                self._check_scopes(record.agent_id, record.session_id, f"record {record.id}: ")
        added, _ = await asyncio.to_thread(self.store.import_versions, tenant, versions)
        self.last_import[tenant] = {
            "time": _now(),
            "records": added,
            "digest": "sha256:" + _sha(data),
        }
        self.audit.record(
            "memory.import",
            format="bundle",
            subject=contents.manifest.get("subject"),
            tenant=self.store.pseudonym("tenant", tenant),
            versions=added,
            digest="sha256:" + _sha(data),
            signer=contents.signer_key_id,
        )
        return {
            "imported": added,
            "skipped": len(versions) - added,
            "signer": contents.signer_key_id,
        }

    async def import_records(self, tenant: str, records: list[NewRecord]) -> dict[str, Any]:
        for i, record in enumerate(records):  # all checked before any batch is added
            self._check_scopes(record.agent_id, record.session_id, f"records[{i}].")
        added = 0
        for start in range(0, len(records), 256):
            added += len(await self.add(tenant, records[start : start + 256]))
        self.last_import[tenant] = {"time": _now(), "records": added, "digest": None}
        self.audit.record(
            "memory.import",
            format="records",
            subjects=sorted({self.store.pseudonym("subject", r.subject) for r in records}),
            tenant=self.store.pseudonym("tenant", tenant),
            records=added,
        )
        return {"imported": added, "skipped": 0}

    async def erase(self, tenant: str, subject: str) -> int:
        removed = await asyncio.to_thread(self.store.erase_subject, tenant, subject)
        self.audit.record(
            "memory.erase",
            subject=self.store.pseudonym("subject", subject),
            tenant=self.store.pseudonym("tenant", tenant),
            versions=removed,
        )
        return removed

    def parse_foreign(self, fmt: str, data: bytes, subject: str | None) -> list[NewRecord]:
        try:
            if fmt == "mem0":
                return importers.from_mem0(data, subject)
            return importers.from_jsonl(data, subject)
        except importers.ImportFormatError as exc:
            raise StoreError(f"{fmt} import refused: {exc}", param="file") from None

    async def extract(
        self,
        subject: str,
        messages: list[dict[str, str]],
        limit: int,
        authorization: str | None,
    ) -> list[NewRecord]:
        """Typed records from a conversation, by the configured model with JSON-schema
        constrained output; provenance names the model and its digest."""
        target = self.args.extraction
        if target is None:
            raise StoreError(
                "this store has no extraction model (spec.extraction.modelDeploymentRef)",
                status=501,
            )
        model = target.model or await self._only_model(target.url, authorization)
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": EXTRACTION_SYSTEM},
                {"role": "user", "content": f"Conversation:\n{transcript}"},
            ],
            "temperature": 0,
            "max_tokens": 80 * limit,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "memories", "schema": extraction_schema(limit)},
            },
        }
        headers = {"Authorization": authorization} if authorization else {}
        try:
            async with httpx.AsyncClient(timeout=120) as client:
                response = await client.post(
                    f"{target.url}/chat/completions", json=body, headers=headers
                )
                response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
            found = _memories(content)
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise UpstreamError(
                f"extraction by {target.model} failed: {type(exc).__name__}"
            ) from None
        seen: set[str] = set()
        out = []
        for item in found:
            text = " ".join(str(item.get("text", "")).split())
            if len(text) < 3 or text.casefold() in seen:
                continue  # small models repeat themselves: keep each memory once
            seen.add(text.casefold())
            out.append(
                NewRecord(
                    subject=subject,
                    type=item.get("type") if item.get("type") in RECORD_TYPES else "note",
                    text=text,
                    confidence=0.5,
                    provenance=Provenance(
                        source="extraction", model=model, model_digest=target.digest
                    ),
                )
            )
        return out

    async def _only_model(self, url: str, authorization: str | None) -> str:
        headers = {"Authorization": authorization} if authorization else {}
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.get(f"{url}/models", headers=headers)
                answer.raise_for_status()
            return str(answer.json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise UpstreamError(f"the extraction model at {url} did not answer: {exc}") from None

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """One tenant's view (its records, subjects, exports and imports), or the store's
        aggregate for the operator (None): counts, and the latest export or import of any
        tenant without saying whose."""
        counts = self.store.counts(tenant)
        if tenant is not None:
            last_export, last_import = self.last_export.get(tenant), self.last_import.get(tenant)
        else:
            last_export = max(self.last_export.values(), key=lambda e: e["time"], default=None)
            last_import = max(self.last_import.values(), key=lambda e: e["time"], default=None)
        public = self._signer.public_key()
        return {
            "records": {
                "total": counts.records,
                "user": counts.user,
                "agent": counts.agent,
                "session": counts.session,
            },
            "subjects": counts.subjects,
            "embedding": {"model": self.store.embedding_model, "dimension": self.store.dimension},
            "lastExport": last_export,
            "lastImport": last_import,
            "signer": key_id(public),
            # Published so a verifier can pin it: `freehold audit verify --trusted-key`.
            "signerPublicKey": base64.b64encode(public).decode(),
        }


def _memories(content: str) -> list[dict[str, Any]]:
    """The extracted items. Output cut short by max_tokens (small models like to fill every
    allowed item) still yields every item that was complete."""
    try:
        items = json.loads(content)["memories"]
        return [i for i in items if isinstance(i, dict)]
    except (ValueError, KeyError, TypeError):
        pass
    decoder = json.JSONDecoder()
    start = content.find("[")
    if start < 0:
        raise ValueError("no memories array in the model's output")
    out: list[dict[str, Any]] = []
    position = start + 1
    while (brace := content.find("{", position)) >= 0:
        try:
            item, position = decoder.raw_decode(content, brace)
        except ValueError:
            break
        if isinstance(item, dict):
            out.append(item)
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
