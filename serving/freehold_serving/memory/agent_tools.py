"""Memory for agents over MCP (the Model Context Protocol): tools to add, search, update,
erase and export, under the same API keys and tenants as the memory API.

Two ways in, one set of tools:
- Streamable HTTP at /v1/memory/mcp, served by the store itself (app.py): the caller's
  `Authorization: Bearer KEY` picks its tenant, as for every other memory route;
- `freehold memory mcp` over stdio for desktop agents: the same tools call the memory API
  with the user's key (HttpOps).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from freehold_serving.memory.records import RECORD_TYPES, NewRecord, RecordFields, SearchRequest

RecordType = Literal["preference", "fact", "task", "entity", "episode", "relation", "note"]
assert set(RecordType.__args__) == set(RECORD_TYPES)  # type: ignore[attr-defined]

INSTRUCTIONS = (
    "Long-term memory about the people you help, kept in their own encrypted store. Search "
    "it before answering questions about a person; add short third-person facts, "
    "preferences and tasks they tell you; update a record when it changes. Each memory "
    "belongs to a subject (the user's id). Erasing a subject deletes everything about them."
)


class MemoryOps(Protocol):
    """What the tools may do, as one tenant."""

    async def add(self, record: NewRecord) -> dict[str, Any]: ...

    async def search(self, request: SearchRequest) -> list[dict[str, Any]]: ...

    async def update(
        self, record_id: str, subject: str, fields: RecordFields
    ) -> dict[str, Any]: ...

    async def erase(self, subject: str) -> int: ...

    async def export(self, subject: str) -> tuple[bytes, str, int]:
        """(bundle, its sha256, records)."""


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    """What an agent needs of a record (ids, text, type, when; no vectors)."""
    keys = ("id", "version", "subject", "type", "text", "metadata", "score", "created_at",
            "updated_at", "agent_id", "session_id")  # fmt: skip
    return {k: record[k] for k in keys if record.get(k) not in (None, {}, [])}


def build_tools(ops_for: Callable[[Context], Awaitable[MemoryOps]]) -> MCPServer:
    """The MCP server; `ops_for(ctx)` is the caller's view of the store (its tenant)."""
    server = MCPServer(name="freehold-memory", instructions=INSTRUCTIONS)

    async def guarded(call: Awaitable[Any]) -> Any:
        from freehold_serving.memory.store import StoreError

        try:
            return await call
        except StoreError as exc:  # the same messages the HTTP API answers with
            raise ToolError(exc.message) from None

    @server.tool(
        title="Remember",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    async def memory_add(
        subject: str,
        text: str,
        ctx: Context,
        type: RecordType = "note",
        metadata: dict[str, Any] | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        """Store one memory about a subject: a short sentence (a fact, preference, task,
        entity, episode, relation or note)."""
        record = _record(subject, text, type, metadata, agent_id, session_id)
        ops = await ops_for(ctx)
        return _brief(await guarded(ops.add(record)))

    @server.tool(title="Recall", annotations=ToolAnnotations(read_only_hint=True))
    async def memory_search(
        subject: str,
        query: str,
        ctx: Context,
        top_k: int = 5,
        types: list[RecordType] | None = None,
        mode: Literal["hybrid", "vector", "keyword"] = "hybrid",
    ) -> list[dict[str, Any]]:
        """Find a subject's memories relevant to a query (meaning and keywords), best first."""
        try:
            request = SearchRequest(
                subject=subject, query=query, top_k=top_k, types=types or None, mode=mode
            )
        except ValueError as exc:
            raise ToolError(f"invalid search: {exc}") from None
        ops = await ops_for(ctx)
        return [_brief(r) for r in await guarded(ops.search(request))]

    @server.tool(
        title="Correct a memory",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    async def memory_update(
        record_id: str,
        subject: str,
        text: str,
        ctx: Context,
        type: RecordType = "note",
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Replace a memory's text: the old version stays in its history."""
        try:
            fields = RecordFields(text=text, type=type, metadata=metadata or {})
        except ValueError as exc:
            raise ToolError(f"invalid record: {exc}") from None
        ops = await ops_for(ctx)
        return _brief(await guarded(ops.update(record_id, subject, fields)))

    @server.tool(
        title="Forget a person",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
    )
    async def memory_erase(subject: str, ctx: Context) -> dict[str, Any]:
        """Erase everything stored about a subject, history included (right to be
        forgotten). It cannot be undone."""
        ops = await ops_for(ctx)
        erased = await guarded(ops.erase(subject))
        return {"subject": subject, "erased_versions": erased}

    @server.tool(title="Export a person's memory", annotations=ToolAnnotations(read_only_hint=True))
    async def memory_export(subject: str, ctx: Context) -> dict[str, Any]:
        """The subject's memory as a signed bundle (docs/memory-bundle.md), base64: another
        store verifies and imports it."""
        ops = await ops_for(ctx)
        data, digest, records = await guarded(ops.export(subject))
        return {
            "subject": subject,
            "records": records,
            "sha256": digest,
            "bundle_base64": base64.b64encode(data).decode(),
        }

    return server


def _record(
    subject: str,
    text: str,
    type: str,
    metadata: dict[str, Any] | None,
    agent_id: str | None,
    session_id: str | None,
) -> NewRecord:
    try:
        return NewRecord(
            subject=subject,
            text=text,
            type=type,
            metadata=metadata or {},
            agent_id=agent_id,
            session_id=session_id,
        )
    except ValueError as exc:
        raise ToolError(f"invalid record: {exc}") from None


class ServiceOps:
    """The tools inside the store's own process, as the caller's tenant."""

    def __init__(self, service: Any, tenant: str) -> None:
        self._service = service
        self._tenant = tenant

    async def add(self, record: NewRecord) -> dict[str, Any]:
        (added,) = await self._service.add(self._tenant, [record])
        return dict(added.model_dump(mode="json"))

    async def search(self, request: SearchRequest) -> list[dict[str, Any]]:
        found = await self._service.search(self._tenant, request)
        return [r.model_dump(mode="json") for r in found]

    async def update(self, record_id: str, subject: str, fields: RecordFields) -> dict[str, Any]:
        updated = await self._service.update(self._tenant, record_id, subject, fields)
        return dict(updated.model_dump(mode="json"))

    async def erase(self, subject: str) -> int:
        return int(await self._service.erase(self._tenant, subject))

    async def export(self, subject: str) -> tuple[bytes, str, int]:
        made = await self._service.export(self._tenant, subject, None)
        return made.bundle.data, made.bundle.digest, made.records


class HttpOps:
    """The tools in another process (`freehold memory mcp`): the memory API, with a key."""

    def __init__(self, endpoint: str, api_key: str | None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=endpoint.rstrip("/"), headers=headers, timeout=300)

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        from freehold_serving.memory.store import StoreError

        try:
            response = await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise StoreError(f"the memory API cannot be reached: {exc}", status=503) from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except Exception:
                message = response.text[:500]
            raise StoreError(str(message), status=response.status_code)
        return response

    async def add(self, record: NewRecord) -> dict[str, Any]:
        body = {"records": [record.model_dump(mode="json", exclude_none=True)]}
        answer = (await self._call("POST", "/records", json=body)).json()
        return dict(answer["data"][0])

    async def search(self, request: SearchRequest) -> list[dict[str, Any]]:
        body = request.model_dump(mode="json", exclude_none=True)
        return list((await self._call("POST", "/search", json=body)).json()["data"])

    async def update(self, record_id: str, subject: str, fields: RecordFields) -> dict[str, Any]:
        body = {"subject": subject, **fields.model_dump(mode="json", exclude_none=True)}
        return dict((await self._call("PUT", f"/records/{record_id}", json=body)).json())

    async def erase(self, subject: str) -> int:
        answer = (await self._call("POST", "/erase", json={"subject": subject})).json()
        return int(answer.get("erased_versions", answer.get("versions", 0)))

    async def export(self, subject: str) -> tuple[bytes, str, int]:
        response = await self._call("POST", "/export", json={"subject": subject})
        import hashlib

        data = response.content
        records = int(response.headers.get("X-Freehold-Bundle-Records", "0"))
        return data, "sha256:" + hashlib.sha256(data).hexdigest(), records
