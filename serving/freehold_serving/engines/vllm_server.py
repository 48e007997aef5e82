"""The Ray Serve LLM server class of the vllm engine: Ray Serve LLM's own `LLMServer`
(vLLM engine, multiplexing, request ids, engine metrics), which first verifies the model
directory it is about to load. Imported only where vLLM is installed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
from ray.serve.llm.deployment import LLMServer

from freehold_serving.args import ModelConfig, ServingArgs
from freehold_serving.engines.vllm import (
    llm_config,
    one_process_executor,
    ready_batches,
    shares_node,
    verified_model,
)
from freehold_serving.model_files import verify_file

log = logging.getLogger(__name__)


class AdapterLoader(LoraModelLoader):
    """The LoRA adapters of this deployment, loaded on demand (Ray Serve multiplexing) from
    where the spec pins them: verified (digest, signature when named) on every load, never
    downloaded from a hub. Ray Serve LLM's loader interface."""

    adapters: dict[str, ModelConfig] = {}

    def __init__(self, download_timeout_s: float | None = None, max_tries: int = 1) -> None:
        super().__init__(download_timeout_s=download_timeout_s, max_tries=max_tries)
        self._ids = itertools.count(1)

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> Any:
        from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

        adapter = self.adapters.get(lora_model_id)
        if adapter is None:
            raise ValueError(f"no LoRA adapter named {lora_model_id!r} in this deployment")
        path, _ = await asyncio.to_thread(verify_file, adapter)
        log.info("LoRA adapter %s verified (sha256 %s); loading", lora_model_id, adapter.sha256)
        return DiskMultiplexConfig(
            model_id=lora_model_id,
            max_total_tokens=None,
            local_path=str(path),
            lora_assigned_int_id=next(self._ids),
        )


def adapter_loader(args: ServingArgs) -> type[AdapterLoader]:
    return type(
        "FreeholdAdapterLoader",
        (AdapterLoader,),
        {"adapters": {a.served_name: a for a in args.adapters}},
    )


def confine_to_cores(args: ServingArgs, local_rank: int) -> list[int]:
    """A CPU replica's own share of the node's cores (its CPU request, by its rank on the
    node), so replicas side by side do not compute on the same cores."""
    allowed = sorted(os.sched_getaffinity(0))
    per = max(1, min(args.engine.llamacpp.threads, len(allowed)))
    start = (local_rank * per) % len(allowed)
    cores = allowed[start : start + per]
    os.sched_setaffinity(0, cores)  # inherited by vLLM's engine processes
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    return cores


class LocalModel(CallbackBase):
    """Ray Serve LLM's start-up hooks: the model directory is already on the node (mounted
    or fetched, then verified), so skip its node initialization, which runs a task per node
    (a new worker process each: seconds on a small node) to download what is there."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False


def _engine_class() -> type[Any]:
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine

    class FreeholdVLLMEngine(VLLMEngine):
        # Ray Serve LLM 2.60's private method, as _start_engine below; the vllm
        # integration tests start the engine through it.
        def _prepare_engine_config(self, callback_ctx: Any) -> tuple[Any, Any, Any]:
            from vllm.platforms import current_platform

            engine_args, frontend_args, config = super()._prepare_engine_config(callback_ctx)
            if one_process_executor(config.parallel_config, current_platform.is_cpu()):
                config.parallel_config.distributed_executor_backend = "uni"
                engine_args.distributed_executor_backend = "uni"
            return engine_args, frontend_args, config

    return FreeholdVLLMEngine


class FreeholdLLMServer(LLMServer):
    def _get_default_engine_class(self) -> type[Any]:
        return _engine_class()

    # Ray Serve awaits an async constructor (as LLMServer's own).
    async def __init__(self, llm_config: Any, *, args: ServingArgs) -> None:  # type: ignore[misc]
        # Fail closed: a directory that is not the pinned (and, when required, signed) one
        # never reaches vLLM. A refusal fails the replica with the reason.
        await asyncio.to_thread(verified_model, args)
        if shares_node(args):
            from ray import serve

            cores = confine_to_cores(args, serve.get_replica_context().rank.local_rank)
            log.info("CPU engine on cores %s", cores)
        await super().__init__(llm_config, model_downloader=adapter_loader(args))

    async def _start_engine(self) -> None:
        # LLMServer's own also pushes a usage-telemetry report, through a detached actor it
        # creates and waits for (a new worker process before the replica is ready: ~10 s
        # on 2 cores). Freehold reports nothing anywhere; start the engine only.
        # (Ray Serve LLM 2.60's private method: tests/integration/vllm start through it.)
        if self.engine is None:
            raise ValueError("Engine is not set")
        await self.engine.start()  # type: ignore[no-untyped-call]

    def _batch_output_stream(self, generator: Any) -> AsyncGenerator[list[Any], None]:
        # Every output as soon as it is ready (see ready_batches), not every 50 ms.
        return ready_batches(generator)

    async def load_adapter(self, name: str) -> None:
        """A LoRA adapter for a call made in this process (vllm.LocalVllmGenerator): there
        is no multiplexed request context naming it, so load it (verified, least recently
        used evicted, as for a routed request) and register it with vLLM here."""
        if self.engine is None:
            raise ValueError("Engine is not set")
        await self.engine.resolve_lora(await self._load_model(name))


class LocalLLMServer(FreeholdLLMServer):
    """Called in the front's own process (vllm.LocalVllmGenerator), whose reader batches
    what piled up as it hands outputs across to the front's loop: batching here as well
    would add a task and a queue per request for nothing."""

    def _batch_output_stream(self, generator: Any) -> Any:
        return generator


def local_server(args: ServingArgs, model_dir: str) -> LocalLLMServer:
    """The LLMServer of a replica that runs vLLM in the front's process, not started yet
    (`await start()`), for the directory `model_dir` already verified (verified_model)."""
    server = LocalLLMServer.sync_init(
        llm_config(args, model_dir), model_downloader=adapter_loader(args)
    )
    assert isinstance(server, LocalLLMServer)  # sync_init makes an instance of cls
    return server
