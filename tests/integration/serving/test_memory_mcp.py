"""MCP on the real memory store (Ray Serve, the built-in embedder, two tenants' keys), with
the MCP SDK's own client: Streamable HTTP at /v1/memory/mcp, and `freehold memory mcp`
over stdio as a desktop agent starts it."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.integration.serving.conftest import MEMORY_KEYS, Stack

pytestmark = pytest.mark.slow


def payload(result: Any) -> Any:
    assert not result.is_error, result.content
    content = result.structured_content
    if content is not None:
        return content["result"] if set(content) == {"result"} else content
    return json.loads(result.content[0].text)


def over_http(stack: Stack, tenant: str) -> Any:
    headers = {"Authorization": f"Bearer {MEMORY_KEYS[tenant]}"}
    return streamable_http_client(
        f"{stack.memory}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=120)
    )


async def test_streamable_http_under_the_tenants_keys(stack: Stack) -> None:
    async with Client(over_http(stack, "acme")) as acme:
        added = payload(
            await acme.call_tool(
                "memory_add", {"subject": "mcp-ana", "text": "Ana is allergic to shellfish"}
            )
        )
        found = payload(
            await acme.call_tool(
                "memory_search", {"subject": "mcp-ana", "query": "can she eat prawns?"}
            )
        )
        assert found[0]["id"] == added["id"]
    # The record is the API's too (same store, same tenant) ...
    with httpx.Client(
        base_url=stack.memory, headers={"Authorization": f"Bearer {MEMORY_KEYS['acme']}"}
    ) as c:
        assert c.get(f"/records/{added['id']}").json()["text"] == "Ana is allergic to shellfish"
    # ... and another tenant's tools do not see it.
    async with Client(over_http(stack, "globex")) as globex:
        assert (
            payload(
                await globex.call_tool(
                    "memory_search", {"subject": "mcp-ana", "query": "shellfish"}
                )
            )
            == []
        )
    # No key, or a wrong one: the same 401 as every memory route, before MCP is reached.
    for headers in ({}, {"Authorization": "Bearer nope"}):
        answer = httpx.post(
            f"{stack.memory}/mcp",
            headers={**headers, "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")


async def test_stdio_for_desktop_agents(stack: Stack) -> None:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "freehold", "memory", "mcp"],
        env={
            **os.environ,
            "FREEHOLD_MEMORY_URL": stack.memory,
            "FREEHOLD_API_KEY": MEMORY_KEYS["acme"],
        },
    )
    async with Client(server) as client:
        added = payload(
            await client.call_tool(
                "memory_add", {"subject": "mcp-ben", "text": "Ben runs marathons", "type": "fact"}
            )
        )
        found = payload(
            await client.call_tool("memory_search", {"subject": "mcp-ben", "query": "running"})
        )
        assert found[0]["id"] == added["id"]
        exported = payload(await client.call_tool("memory_export", {"subject": "mcp-ben"}))
        assert exported["records"] == 1 and exported["sha256"].startswith("sha256:")
        erased = payload(await client.call_tool("memory_erase", {"subject": "mcp-ben"}))
        assert erased["erased_versions"] == 1
        gone = await client.call_tool("memory_export", {"subject": "mcp-ben"})
        assert gone.is_error and "no records" in gone.content[0].text
