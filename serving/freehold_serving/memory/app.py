"""The memory API: a Ray Serve application, `import_path: freehold_serving.memory.app:
build_memory_app`, mounted at /v1/memory beside the models.

One replica per process: SQLite has one writer; on PostgreSQL the pods are the replicas
(store.py keeps their indexes in step). Every answer that is not a success is an
OpenAI-style error object; another tenant's records answer 404, as if absent.
"""

# No `from __future__ import annotations`: Ray Serve reads build_memory_app's annotation.

import asyncio
import functools
import json
import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from freehold_serving.auth import DEFAULT_TENANT, ApiKeys
from freehold_serving.memory.affinity import BEAT, REPLICA_HEADER, Membership
from freehold_serving.memory.args import MemoryArgs
from freehold_serving.memory.records import (
    AddRequest,
    EraseRequest,
    ExportRequest,
    ExtractRequest,
    RecordFields,
    RecordId,
    SearchRequest,
    UpdateRequest,
)
from freehold_serving.memory.service import (
    MemoryService,
    builtin_embedder,
    key_material,
    remote_embedder,
)
from freehold_serving.memory.store import StoreError
from freehold_serving.openai.api import add_error_handlers, error_response
from freehold_serving.openai.errors import ApiError, from_validation_error
from freehold_serving.vault_keys import follow_keys, load_keys

log = logging.getLogger(__name__)
ROUTE_PREFIX = "/v1/memory"
memory_app = FastAPI(
    title="Freehold memory API",
    version="1",
    description="Portable, encrypted memory that belongs to the user. Mounted at /v1/memory.",
    docs_url=None,
    redoc_url=None,
)
B = TypeVar("B", bound=BaseModel)
# Bodies are read raw (bounded, OpenAI-style errors): describe them for /openapi.json.
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("/records", "post"): AddRequest,
    ("/records/{record_id}", "put"): UpdateRequest,
    ("/search", "post"): SearchRequest,
    ("/erase", "post"): EraseRequest,
    ("/export", "post"): ExportRequest,
    ("/extract", "post"): ExtractRequest,
}


