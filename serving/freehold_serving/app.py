"""Ray Serve application: `import_path: freehold_serving.app:build_app` with ServingArgs.

Two deployments: the OpenAI-compatible API together with one model replica (one llama.cpp
context each, autoscaled on ongoing requests; API and engine in one replica saves a hop
per request), and, when the embeddings extra is installed, the embedder. vLLM on one
replica runs in the same way, Ray Serve LLM's server inside the API's process. Engines
whose replicas are chosen per request (vLLM, and llama.cpp with prefix-aware routing, over
several replicas) run behind a front instead: the API in one deployment, the engine in
another.
"""

# No `from __future__ import annotations` here: Ray Serve reads build_app's parameter
# annotation as a class to validate `args` with it.

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.responses import JSONResponse, Response

from freehold_serving import embeddings
from freehold_serving.args import EmbeddingsConfig, ServingArgs, serving_runtime_env
from freehold_serving.engine_metrics import EngineMetrics
from freehold_serving.engines import prefix_routing, remote
from freehold_serving.engines.base import Chunk, EngineError, GenerationJob, Generator
from freehold_serving.llm_server import LLMServer
from freehold_serving.openai.api import OpenAIApi, Stream, add_error_handlers, error_response
from freehold_serving.openai.errors import ApiError
from freehold_serving.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from freehold_serving.telemetry import Telemetry, prometheus_reader
from freehold_serving.vault_keys import follow_keys, load_keys

log = logging.getLogger(__name__)
fastapi_app = FastAPI(title="Freehold OpenAI-compatible API", docs_url=None, redoc_url=None)
# The handlers read the raw request (to answer OpenAI-style errors and bound the body
# while reading), so FastAPI cannot see the bodies: describe them in /openapi.json here.
REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


def _openapi() -> dict[str, Any]:
    if fastapi_app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic.json_schema import models_json_schema

        schema = get_openapi(title=fastapi_app.title, version="1", routes=fastapi_app.routes)
        refs, defs = models_json_schema(
            [(m, "validation") for m in REQUEST_BODIES.values()],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        for path, model in REQUEST_BODIES.items():
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(model, "validation")]}},
            }
        fastapi_app.openapi_schema = schema
    return fastapi_app.openapi_schema


fastapi_app.openapi = _openapi  # type: ignore[method-assign]


add_error_handlers(fastapi_app, "a request")


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    return error_response(ApiError(400, "Invalid request."))


@functools.cache
def _load_gauges() -> tuple[Any, Any]:
    # Made in the replica's process (the ingress class is pickled by value).
    from prometheus_client import Gauge

    return (
        Gauge(
            "freehold_serving_requests_in_flight",
            "Requests admitted by this replica and not finished (generating or queued).",
            ["model"],
        ),
        Gauge(
            "freehold_serving_request_capacity",
            "Requests this replica admits at once (running + queued) before answering 503.",
            ["model"],
        ),
    )


def _overloaded(args: ServingArgs) -> ApiError:
    return ApiError(
        503,
        "The server is overloaded: every model replica is busy and the queue is full. "
        "Please retry after a short wait.",
        type="server_error",
        code="overloaded",
        headers={"Retry-After": str(args.retry_after_seconds)},
    )


class EmbedderServer:
    """The embedding model, loaded in the background: importing torch takes seconds of
    CPU that the first completion needs on a small node. The load starts when the model
    server says so (after its first completion, or a little later if none comes), or at
    the first embedding request, which waits for it."""

    def __init__(self, config: EmbeddingsConfig) -> None:
        self._max_batch = config.max_batch
        self._loaded: asyncio.Future[embeddings.Embedder] | None = None

    def _load(self) -> "asyncio.Future[embeddings.Embedder]":
        if self._loaded is None:
            loop = asyncio.get_running_loop()
            self._loaded = loop.run_in_executor(None, embeddings.Embedder)
        return self._loaded

    async def warm(self) -> None:
        self._load()

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        embedder = await self._load()
        if len(texts) > self._max_batch:
            raise EngineError(f"at most {self._max_batch} inputs per request", param="input")
        limit = embedder.max_length
        for i, text in enumerate(texts):
            n = embedder.count_tokens([text])
            if n >= limit:
                raise EngineError(
                    f"input[{i}] is {n} tokens; this model's maximum is {limit - 1}.",
                    code="context_length_exceeded",
                    param="input",
                )
        result = await asyncio.to_thread(embedder.embed, texts)
        return result.vectors, result.tokens

    async def check_health(self) -> None:
        # A failed load (say, a broken install) marks the replica unhealthy.
        loaded = self._loaded
        if loaded is not None and loaded.done() and loaded.exception() is not None:
            raise RuntimeError("the embedding model failed to load")


