"""A store keeps only the scopes its spec names (real embedder, real key files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from freehold_serving.memory.args import MemoryArgs
from freehold_serving.memory.records import NewRecord
from freehold_serving.memory.service import MemoryService, builtin_embedder, key_material
from freehold_serving.memory.store import StoreError

pytestmark = pytest.mark.slow


def test_a_scope_the_spec_leaves_out_is_refused_and_nothing_is_added(tmp_path: Path) -> None:
    args = MemoryArgs(name="m", data_dir=str(tmp_path), scopes=["user", "session"])
    service = MemoryService(args, embedder=builtin_embedder(), keys=key_material(args))

    async def scenario() -> None:
        await service.add("t", [NewRecord(subject="s", text="kept", session_id="x")])
        with pytest.raises(StoreError) as refused:
            await service.add(
                "t",
                [
                    NewRecord(subject="s", text="fine"),
                    NewRecord(subject="s", text="agent memory", agent_id="bot"),
                ],
            )
        assert refused.value.param == "records[1].agent_id"
        assert "no agent-scoped records" in refused.value.message

    asyncio.run(scenario())
    assert service.store.counts().records == 1
