"""Runs one llama.cpp engine, chunks streamed from its thread.

The replica admits a bounded number of requests (see app.OpenAIServer). With one
sequence (the default) an asyncio lock keeps them in arrival order while the engine works
in its own thread; with `parallel` > 1 they go to the batching engine's scheduler
(engines.llamacpp_batch), which keeps arrival order itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor

from freehold_serving.args import EngineConfig, ServingArgs
from freehold_serving.engines.base import (
    Chunk,
    Engine,
    EngineError,
    GenerationJob,
    SamplingParams,
)
from freehold_serving.engines.llamacpp import LlamaCppEngine
from freehold_serving.engines.llamacpp_batch import BatchedLlamaCpp
from freehold_serving.model_files import verified_path

log = logging.getLogger(__name__)


_DONE = BatchedLlamaCpp.DONE  # the end of a request's chunks, from either engine


def make_engine(args: ServingArgs) -> LlamaCppEngine:
    """Verify the model file, then load it. Raises on a wrong digest: fail closed."""
    engine: EngineConfig = args.engine
    if engine.name == "vllm":
        # Engine vllm runs in its own Ray Serve LLM deployment (engines.vllm), never in this
        # in-process server: reaching here is a wiring mistake, not a user's.
        raise EngineError(
            "engine vllm is served by its own engine deployment (freehold_serving.engines."
            "vllm), not by the in-process llama.cpp server",
            code="engine_unavailable",
        )
    path = verified_path(args.model)
    log.info("model %s verified (sha256 %s); loading", path.name, args.model.sha256)
    if engine.llamacpp.parallel > 1:
        return BatchedLlamaCpp(path, engine)
    return LlamaCppEngine(path, engine)


async def _drain(queue: asyncio.Queue[object]) -> AsyncGenerator[list[Chunk], None]:
    """Chunks from an engine thread, in batches of what has arrived, until _DONE."""
    while True:
        batch: list[Chunk] = []
        item = await queue.get()
        while True:
            if item is _DONE:
                if batch:
                    yield batch
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Chunk)
            batch.append(item)
            if queue.empty():
                break
            item = queue.get_nowait()
        yield batch


class LLMServer:
    """The `Generator` of the llama.cpp engine: one sequence at a time (requests queue on
    a lock in arrival order while the engine runs in its own thread), or several decoded
    together by the batching engine."""

    def __init__(self, args: ServingArgs) -> None:
        self._engine: Engine = make_engine(args)
        self._lock = asyncio.Lock()
        # One worker: the engine is not thread-safe and runs one sequence at a time.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    def _tokens(self, job: GenerationJob) -> tuple[list[int], SamplingParams]:
        if job.adapter is not None:  # admission refuses adapters without vllm
            raise EngineError("LoRA adapters are served by engine vllm", param="model")
        engine = self._engine
        params = job.params
        if job.messages is not None:
            chat = engine.render_chat([{"role": r, "content": c} for r, c in job.messages])
            tokens = engine.tokenize_chat(chat)
            params = SamplingParams(**{**params.__dict__, "stop": (*params.stop, *chat.stop)})
        else:
            tokens = engine.tokenize(job.prompt or "", add_special=True)
        # Reject before queueing behind other requests.
        engine.check_length(len(tokens), params.max_tokens)
        return tokens, params

    async def generate(self, job: GenerationJob) -> AsyncGenerator[list[Chunk], None]:
        # Off the event loop: rendering and tokenizing a 4 MiB prompt would stall every
        # other stream of this replica. (Tokenizing reads only the vocabulary.)
        tokens, params = await asyncio.to_thread(self._tokens, job)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: object) -> None:  # from the engine's thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        if isinstance(self._engine, BatchedLlamaCpp):
            self._engine.submit(tokens, params, cancel, emit)
            try:
                async for batch in _drain(queue):
                    yield batch
            finally:
                cancel.set()  # the scheduler frees the slot at its next step
            return

        def run() -> None:
            try:
                for chunk in self._engine.generate(tokens, params, cancel):
                    emit(chunk)
            except BaseException as exc:  # handed to the event loop, raised there
                emit(exc)
            finally:
                emit(_DONE)

        async with self._lock:
            worker = loop.run_in_executor(self._pool, run)
            try:
                async for batch in _drain(queue):
                    yield batch
            finally:
                # Client gone or finished: stop the engine before the next request runs.
                cancel.set()
                await asyncio.shield(worker)

    async def ready(self) -> int:
        return self._engine.context_length
