"""Admission slots are always given back (issue 16): a stream closed at any stage, even
before it was iterated, releases its slot and the engine. Before the fix, the slot was
returned in the `finally` of an async generator that a client leaving early never
started, so after maxOngoing + maxQueued such clients the replica answered 503 forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from freehold_serving.app import Admitted
from freehold_serving.engines.base import Chunk

pytestmark = pytest.mark.security


def engine_stream(lock: asyncio.Lock) -> AsyncGenerator[list[Chunk], None]:
    async def generate() -> AsyncGenerator[list[Chunk], None]:
        async with lock:  # as LLMServer holds the engine while it generates
            for i in range(3):
                yield [Chunk(text=str(i))]

    return generate()


async def test_closed_after_the_first_chunk_but_never_iterated() -> None:
    lock = asyncio.Lock()
    released: list[int] = []
    generation = engine_stream(lock)
    await anext(generation)  # the first chunk, as _open reads it
    rest = Admitted(generation, lambda: released.append(1))
    assert lock.locked()
    await rest.aclose()
    await rest.aclose()  # idempotent: the response's background task closes it again
    assert released == [1] and not lock.locked()


async def test_closed_midway_and_at_the_end() -> None:
    for stop_after in (1, 5):
        lock = asyncio.Lock()
        released: list[int] = []
        generation = engine_stream(lock)
        await anext(generation)
        rest = Admitted(generation, lambda r=released: r.append(1))
        seen = 0
        async for _ in rest:
            seen += 1
            if seen == stop_after:
                break
        await rest.aclose()
        assert released == [1] and not lock.locked()