def _openapi() -> dict[str, Any]:
    if memory_app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic.json_schema import models_json_schema

        schema = get_openapi(
            title=memory_app.title,
            version=memory_app.version,
            description=memory_app.description,
            routes=memory_app.routes,
            servers=[{"url": ROUTE_PREFIX}],
        )
        refs, defs = models_json_schema(
            [(m, "validation") for m in REQUEST_BODIES.values()],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        for (path, method), model in REQUEST_BODIES.items():
            schema["paths"][path][method]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(model, "validation")]}},
            }
        schema["paths"]["/import"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
        memory_app.openapi_schema = schema
    return memory_app.openapi_schema


memory_app.openapi = _openapi  # type: ignore[method-assign]


add_error_handlers(memory_app, "a memory request")  # never a record's text


@memory_app.exception_handler(StoreError)
async def _store_error(_request: Request, exc: StoreError) -> Response:
    kind = {
        401: "invalid_peer",  # the only 401 a StoreError makes (affinity's peer requests)
        404: "not_found",
        409: "conflict",
        501: "not_implemented",
        502: "upstream_error",
        503: "service_unavailable",
    }
    return error_response(
        ApiError(
            exc.status,
            exc.message,
            param=exc.param,
            type="server_error" if exc.status >= 500 else "invalid_request_error",
            code=kind.get(exc.status, "invalid_value"),
        )
    )


@memory_app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query"))
    return error_response(
        ApiError(400, f"Invalid {where or 'request'}: {first.get('msg', '')}", param=where or None)
    )


async def _sweep(service: MemoryService, period: float) -> None:
    while True:
        try:
            removed = await asyncio.to_thread(service.store.sweep)
            if removed:
                log.info("retention: deleted %d expired record(s)", removed)
        except Exception:
            log.exception("retention sweep failed")
        await asyncio.sleep(period)


async def _membership(peers: Membership) -> None:
    """This replica's heartbeat in the replicas table (affinity.py), for as long as it
    serves. A failed beat (database away) keeps the last view; members expire on their
    own when they stop beating."""
    while True:
        try:
            members = await asyncio.to_thread(peers.beat)
            log.debug("memory replicas: %s", [m.name for m in members])
        except Exception:
            log.warning("memory replica heartbeat failed", exc_info=True)
        await asyncio.sleep(BEAT)


@functools.cache
def _store_gauges() -> tuple[Any, Any]:
    # Made in the replica's process on first scrape: Ray Serve pickles the ingress class
    # by value, and a metric made at import would also be registered in the driver.
    from prometheus_client import Gauge

    return (
        Gauge("freehold_memory_records", "Live memory records, by scope.", ["scope"]),
        Gauge("freehold_memory_subjects", "Subjects with at least one record."),
    )


# This process's MCP server (memory API replica, session manager), set by MemoryServer:
# Ray Serve serves a copy of memory_app made when the class is decorated, so the route
# below is declared here and finds the replica's server when a request comes.
_MCP: dict[str, Any] = {}


class _McpRoute:
    """MCP (Streamable HTTP) at /v1/memory/mcp. The API key is checked here, before the
    MCP server, with the same answers as every other route. An object, not a function, so
    Starlette hands it the raw ASGI call."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not _MCP:
            await error_response(ApiError(503, "The memory store is starting."))(
                scope, receive, send
            )
            return
        server, manager = _MCP["server"], _MCP["manager"]
        try:
            tenant = server._tenant(Request(scope, receive))
        except ApiError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["freehold_tenant"] = tenant
        await manager.handle_request(scope, receive, send)


memory_app.router.routes.append(Route("/mcp", _McpRoute(), methods=["GET", "POST", "DELETE"]))


def _start_mcp(server: "MemoryServer") -> "asyncio.Task[None]":
    """This replica's MCP server: stateless (any replica answers any request, as for the
    rest of the API), JSON answers."""
    from mcp.server.transport_security import TransportSecuritySettings

    from freehold_serving.memory.agent_tools import build_tools

    tools = build_tools(server._ops_for)
    # Makes the session manager; its own Starlette app is not mounted. No DNS-rebinding
    # check: callers present an API key, and the Host is the Service's name.
    tools.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = tools.session_manager
    _MCP.update(server=server, manager=manager)

    async def run() -> None:
        async with manager.run():
            await asyncio.Event().wait()

    return asyncio.get_running_loop().create_task(run())


@serve.ingress(memory_app)
class MemoryServer:
    def __init__(self, args: MemoryArgs) -> None:
        self._args = args
        source = args.embedding
        if source.url is not None and source.model is not None:
            embedder = remote_embedder(source.url, source.model)
        else:
            embedder = builtin_embedder()
        self._service = MemoryService(args, embedder=embedder, keys=key_material(args))
        # Keys from Vault (the store's pod logs in itself) are followed for rotations.
        self._keys: ApiKeys | None = load_keys(args.api_keys)
        self._follow = follow_keys(self._keys, args.api_keys)
        self._sweeper = asyncio.get_running_loop().create_task(
            _sweep(self._service, args.sweep_seconds)
        )
        self._mcp = _start_mcp(self)
        self._beat: asyncio.Task[None] | None = None
        if args.postgres is not None and args.peer_address is not None:
            self._beat = asyncio.get_running_loop().create_task(
                _membership(self._service.join(args.peer_address))
            )

    def __del__(self) -> None:
        # A replica shut down says so: the others stop sending it searches at once
        # instead of when its row expires.
        peers = self._service.peers if hasattr(self, "_service") else None
        if peers is not None:
            try:
                peers.leave()
            except Exception:
                log.warning("could not leave the replicas table", exc_info=True)

    async def _ops_for(self, ctx: Any) -> Any:
        """The MCP tools' view of the store: the tenant the request's key belongs to (the
        route checked the key before the MCP server saw the request)."""
        from freehold_serving.memory.agent_tools import ServiceOps

        request = ctx.request_context.request
        return ServiceOps(self._service, request.scope["state"]["freehold_tenant"])

    def _tenant(self, request: Request) -> str:
        if self._keys is None:
            return DEFAULT_TENANT
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if not header:
            raise ApiError(
                401,
                "You didn't provide an API key (Authorization: Bearer KEY).",
                code="missing_api_key",
            )
        tenant = self._keys.tenant_of(presented.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return tenant

    async def _raw(self, request: Request) -> bytes:
        limit = self._args.max_request_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413, f"Request body is larger than {limit} bytes.", code="request_too_large"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _body(self, request: Request, model: type[B]) -> tuple[str, B]:
        tenant = self._tenant(request)
        raw = await self._raw(request)
        try:
            return tenant, model.model_validate_json(raw)
        except ValidationError as exc:
            raise from_validation_error(exc) from None

    @memory_app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @memory_app.get("/status")
    async def status(self) -> dict[str, Any]:
        """Aggregate counts for the operator (no key needed: no subject, no content)."""
        stats = await asyncio.to_thread(self._service.stats)
        return {
            k: stats[k]
            for k in (
                "records",
                "subjects",
                "lastExport",
                "lastImport",
                "signer",
                "signerPublicKey",
            )
        }

    @memory_app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus: records by scope and subjects (counts only), and this store's audit
        events (exports, imports, erasures) as freehold_audit_events_total."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        stats = await asyncio.to_thread(self._service.stats)
        gauges = _store_gauges()
        for scope in ("user", "agent", "session"):
            gauges[0].labels(scope).set(stats["records"][scope])
        gauges[1].set(stats["subjects"])
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @memory_app.get("/stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        """The caller's tenant only: its records, subjects, last export and import."""
        tenant = self._tenant(request)
        return await asyncio.to_thread(self._service.stats, tenant)

    @memory_app.post("/records")
    async def add(self, request: Request) -> Response:
        tenant, body = await self._body(request, AddRequest)
        added = await self._service.add(tenant, body.records)
        return JSONResponse(
            {"object": "list", "data": [r.model_dump(mode="json") for r in added]}, 201
        )

    @memory_app.get("/records/{record_id}")
    async def get(self, request: Request, record_id: RecordId) -> Response:
        record = await asyncio.to_thread(self._service.store.get, self._tenant(request), record_id)
        return JSONResponse(record.model_dump(mode="json"))

    @memory_app.put("/records/{record_id}")
    async def update(self, request: Request, record_id: RecordId) -> Response:
        tenant, body = await self._body(request, UpdateRequest)
        fields = body.model_dump(exclude={"subject"})
        record = await self._service.update(tenant, record_id, body.subject, RecordFields(**fields))
        return JSONResponse(record.model_dump(mode="json"))

    @memory_app.delete("/records/{record_id}")
    async def delete(self, request: Request, record_id: RecordId) -> Response:
        await asyncio.to_thread(self._service.store.delete, self._tenant(request), record_id)
        return JSONResponse({"id": record_id, "deleted": True})

    @memory_app.get("/records/{record_id}/history")
    async def history(self, request: Request, record_id: RecordId) -> Response:
        versions = await asyncio.to_thread(
            self._service.store.history, self._tenant(request), record_id
        )
        return JSONResponse(
            {"object": "list", "data": [v.model_dump(mode="json") for v in versions]}
        )

    @memory_app.post("/search")
    async def search(self, request: Request) -> Response:
        tenant, body = await self._body(request, SearchRequest)
        found, replica = await self._service.search_routed(tenant, body)
        return JSONResponse(
            {"object": "list", "data": [r.model_dump(mode="json") for r in found]},
            # Which replica's indexes answered (subject affinity), for operators.
            headers={REPLICA_HEADER: replica} if replica else None,
        )

    @memory_app.post("/peer/search", include_in_schema=False)
    async def peer_search(self, request: Request) -> Response:
        """Searches other replicas of this store send to the subject's owner (affinity)."""
        raw = await self._raw(request)
        try:
            found = await self._service.peer_search(request.headers, raw)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        return JSONResponse({"object": "list", "data": [r.model_dump(mode="json") for r in found]})

    @memory_app.post("/erase")
    async def erase(self, request: Request) -> Response:
        tenant, body = await self._body(request, EraseRequest)
        removed = await self._service.erase(tenant, body.subject)
        return JSONResponse({"subject": body.subject, "erased_versions": removed})

    @memory_app.post("/export")
    async def export(self, request: Request) -> Response:
        tenant, body = await self._body(request, ExportRequest)
        made = await self._service.export(tenant, body.subject, body.include_embeddings)
        return Response(
            made.bundle.data,
            media_type="application/gzip",
            headers={
                "X-Freehold-Bundle-Digest": made.bundle.digest,
                "X-Freehold-Bundle-Records": str(made.records),
            },
        )

    @memory_app.post("/import")
    async def import_(
        self, request: Request, format: str = "bundle", subject: str | None = None
    ) -> Response:
        tenant = self._tenant(request)
        if format not in ("bundle", "mem0", "jsonl"):
            raise ApiError(400, "format must be bundle, mem0 or jsonl", param="format")
        raw = await self._raw(request)
        if format == "bundle":
            if subject is not None:
                raise ApiError(400, "a bundle keeps its own subject", param="subject")
            result = await self._service.import_bundle(tenant, raw)
        else:
            records = self._service.parse_foreign(format, raw, subject)
            result = await self._service.import_records(tenant, records)
        return JSONResponse(result)

    @memory_app.post("/extract")
    async def extract(self, request: Request) -> Response:
        tenant, body = await self._body(request, ExtractRequest)
        found = await self._service.extract(
            body.subject,
            [m.model_dump() for m in body.messages],
            body.max_records,
            request.headers.get("authorization"),
        )
        for record in found:
            record.agent_id, record.session_id = body.agent_id, body.session_id
        if body.store and found:
            stored = await self._service.add(tenant, found)
            return JSONResponse(
                {"object": "list", "data": [r.model_dump(mode="json") for r in stored]}
            )
        return JSONResponse(
            {"object": "list", "data": [json.loads(r.model_dump_json()) for r in found]}
        )


def build_memory_app(args: MemoryArgs) -> Application:
    return (
        serve.deployment(name="memory")(MemoryServer)
        .options(
            num_replicas=1,  # SQLite: one writer; PostgreSQL: one per pod, pods scale out
            max_ongoing_requests=64,
            ray_actor_options={"num_cpus": 0},
            health_check_period_s=10,
        )
        .bind(args)
    )
