"""The memory tools for agents (MCP), through the MCP SDK's own client connected in-process
to the server the store mounts, on a real store (SQLite) and its real bundle signer.

The embedder is a deterministic bag-of-words function (the real model is exercised in the
serving tests, which also drive these tools over Streamable HTTP and stdio).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from freehold_serving.memory import bundle
from freehold_serving.memory.agent_tools import ServiceOps, build_tools
from freehold_serving.memory.args import MemoryArgs
from freehold_serving.memory.service import MemoryService, key_material
from tests.integration.test_memory_postgres import DIM, bow


@pytest.fixture
def service(tmp_path: Path) -> MemoryService:
    args = MemoryArgs(name="notes", data_dir=str(tmp_path))
    return MemoryService(args, embedder=("bow-32", DIM, bow), keys=key_material(args))


def payload(result: Any) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        content = result.structured_content
        return content.get("result", content) if set(content) == {"result"} else content
    return json.loads(result.content[0].text)


async def test_agents_remember_recall_correct_export_and_forget(service: MemoryService) -> None:
    async def acme(_ctx: Any) -> ServiceOps:
        return ServiceOps(service, "acme")

    async with Client(build_tools(acme)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {
            "memory_add",
            "memory_search",
            "memory_update",
            "memory_erase",
            "memory_export",
        }
        added = payload(
            await client.call_tool(
                "memory_add",
                {"subject": "ana", "text": "Ana is allergic to shellfish", "type": "fact"},
            )
        )
        await client.call_tool("memory_add", {"subject": "ana", "text": "Ana likes jazz"})
        found = payload(
            await client.call_tool("memory_search", {"subject": "ana", "query": "shellfish"})
        )
        assert found[0]["id"] == added["id"] and found[0]["type"] == "fact"
        changed = payload(
            await client.call_tool(
                "memory_update",
                {"record_id": added["id"], "subject": "ana", "text": "Ana is allergic to prawns"},
            )
        )
        assert changed["version"] == 2
        exported = payload(await client.call_tool("memory_export", {"subject": "ana"}))
        assert exported["records"] == 2
        data = base64.b64decode(exported["bundle_base64"])
        contents = bundle.read(data, {service._signer.public_key()})  # signed by the store
        assert {r.text for r, _ in contents.versions if r.valid_to is None} == {
            "Ana is allergic to prawns",
            "Ana likes jazz",
        }

        # Bad input and unknown records answer as tool errors naming what is wrong.
        bad = await client.call_tool(
            "memory_update", {"record_id": "mem_nope", "subject": "ana", "text": "x y z"}
        )
        assert bad.is_error and "not found" in bad.content[0].text
        wrong = await client.call_tool("memory_add", {"subject": "ana", "text": "x", "type": "?"})
        assert wrong.is_error

        erased = payload(await client.call_tool("memory_erase", {"subject": "ana"}))
        assert erased["erased_versions"] == 3
        assert (
            payload(await client.call_tool("memory_search", {"subject": "ana", "query": "jazz"}))
            == []
        )


async def test_tools_see_only_their_tenant(service: MemoryService) -> None:
    current = {"tenant": "acme"}

    async def ops(_ctx: Any) -> ServiceOps:
        return ServiceOps(service, current["tenant"])

    async with Client(build_tools(ops)) as client:
        await client.call_tool("memory_add", {"subject": "ana", "text": "acme's secret plan"})
        # The record is findable by its own tenant, so the empty answer below is isolation.
        mine = payload(
            await client.call_tool("memory_search", {"subject": "ana", "query": "secret plan"})
        )
        assert [r["text"] for r in mine] == ["acme's secret plan"]
        current["tenant"] = "globex"
        found = payload(
            await client.call_tool("memory_search", {"subject": "ana", "query": "secret plan"})
        )
        assert found == []
