"""The Ray Serve LLM server class of the vllm engine: Ray Serve LLM's own `LLMServer`
(vLLM engine, multiplexing, request ids, engine metrics), which first verifies the model
directory it is about to load. Imported only where vLLM is installed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.serve.llm.deployment import LLMServer

from freehold_serving.args import ServingArgs
from freehold_serving.model_files import verify_file

log = logging.getLogger(__name__)


class FreeholdLLMServer(LLMServer):
    # Ray Serve awaits an async constructor (as LLMServer's own).
    async def __init__(self, llm_config: Any, *, args: ServingArgs) -> None:  # type: ignore[misc]
        # Fail closed: a directory that is not the pinned (and, when required, signed) one
        # never reaches vLLM. A refusal fails the replica with the reason.
        path, verified = await asyncio.to_thread(verify_file, args.model)
        log.info(
            "model %s verified (sha256 %s%s); starting vLLM",
            path,
            args.model.sha256,
            f", signed by {verified.signer}" if verified else "",
        )
        await super().__init__(llm_config)