# Defined before the ingress class: @serve.ingress captures the class (and what its
# methods reference) when the class statement runs.
class Admitted:
    """The rest of an admitted generation. It holds the admission slot (and, through the
    generation, the engine) until `aclose()`, which always releases: an async generator
    closed before it ever started would not run its `finally`, and a client that leaves
    before the first byte was sent would leak the slot and keep the engine busy."""

    def __init__(self, generation: AsyncGenerator[list[Chunk], None], release: Any) -> None:
        self._generation = generation
        self._release = release
        self._closed = False

    def __aiter__(self) -> "Admitted":
        return self

    async def __anext__(self) -> list[Chunk]:
        return await anext(self._generation)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._generation.aclose()
        finally:
            self._release()


# With no completion to wait for, the embedder starts loading this long after the engine has.
EMBEDDER_WARM_AFTER_S = 20.0

# Generation-free requests (/metrics, /v1/models, /health) must never wait behind
# generations: Ray's per-replica limit leaves this much room above our own admission.
LIGHT_REQUEST_SLACK = 16


@serve.ingress(fastapi_app)
class OpenAIServer:
    """One model replica: the OpenAI-compatible API and the engine in one process.

    Tokens stream from the engine thread to the HTTP response without crossing another
    process, which matters on small nodes where every hop steals CPU from the engine.
    """

    def __init__(
        self,
        args: ServingArgs,
        embedder: DeploymentHandle[Any] | None,
        engine: DeploymentHandle[Any] | None = None,
    ) -> None:
        self._args = args
        self._runner: Generator
        self._engine_metrics: EngineMetrics | None = None
        self._engine_health: Callable[[], Awaitable[None]] | None = None
        if args.engine.name == "vllm":
            # vLLM through Ray Serve LLM, which batches: in its own deployment behind this
            # front (several replicas), or in this process (one).
            from freehold_serving.engines.vllm import LocalVllmGenerator, VllmGenerator

            if engine is not None:
                self._runner = VllmGenerator(args, engine)
            else:
                local = LocalVllmGenerator(args)  # verifies the directory first: fail closed
                self._runner, self._engine_health = local, local.check_health
            self._engine_metrics = EngineMetrics(args.model.served_name)
        elif engine is not None:  # llama.cpp replicas routed by prefix
            from freehold_serving.engines.remote import RemoteGenerator

            self._runner = RemoteGenerator(args, engine)
        else:
            self._runner = LLMServer(args)  # verifies the digest, then loads: fail closed
        self._embedder = embedder
        scale = args.autoscaling
        self._capacity = scale.max_ongoing_requests + scale.max_queued_requests
        if engine is not None:  # one front admits for every engine replica
            self._capacity *= scale.max_replicas
        self._admitted = 0
        in_flight, capacity = _load_gauges()
        in_flight.labels(args.model.served_name).set_function(lambda: float(self._admitted))
        capacity.labels(args.model.served_name).set(self._capacity)
        telemetry = Telemetry(
            args.telemetry, f"freehold-{args.name}", metric_readers=[prometheus_reader()]
        )
        if args.audit is not None:
            from freehold_serving.access import AccessLog

            telemetry.access = AccessLog(args, args.audit)
        # A replica that cannot read its keys does not start: fail closed.
        keys = load_keys(args.api_keys)
        self._api = OpenAIApi(args, self._open, self._embed if embedder else None, telemetry, keys)
        self._refresh = follow_keys(keys, args.api_keys)
        self._first_done = asyncio.Event()
        # Ready (/health) once the engine answers: with the engine in its own deployment
        # (vLLM, prefix-routed llama.cpp) this front is up long before it, and a pod
        # marked Ready then would take requests that wait a minute for the engine.
        self._engine_ready = asyncio.Event()
        self._engine_wait = asyncio.get_running_loop().create_task(self._await_engine())
        if embedder is not None:
            self._warming = asyncio.get_running_loop().create_task(self._warm_embedder())

    async def check_health(self) -> None:
        """Ray Serve's periodic check: a replica whose vLLM (in this process) failed to
        start or died is replaced."""
        if self._engine_health is not None:
            await self._engine_health()

    async def _await_engine(self) -> None:
        while True:
            try:
                await self._runner.ready()
            except Exception:  # an engine replica that failed to start: Ray starts another
                log.warning("the engine is not answering yet; asking again", exc_info=True)
                await asyncio.sleep(2)
                continue
            self._engine_ready.set()
            return

    async def _warm_embedder(self) -> None:
        """Start the embedder's load once the engine has loaded and the first completion is
        out of the way: never on the cores a loading engine is using (vLLM loads on a thread
        of its own while this loop runs on)."""
        await self._engine_ready.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_done.wait(), EMBEDDER_WARM_AFTER_S)
        assert self._embedder is not None
        try:
            await self._embedder.warm.remote()
        except Exception:
            log.warning("could not start loading the embedding model", exc_info=True)

    async def _open(self, job: GenerationJob) -> Stream:
        if self._admitted >= self._capacity:
            raise _overloaded(self._args)
        self._admitted += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._admitted -= 1
                self._first_done.set()

        generation = self._runner.generate(job)
        try:
            first: list[Chunk] = await anext(generation, [])
        except EngineError as exc:
            release()
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        except BaseException:
            release()
            raise

        return first, Admitted(generation, release)

    async def _embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        assert self._embedder is not None
        try:
            result: tuple[list[list[float]], int] = await self._embedder.embed.remote(texts)
        except BackPressureError:
            raise _overloaded(self._args) from None
        except EngineError as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        return result

    @fastapi_app.get("/health")
    async def health(self) -> Response:
        if not self._engine_ready.is_set():
            return error_response(
                ApiError(
                    503,
                    "The model's engine is still starting. Please retry shortly.",
                    type="server_error",
                    code="engine_starting",
                    headers={"Retry-After": "5"},
                )
            )
        return JSONResponse({"status": "ok"})

    @fastapi_app.get("/metrics")
    async def metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest()
        if self._engine_metrics is not None:
            body += (await self._engine_metrics.text()).encode()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        return await self._api.models(request)

    @fastapi_app.get("/v1/models/{model_id:path}")
    async def model(self, request: Request, model_id: str) -> Response:
        return await self._api.model(request, model_id)

    @fastapi_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._api.completions(request)

    @fastapi_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._api.chat_completions(request)

    @fastapi_app.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        return await self._api.embeddings(request)


