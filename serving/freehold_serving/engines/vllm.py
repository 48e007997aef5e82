"""The vLLM engine, served by Ray Serve LLM behind the Freehold front.

The Freehold front (app.OpenAIServer: API keys, tenants, memory, admission, access records,
metrics) stays the only ingress. It turns each admitted request into a vLLM OpenAI request
for Ray Serve LLM's `LLMServer` (`ray.serve.llm`), which runs vLLM's engine with continuous
batching. With more than one replica, the LLMServer is a deployment of its own behind the
front, and Ray Serve LLM's prefix-aware request router (`PrefixCacheAffinityRouter`) sends
a multi-turn chat or a shared system prompt to the replica whose KV cache already holds
it. With one replica, the front runs the LLMServer in its own process (no hop between
them), as `vllm serve` runs its API and engine client together.

The model is a Hugging Face directory pinned by its directory digest; the replica verifies
it (digest, and signature when the spec names one) before vLLM opens it: fail closed.

vLLM and Ray Serve LLM are imported only here and only when the engine is vllm: they are
the `vllm` extra's, not the base serving install's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from freehold_serving.args import ServingArgs, serving_runtime_env
from freehold_serving.engines.base import (
    Chunk,
    ContextLengthError,
    EngineError,
    FinishReason,
    GenerationJob,
    TokenLogprob,
)

log = logging.getLogger(__name__)
ROUTERS = {
    "prefix-aware": "ray.serve.llm.request_router:PrefixCacheAffinityRouter",
    # Ray Serve's default: the less loaded of two random replicas.
    "power-of-two": "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter",
}
T = TypeVar("T")
MAX_LORAS_PER_BATCH = 8
# The prefix-aware router's memory of what each replica was sent (prompt text in a prefix
# tree, one actor per deployment): without eviction Ray Serve LLM keeps every prompt it
# ever routed, for the life of the service. Past this many characters per replica the
# least recently used text goes (about 100,000 tokens: more than a CPU replica's KV cache
# holds; on a GPU holding more, an evicted prefix only makes a request route by load).
PREFIX_TREE_CHARS = 400_000
# The deployment's name in the application (Ray Serve LLM prefixes its class name).
DEPLOYMENT_NAME = "vllm"


def available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def unavailable_error() -> EngineError:
    return EngineError(
        "engine vllm: vLLM is not installed in this serving environment (pip install "
        "'freehold[serving,vllm]'; scripts/vllm-env makes one)",
        code="engine_unavailable",
    )


def warm_imports() -> None:
    """Import Ray Serve LLM (and with it vLLM) ahead of building the application: `freehold
    up` does it while Ray starts, taking seconds off the time to ready."""
    import ray.serve.llm  # noqa: F401


def one_process_executor(parallel: Any, on_cpu: bool) -> bool:
    """Run the model in the engine-core process itself (vLLM's "uni" executor) where Ray
    Serve LLM would start one more worker process for it: on CPU, one worker in all (no
    tensor or pipeline parallelism). That is what `vllm serve` does there; the extra
    process cost ~10 s of start on 2 cores (it imports torch and vLLM again) and a message
    queue hop on every engine step."""
    return on_cpu and parallel.world_size == 1 and parallel.distributed_executor_backend == "mp"


def engine_kwargs(args: ServingArgs, model_dir: str) -> dict[str, Any]:
    """vLLM engine arguments from the spec (the same for `vllm serve` in bench/)."""
    v = args.engine.vllm
    kwargs: dict[str, Any] = {
        "tokenizer": model_dir,
        "dtype": v.dtype,
        "max_model_len": args.engine.context_length,
        "max_num_seqs": v.max_num_seqs,
        "tensor_parallel_size": v.tensor_parallel_size,
        "pipeline_parallel_size": v.pipeline_parallel_size,
        # Prefix caching is what prefix-aware routing routes to.
        "enable_prefix_caching": True,
        "enforce_eager": (args.engine.gpus == 0) if v.enforce_eager is None else v.enforce_eager,
        # The model directory is verified; code inside it would not be.
        "trust_remote_code": False,
    }
    if v.quantization is not None:
        kwargs["quantization"] = v.quantization
    if v.block_size is not None:
        kwargs["block_size"] = v.block_size
    if args.adapters:
        kwargs["enable_lora"] = True
        kwargs["max_lora_rank"] = v.max_lora_rank
        # Adapters batched together in one step (each request uses one).
        kwargs["max_loras"] = min(len(args.adapters), MAX_LORAS_PER_BATCH)
    if args.engine.gpus > 0:
        kwargs["gpu_memory_utilization"] = v.gpu_memory_utilization
    return kwargs


def engine_env(args: ServingArgs) -> dict[str, str]:
    """Environment of the engine's processes. On CPU, vLLM sizes its KV cache from
    VLLM_CPU_KVCACHE_SPACE (GiB); unset, it takes most of the node's memory."""
    env: dict[str, str] = serving_runtime_env()["env_vars"]
    env |= {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    if args.engine.gpus == 0:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.engine.vllm.cpu_kv_cache_gib)
        if shares_node(args):
            # vLLM's automatic binding pins every engine on a node to the same first
            # cores; replicas that share a node get cores of their own instead
            # (vllm_server.confine_to_cores).
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return env


def shares_node(args: ServingArgs) -> bool:
    """CPU replicas that may run side by side on one node (more than one replica)."""
    return args.engine.gpus == 0 and args.autoscaling.max_replicas > 1


def deployment_config(args: ServingArgs) -> dict[str, Any]:
    """Ray Serve options of the engine deployment: prefix-aware routing, and replicas
    autoscaled on ongoing requests per replica (engine load)."""
    scale = args.autoscaling
    # One replica: nothing to choose between, and the prefix-aware router would still
    # consult its prefix tree (an actor, called twice per request).
    router = args.engine.vllm.request_router if scale.max_replicas > 1 else "power-of-two"
    routing: dict[str, Any] = {"request_router_class": ROUTERS[router]}
    if router == "prefix-aware":
        routing["request_router_kwargs"] = {
            # Ray Serve LLM's default (infinite) sends every request sharing a prefix to the
            # replica that holds it however busy it is: one shared system prompt would keep
            # the other replicas idle. A replica a whole autoscaling target of requests
            # busier than the least busy one counts as uneven load: power-of-two decides.
            "imbalanced_threshold": scale.target_ongoing_requests,
            "do_eviction": True,
            "eviction_threshold_chars": PREFIX_TREE_CHARS,
            "eviction_target_chars": PREFIX_TREE_CHARS * 9 // 10,
            "eviction_interval_secs": 10,
        }
    config: dict[str, Any] = {
        "request_router_config": routing,
        # vLLM batches what a replica admits: the spec's per-replica concurrency.
        "max_ongoing_requests": scale.max_ongoing_requests,
        "max_queued_requests": scale.max_queued_requests,
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": 30,
        # The replica's own process only relays: the engine's shards hold the CPUs/GPUs
        # (one placement bundle each), so the replica asks for none beside them.
        "ray_actor_options": {"num_cpus": 0},
    }
    return config | scale.serve_options()


def llm_config(args: ServingArgs, model_dir: str) -> Any:
    """The Ray Serve LLM config of a ModelDeployment with engine vllm."""
    from ray.serve.llm import LLMConfig

    # GPU: one GPU bundle per shard (tensor x pipeline parallel); CPU: vLLM's CPU backend.
    accelerator = {"kind": "gpu"} if args.engine.gpus > 0 else {"kind": "cpu"}
    return LLMConfig(
        model_loading_config={"model_id": args.model.served_name, "model_source": model_dir},
        engine_kwargs=engine_kwargs(args, model_dir),
        deployment_config=deployment_config(args),
        accelerator_config=accelerator,
        runtime_env={"env_vars": engine_env(args)},
        # LoRA adapters: loaded on first use per replica (Ray Serve multiplexing), least
        # recently used evicted beyond this many; requests route to replicas holding them.
        lora_config=(
            {"max_num_adapters_per_replica": len(args.adapters)} if args.adapters else None
        ),
        log_engine_metrics=True,
        # The directory is local and verified by the replica before vLLM opens it: Ray
        # Serve LLM's node initialization (a task per node to "download" it, a worker
        # process each) has nothing to do.
        callback_config={
            "callback_class": "freehold_serving.engines.vllm_server:LocalModel",
        },
    )


async def ready_batches(
    items: AsyncIterator[T], reader_loop: asyncio.AbstractEventLoop | None = None
) -> AsyncGenerator[list[T], None]:
    """What is ready, as soon as it is: the first output at once, and whatever piled up
    while the consumer was busy in one batch. (Ray Serve LLM's own batcher waits a fixed
    50 ms before yielding anything, first token included.)

    With `reader_loop`, `items` is read on that loop (another thread's, see EngineThread)
    and handed over to this one, so each side's loop only ever runs its own work."""
    here = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    put: Callable[[tuple[bool, Any]], None] = queue.put_nowait
    if reader_loop is not None and reader_loop is not here:

        def put(entry: tuple[bool, Any]) -> None:
            here.call_soon_threadsafe(queue.put_nowait, entry)

    async def read() -> None:
        try:
            async for item in items:
                put((False, item))
        except BaseException as exc:  # handed to the consumer, raised there
            put((True, exc))
        else:
            put((True, None))
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:  # on the reader's loop, where it ran
                await close()

    reader: asyncio.Future[None] | concurrent.futures.Future[None]
    if reader_loop is None or reader_loop is here:
        reader = here.create_task(read())
    else:
        reader = asyncio.run_coroutine_threadsafe(read(), reader_loop)
    try:
        while True:
            batch: list[T] = []
            done, value = await queue.get()
            while True:
                if done:
                    if batch:
                        yield batch
                    if value is not None:
                        raise value
                    return
                batch.append(value)
                if queue.empty():
                    break
                done, value = queue.get_nowait()
            yield batch
    finally:
        if not reader.done():
            reader.cancel()  # thread-safe for the other loop's future


def verified_model(args: ServingArgs) -> str:
    """The model directory, once verified (digest, and signature when the spec names
    one); raises on a directory that is not the pinned one."""
    from freehold_serving.model_files import verify_file

    path, verified = verify_file(args.model)
    log.info(
        "model %s verified (sha256 %s%s); starting vLLM",
        path,
        args.model.sha256,
        f", signed by {verified.signer}" if verified else "",
    )
    warning = slow_bfloat16(args, _model_dtype(path), _cpu_flags())
    if warning:
        log.warning(warning)
    return str(path)


def slow_bfloat16(args: ServingArgs, model_dtype: str | None, cpu_flags: set[str]) -> str | None:
    """A warning when vLLM would compute in bfloat16 on an x86 CPU without AVX-512: vLLM
    accepts it there, but measured on such a CPU (2 cores, SmolLM2-135M, 16 streams)
    float32 served 4x the tokens per second (bench/vllm.py --dtype)."""
    dtype: str = args.engine.vllm.dtype
    if dtype == "auto":
        dtype = model_dtype or "auto"
    if args.engine.gpus or dtype != "bfloat16" or not cpu_flags or "avx512f" in cpu_flags:
        return None
    return (
        "this CPU has no AVX-512, and vLLM computes in bfloat16 here (engine.vllm.dtype "
        f"{args.engine.vllm.dtype}): on such CPUs float32 measured several times faster "
        "under load; set engine.vllm.dtype: float32"
    )


def _model_dtype(path: Path) -> str | None:
    # What vLLM's dtype "auto" takes: the dtype in the model's config.json.
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = config.get("dtype") or config.get("torch_dtype")
    return found if isinstance(found, str) else None


def _cpu_flags() -> set[str]:
    """The x86 CPU's feature flags (empty where /proc/cpuinfo has none: not x86 Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


class EngineThread:
    """An event loop on a thread of its own, for the engine's work in the front's process.

    Ray Serve LLM's engine start builds vLLM's configuration and engine client
    synchronously (tokenizer, model config, the engine-core handshake): run on the front's
    loop, the front answered nothing, health probes included, until vLLM had loaded.
    Here the front's loop stays free: it answers /health (503 while loading) and /metrics,
    and admits or refuses requests, while vLLM starts and runs on this loop."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        # A daemon thread: the replica's process exits with its engine.
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def call(self, work: Coroutine[Any, Any, T]) -> T:
        """`work` run on the engine loop; cancelling the caller cancels it there."""
        return await self.start(work)

    def start(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """`work` started on the engine loop, as a future of the caller's loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))


def build_engine(args: ServingArgs, model_dir: str) -> Any:
    """The engine deployment (an Application to bind into the front)."""
    from ray.serve.llm import build_llm_deployment

    from freehold_serving.engines.vllm_server import FreeholdLLMServer

    return build_llm_deployment(
        llm_config(args, model_dir),
        name_prefix="",
        bind_kwargs={"args": args},
        override_serve_options={"name": DEPLOYMENT_NAME},
        deployment_cls=FreeholdLLMServer,
    )


def _request(job: GenerationJob, model: str) -> dict[str, Any]:
    p = job.params
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": p.temperature,
        "top_p": p.top_p,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
    }
    if p.max_tokens is not None:
        body["max_tokens"] = p.max_tokens
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.json_schema is not None:
        # Compact JSON, as the llamacpp engine writes it: with any whitespace allowed, a
        # small model may pad with blanks until max_tokens and never close the object.
        body["structured_outputs"] = {
            "json": json.loads(p.json_schema),
            "disable_any_whitespace": True,
        }
    if job.messages is not None:
        body["messages"] = [{"role": role, "content": text} for role, text in job.messages]
        if p.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = p.logprobs
    else:
        if p.echo and p.logprobs is not None:
            raise EngineError(
                "echo with logprobs (the prompt's own logprobs) is not supported by the vllm "
                "engine; drop one of them",
                param="echo",
            )
        body["prompt"] = job.prompt or ""
        if p.logprobs is not None:
            body["logprobs"] = p.logprobs
    return body


def _finish(reason: str | None) -> FinishReason | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _alternative(top: dict[str, Any]) -> tuple[str, list[int], float]:
    token = str(top["token"])
    return token, list(top.get("bytes") or token.encode()), float(top["logprob"])


def _chat_logprobs(data: dict[str, Any] | None) -> list[TokenLogprob]:
    out = []
    for entry in (data or {}).get("content") or []:
        token = str(entry.get("token", ""))
        out.append(
            TokenLogprob(
                token=token,
                token_bytes=list(entry.get("bytes") or token.encode()),
                logprob=entry.get("logprob"),
                top=[
                    (
                        str(t["token"]),
                        list(t.get("bytes") or str(t["token"]).encode()),
                        t["logprob"],
                    )
                    for t in entry.get("top_logprobs") or []
                ],
            )
        )
    return out


def _completion_logprobs(data: dict[str, Any] | None) -> list[TokenLogprob]:
    if not data:
        return []
    out = []
    tops = data.get("top_logprobs") or []
    for i, token in enumerate(data.get("tokens") or []):
        top = tops[i] if i < len(tops) and tops[i] else {}
        out.append(
            TokenLogprob(
                token=token,
                token_bytes=list(token.encode()),
                logprob=(data.get("token_logprobs") or [None])[i],
                top=[(t, list(t.encode()), lp) for t, lp in top.items()],
            )
        )
    return out


def _error(error: dict[str, Any]) -> Exception:
    """An engine error answer: a 4xx the caller can fix, else a server error."""
    message = str(error.get("message", "the engine refused the request"))
    status = error.get("code")
    if isinstance(status, int) and 400 <= status < 500:
        if "context length" in message or "maximum context" in message:
            return ContextLengthError(message, param="messages")
        return EngineError(message, param=error.get("param"))
    return RuntimeError(f"vLLM engine error: {message}")


class _Events:
    """vLLM's streamed OpenAI events -> Freehold chunks. The finish reason is held back
    until the usage event that follows it, so the last chunk carries the token counts."""

    def __init__(self, chat: bool) -> None:
        self._chat = chat
        self._finish: FinishReason | None = None
        self.done = False

    def feed(self, event: Any) -> list[Chunk]:
        if not isinstance(event, str):
            dump = getattr(event, "model_dump", None)
            data = dump() if callable(dump) else {}
            raise _error(data.get("error") or {"message": str(event)})
        out: list[Chunk] = []
        for line in event.splitlines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                continue
            data = json.loads(payload)
            if "error" in data:
                raise _error(data["error"])
            for choice in data.get("choices") or []:
                if self._chat:
                    text = (choice.get("delta") or {}).get("content") or ""
                    logprobs = _chat_logprobs(choice.get("logprobs"))
                else:
                    text = choice.get("text") or ""
                    logprobs = _completion_logprobs(choice.get("logprobs"))
                if text or logprobs:
                    out.append(Chunk(text=text, logprobs=logprobs))
                if choice.get("finish_reason") is not None:
                    self._finish = _finish(choice["finish_reason"])
            usage = data.get("usage")
            if usage and self._finish is not None:
                out.append(
                    Chunk(
                        finish_reason=self._finish,
                        prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0),
                    )
                )
                self.done = True
        return out

    def close(self) -> list[Chunk]:
        """The end of the stream: a finish without a usage event still ends the answer."""
        if self.done or self._finish is None:
            return []
        self.done = True
        return [Chunk(finish_reason=self._finish)]


class _VllmStreams:
    """The front's `Generator` over vLLM's OpenAI layer in Ray Serve LLM's `LLMServer`: each
    admitted request as vLLM's own request type, its SSE events turned into chunks."""

    def __init__(self, args: ServingArgs) -> None:
        self._model = args.model.served_name
        self._context = args.engine.context_length
        self._types: tuple[Any, Any] | None = None

    def _import_types(self) -> None:
        # vLLM's request types: imported while the engine starts, not at the first
        # request (importing vLLM takes seconds).
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        self._types = (ChatCompletionRequest, CompletionRequest)

    async def ready(self) -> int:
        raise NotImplementedError

    async def _open(self, request: Any, chat: bool, adapter: str | None) -> AsyncIterator[Any]:
        raise NotImplementedError

    async def _cancel(self, stream: AsyncIterator[Any]) -> None:
        raise NotImplementedError

    async def generate(self, job: GenerationJob) -> AsyncGenerator[list[Chunk], None]:
        body = _request(job, job.adapter or self._model)
        chat = job.messages is not None
        if self._types is None:
            await self.ready()  # the types come with the engine
        if self._types is None:
            raise EngineError("the vllm engine has not started")
        try:
            request = self._types[0 if chat else 1].model_validate(body)
        except ValueError as exc:
            raise EngineError(f"the vllm engine cannot run this request: {exc}") from None
        stream = await self._open(request, chat, job.adapter)
        events = _Events(chat)
        try:
            async for batch in stream:
                items = batch if isinstance(batch, list) else [batch]
                chunks = [chunk for item in items for chunk in events.feed(item)]
                if chunks:
                    yield chunks
            tail = events.close()
            if tail:
                yield tail
            elif not events.done:
                raise RuntimeError("the vLLM engine ended the stream without finishing")
        finally:
            # The client left (or an error): stop generating for it.
            if not events.done:
                await self._cancel(stream)


class VllmGenerator(_VllmStreams):
    """Over the engine deployment (more than one replica): requests stream through Ray
    Serve's handle, routed by the prefix-aware router."""

    def __init__(self, args: ServingArgs, handle: Any) -> None:
        super().__init__(args)
        self._import_types()  # this front starts nothing: the engine deployment does
        self._plain = handle
        self._handle = handle.options(stream=True)

    async def ready(self) -> int:
        """Once an engine replica's vLLM engine answers its health check (the call waits
        while no replica runs yet)."""
        await self._plain.check_health.remote()
        return self._context

    async def _open(self, request: Any, chat: bool, adapter: str | None) -> AsyncIterator[Any]:
        handle = self._handle
        if adapter is not None:  # to a replica that holds the adapter, if one does
            handle = handle.options(multiplexed_model_id=adapter)
        method = handle.chat if chat else handle.completions
        stream: AsyncIterator[Any] = method.remote(request)
        return stream

    async def _cancel(self, stream: AsyncIterator[Any]) -> None:
        stream.cancel()  # type: ignore[attr-defined]


def in_process(args: ServingArgs) -> bool:
    """One fixed replica: vLLM runs in the front's own process. With nothing to route
    between, the front's call through a Ray Serve handle (a task, and a message per
    streamed batch, between two processes on the same cores) buys nothing."""
    scale = args.autoscaling
    return scale.min_replicas == scale.max_replicas == 1


def replica_options(args: ServingArgs, model_dir: str, front: dict[str, Any]) -> dict[str, Any]:
    """Ray Serve options of the one replica holding the front and vLLM: Ray Serve LLM's
    own for the engine (its shards' placement, GPUs, the engine's environment), with the
    front's admission limits (its own admission answers overload first)."""
    from freehold_serving.engines.vllm_server import FreeholdLLMServer

    options: dict[str, Any] = FreeholdLLMServer.get_deployment_options(llm_config(args, model_dir))
    options.pop("request_router_config", None)  # one replica: nothing to choose
    options.pop("autoscaling_config", None)
    for key in (
        "max_ongoing_requests",
        "max_queued_requests",
        "backpressure_config",
        "health_check_period_s",
        "graceful_shutdown_timeout_s",
        "num_replicas",
    ):
        options[key] = front[key]
    return options


class LocalVllmGenerator(_VllmStreams):
    """vLLM in this process (one replica): Ray Serve LLM's `LLMServer` (the same class the
    engine deployment runs, with its OpenAI layer, LoRA loading and engine metrics) called
    directly, its outputs streamed to the HTTP response without another process between.
    vLLM is imported, built and run on an EngineThread, so the front answers while it
    loads. The model directory is verified here, before anything else: fail closed."""

    def __init__(self, args: ServingArgs) -> None:
        self._dir = verified_model(args)  # a refusal fails the replica with the reason
        super().__init__(args)
        self._args = args
        self._engine = EngineThread("vllm-engine")
        self._server: Any = None
        self._started: asyncio.Future[None] | None = None

    async def _start(self) -> None:
        # On the engine loop: importing vLLM and building its engine take the better part
        # of a minute, none of it on the front's loop.
        from freehold_serving.engines.vllm_server import local_server

        self._import_types()
        self._server = local_server(self._args, self._dir)
        await self._server.start()

    async def ready(self) -> int:
        """Once vLLM has started (started at the first call; a failed start fails every
        call and the health check, and Ray Serve replaces the replica)."""
        if self._started is None:
            self._started = self._engine.start(self._start())
        await asyncio.shield(self._started)
        return self._context

    async def check_health(self) -> None:
        if self._started is None or not self._started.done():
            return  # still starting: Ray Serve's start-up timeout covers it
        self._started.result()
        await self._engine.call(self._server.check_health())

    async def _outputs(self, request: Any, chat: bool, adapter: str | None) -> AsyncIterator[Any]:
        # Runs on the engine loop (ready_batches reads it there): every vLLM call stays on
        # the loop its engine client was built on.
        if adapter is not None:
            await self._server.load_adapter(adapter)
        method = self._server.chat if chat else self._server.completions
        stream: AsyncIterator[Any] = await method(request)  # unbatched (LocalLLMServer)
        try:
            async for item in stream:
                yield item
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _open(self, request: Any, chat: bool, adapter: str | None) -> AsyncIterator[Any]:
        # A request that arrives while vLLM loads waits for it, as one sent to the engine
        # deployment waits for a replica (the kubelet and `freehold up` wait for /health).
        await self.ready()
        return ready_batches(self._outputs(request, chat, adapter), self._engine.loop)

    async def _cancel(self, stream: AsyncIterator[Any]) -> None:
        # Stops the reader on the engine loop, which closes vLLM's stream there (aborting
        # the request in the engine).
        await stream.aclose()  # type: ignore[attr-defined]
