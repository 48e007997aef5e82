"""llama.cpp replicas behind a front, for prefix-aware routing across them.

By default a llama.cpp replica serves HTTP itself: the API and the engine share a
process, one hop fewer per token. Routing a request by its prompt needs the prompt
before a replica is picked, which Ray Serve's HTTP proxy does not read; so with
prefix-aware routing and more than one replica, the front (app.OpenAIServer) parses
the request and calls the engine replicas through a handle, routed by
engines.prefix_routing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from freehold_serving.args import ServingArgs
from freehold_serving.engines.base import Chunk, EngineError, GenerationJob
from freehold_serving.llm_server import LLMServer

DEPLOYMENT_NAME = "llamacpp"


def split(args: ServingArgs) -> bool:
    """Whether the llama.cpp engine runs behind a front (see the module doc)."""
    return (
        args.engine.name == "llamacpp"
        and args.engine.llamacpp.request_router == "prefix-aware"
        and args.autoscaling.max_replicas > 1
    )


class EngineReplica:
    """One llama.cpp engine replica: `LLMServer` (verifies, then loads) over a handle."""

    def __init__(self, args: ServingArgs) -> None:
        self._server = LLMServer(args)

    async def generate(self, job: GenerationJob) -> AsyncGenerator[list[Chunk], None]:
        async for batch in self._server.generate(job):
            yield batch

    async def context_length(self) -> int:
        return await self._server.ready()


class RemoteGenerator:
    """The front's `Generator` over the engine replicas."""

    def __init__(self, args: ServingArgs, handle: Any) -> None:
        self._plain = handle
        self._handle = handle.options(stream=True)

    async def ready(self) -> int:
        """Once an engine replica answers (the call waits while none runs yet)."""
        context: int = await self._plain.context_length.remote()
        return context

    async def generate(self, job: GenerationJob) -> AsyncGenerator[list[Chunk], None]:
        stream = self._handle.generate.remote(job)
        finished = False
        try:
            async for batch in stream:
                finished = any(c.finish_reason is not None for c in batch)
                yield batch
        except EngineError as exc:
            # Ray wraps the replica's exception; the API wants the plain one.
            raise EngineError(exc.message, exc.code, exc.param) from None
        finally:
            if not finished:  # the client left (or an error): stop generating for it
                stream.cancel()