def deployment_options(args: ServingArgs) -> dict[str, Any]:
    """Ray Serve options of the deployment that answers HTTP (vLLM on one replica: see
    vllm.replica_options, which needs the model's directory)."""
    if args.engine.name == "vllm" or remote.split(args):
        return front_options(args)
    return replica_options(args)


def replica_options(args: ServingArgs) -> dict[str, Any]:
    """Ray Serve options of a llama.cpp replica, from the spec's scaling section."""
    scale = args.autoscaling
    threads = args.engine.llamacpp.threads
    ceiling = scale.max_ongoing_requests + scale.max_queued_requests + LIGHT_REQUEST_SLACK
    options: dict[str, Any] = {
        # Our own admission (in the replica) answers overload with an OpenAI error.
        # Ray's limits sit above it as a backstop (same status and Retry-After, plain
        # body): a burst briefly queues in Ray's router before reaching a replica, so
        # a router queue as small as ours would refuse requests we have room for.
        "max_ongoing_requests": ceiling,
        "max_queued_requests": ceiling,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=args.retry_after_seconds
        ),
        "ray_actor_options": {
            "num_cpus": threads,
            "num_gpus": args.engine.gpus,
            # This worker *is* the model server: llama.cpp's threads at nice 0.
            "runtime_env": serving_runtime_env(),
        },
        # Loading and verifying a model takes a while on a cold node.
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": 30,
    }
    return options | scale.serve_options()


def front_options(args: ServingArgs) -> dict[str, Any]:
    """The front of engine replicas (vllm; llama.cpp routed by prefix): API, admission
    and records for every engine replica (the engine deployment scales on its own). It
    holds no model."""
    scale = args.autoscaling
    per_replica = scale.max_ongoing_requests + scale.max_queued_requests
    ceiling = per_replica * scale.max_replicas + LIGHT_REQUEST_SLACK
    return {
        "max_ongoing_requests": ceiling,
        "max_queued_requests": ceiling,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=args.retry_after_seconds
        ),
        # Relays and records only; its CPU time is small and must not keep an engine
        # replica from being placed on a small node.
        "ray_actor_options": {
            "num_cpus": 0,
            "num_gpus": 0,
            # Every token waits for the front: at nice 0 like the engine's processes.
            "runtime_env": serving_runtime_env(),
        },
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": 30,
        "num_replicas": 1,
    }


def build_app(args: ServingArgs) -> Application:
    """The typed app builder named by `import_path` in serveConfigV2."""
    embedder = None
    if args.embeddings.enabled:
        if embeddings.available():
            embedder = (
                serve.deployment(name="embeddings")(EmbedderServer)
                .options(
                    max_ongoing_requests=8,
                    max_queued_requests=64,
                    ray_actor_options={"num_cpus": 0},
                )
                .bind(args.embeddings)
            )
        else:
            log.warning("embeddings extra not installed: /v1/embeddings is disabled")
    server = serve.deployment(name="openai")(OpenAIServer)
    if args.engine.name == "vllm":
        from freehold_serving.engines import vllm
        from freehold_serving.model_files import resolve

        if not vllm.available():
            raise vllm.unavailable_error()
        model_dir = str(resolve(args.model))
        if vllm.in_process(args):
            options = vllm.replica_options(args, model_dir, front_options(args))
            return server.options(**options).bind(args, embedder)
        engine = vllm.build_engine(args, model_dir)
        return server.options(**front_options(args)).bind(args, embedder, engine)
    if remote.split(args):
        replicas = (
            serve.deployment(name=remote.DEPLOYMENT_NAME)(remote.EngineReplica)
            .options(
                **replica_options(args),
                request_router_config={"request_router_class": prefix_routing.CLASS_PATH},
            )
            .bind(args)
        )
        return server.options(**front_options(args)).bind(args, embedder, replicas)
    return server.options(**replica_options(args)).bind(args, embedder)
