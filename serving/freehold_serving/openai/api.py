"""The OpenAI-compatible HTTP API: parsing, auth, errors, streaming.

Transport-neutral: the model and the embedder are reached through two small async
callables, so the same code runs behind Ray Serve (deployment handles) and in tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from freehold_serving.args import ServingArgs
from freehold_serving.auth import ApiKeys
from freehold_serving.embeddings import MODEL_ID as EMBEDDING_MODEL
from freehold_serving.engines.base import Chunk, GenerationJob
from freehold_serving.key_records import key_id
from freehold_serving.openai import responses as r
from freehold_serving.openai.errors import ApiError, from_validation_error, invalid
from freehold_serving.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    MemoryRef,
    reject_unsupported,
)
from freehold_serving.telemetry import RequestRecord, Telemetry

log = logging.getLogger(__name__)


# The model stream: the first batch already received (so errors surface before any byte
# of the response is sent), then the rest; closing the rest stops the generation.
class Rest(Protocol):
    """The rest of a generation: iterate it; `aclose()` always frees what it holds."""

    def __aiter__(self) -> AsyncIterator[list[Chunk]]: ...
    async def aclose(self) -> None: ...


Stream = tuple[list[Chunk], Rest]
OpenStream = Callable[[GenerationJob], Awaitable[Stream]]
Embed = Callable[[list[str]], Awaitable[tuple[list[list[float]], int]]]
B = TypeVar("B", bound=BaseModel)


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def add_error_handlers(app: Any, serving: str) -> None:
    """OpenAI-style error objects for our ApiErrors, the framework's HTTP errors (404, 405)
    and anything unexpected. (Each app answers request validation errors its own way.)"""
    from starlette.exceptions import HTTPException

    async def api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request"
        return error_response(ApiError(exc.status_code, str(exc.detail), code=kind))

    async def unexpected(_request: Request, exc: Exception) -> Response:
        # Never the exception text: it may carry request content.
        log.exception("unexpected error serving %s", serving)
        return error_response(
            ApiError(
                500,
                "The server had an error while processing your request.",
                type="server_error",
                code="internal_error",
            )
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"


class OpenAIApi:
    def __init__(
        self,
        args: ServingArgs,
        open_stream: OpenStream,
        embed: Embed | None,
        telemetry: Telemetry,
        keys: ApiKeys | None,
    ) -> None:
        self._args = args
        self._model = args.model.served_name
        self._adapters = [a.served_name for a in args.adapters]
        self._open = open_stream
        self._embed = embed
        self._telemetry = telemetry
        self._keys = keys
        self._created = int(time.time())

    # -- request plumbing -----------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self._keys is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if presented.strip():
            # Who called, for the access record: a digest prefix, never the key.
            request.state.freehold_key = key_id(presented.strip())
        if not header:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        info = self._keys.lookup(presented.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        if info.budget is not None:
            # Only a ModelRouter keeps budgets: served here the key would spend without one.
            raise ApiError(
                403,
                f"The key {info.id} has a budget, which only a ModelRouter enforces; send "
                "its requests through the router.",
                type="permission_error",
                code="budget_requires_router",
            )
        request.state.freehold_tenant = info.tenant
        request.state.freehold_key_info = info

    async def _body(self, request: Request, model: type[B]) -> B:
        self._authorize(request)
        limit = self._args.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, f"Request body is larger than {limit} bytes.", code="request_too_large"
            )
        # Counted while reading: a chunked body has no Content-Length to check up front.
        received = bytearray()
        async for part in request.stream():
            received += part
            if len(received) > limit:
                raise ApiError(
                    413, f"Request body is larger than {limit} bytes.", code="request_too_large"
                )
        raw = bytes(received)
        try:
            data = json.loads(raw)
            # A lone surrogate decodes from JSON but is no text a model can read.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeError, RecursionError):
            raise invalid(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload.)"
            ) from None
        if not isinstance(data, dict):
            raise invalid("The request body must be a JSON object.")
        reject_unsupported(data)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise from_validation_error(exc) from None

    def _check_model(self, request: Request, requested: str, available: str) -> None:
        info = getattr(request.state, "freehold_key_info", None)
        if (
            requested != available
            and not (available == self._model and requested in self._adapters)
        ) or (info is not None and not info.allows(requested)):
            # A model outside the key's allowlist answers as one that does not exist, as
            # OpenAI does: the key learns nothing of what it may not use.
            raise ApiError(
                404,
                f"The model `{requested}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )

    def _adapter(self, requested: str) -> str | None:
        """The LoRA adapter a request names (it passed _check_model), or None."""
        return requested if requested != self._model else None

    def _model_card(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self._created, "owned_by": "freehold"}

    # -- endpoints ----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        names = [self._model, *self._adapters]
        if self._embed is not None:
            names.append(EMBEDDING_MODEL)
        info = getattr(request.state, "freehold_key_info", None)
        cards = [self._model_card(m) for m in names if info is None or info.allows(m)]
        return JSONResponse({"object": "list", "data": cards})

    async def model(self, request: Request, model_id: str) -> Response:
        self._authorize(request)
        known = [self._model, *self._adapters] + (
            [EMBEDDING_MODEL] if self._embed is not None else []
        )
        info = getattr(request.state, "freehold_key_info", None)
        if model_id not in known or (info is not None and not info.allows(model_id)):
            self._check_model(request, model_id, self._model)
        return JSONResponse(self._model_card(model_id))

    async def completions(self, request: Request) -> Response:
        return await self._audited("text_completion", request, self._completions)

    async def chat_completions(self, request: Request) -> Response:
        return await self._audited("chat", request, self._chat_completions)

    async def embeddings(self, request: Request) -> Response:
        return await self._audited("embeddings", request, self._embeddings)

    async def _audited(
        self, operation: str, request: Request, handler: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """A request refused before it started (bad key, bad body, unknown model) is an
        access record too; once started, telemetry's record writes it."""
        start = time.perf_counter()
        try:
            return await handler(request)
        except ApiError as exc:
            access = self._telemetry.access
            if access is not None and not getattr(request.state, "freehold_started", False):
                access.record(
                    operation=operation,
                    model=self._model,
                    key=getattr(request.state, "freehold_key", None),
                    tenant=getattr(request.state, "freehold_tenant", None),
                    status=exc.status,
                    error=exc.code or "invalid_request_error",
                    latency_s=time.perf_counter() - start,
                )
            raise

    def _start(
        self, request: Request, operation: str, model: str, attrs: dict[str, Any], prompt: Any
    ) -> RequestRecord:
        record = self._telemetry.start(operation, model, attrs, prompt)
        record.key = getattr(request.state, "freehold_key", None)
        record.tenant = getattr(request.state, "freehold_tenant", None)
        request.state.freehold_started = True
        return record

    async def _completions(self, request: Request) -> Response:
        req = await self._body(request, CompletionRequest)
        self._check_model(request, req.model, self._model)
        params = req.sampling()
        job = GenerationJob(params=params, prompt=req.prompt_text, adapter=self._adapter(req.model))
        record = self._start(
            request, "text_completion", req.model, _attrs(req, params.max_tokens), req.prompt_text
        )
        stream = await self._run(job, record)
        want_logprobs = req.logprobs is not None
        if req.stream:
            return self._streaming(
                self._completion_events(req, stream, record, want_logprobs), stream
            )
        result = await self._collect(stream, record)
        return JSONResponse(
            r.completion(
                r.new_id("cmpl"),
                req.model,
                req.prompt_text,
                bool(req.echo),
                result,
                want_logprobs,
            )
        )

    async def _chat_completions(self, request: Request) -> Response:
        req = await self._body(request, ChatCompletionRequest)
        self._check_model(request, req.model, self._model)
        params = req.sampling()
        messages = req.chat_messages()
        recalled: list[str] = []
        if req.memory is not None:
            messages, recalled = await self._recall(request, req.memory, messages)
        job = GenerationJob(
            params=params,
            messages=tuple((m["role"], m["content"]) for m in messages),
            adapter=self._adapter(req.model),
        )
        record = self._start(request, "chat", req.model, _attrs(req, params.max_tokens), messages)
        stream = await self._run(job, record)
        want_logprobs = bool(req.logprobs)
        headers = {"X-Freehold-Memory-Records": ",".join(recalled)} if req.memory else {}
        if req.stream:
            response = self._streaming(
                self._chat_events(req, stream, record, want_logprobs), stream
            )
            response.headers.update(headers)
            return response
        result = await self._collect(stream, record)
        body = r.chat_completion(r.new_id("chatcmpl"), req.model, result, want_logprobs)
        if req.memory is not None:
            body["memory"] = {
                "store": req.memory.store,
                "subject": req.memory.subject,
                "records": recalled,
            }
        return JSONResponse(body, headers=headers)

    async def _recall(
        self, request: Request, ref: MemoryRef, messages: list[dict[str, str]]
    ) -> tuple[list[dict[str, str]], list[str]]:
        """Search the store for the last user message and put what it found in the system
        message. The caller's own API key goes with the search: it sees only its tenant."""
        import httpx

        url = self._args.memory_stores.get(ref.store)
        if url is None:
            raise invalid(
                f"memory store {ref.store!r} is not available to this model "
                f"(available: {', '.join(sorted(self._args.memory_stores)) or 'none'}).",
                param="memory.store",
            )
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        headers = {}
        if "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.post(
                    f"{url}/search",
                    json={"subject": ref.subject, "query": query or "-", "top_k": ref.top_k},
                    headers=headers,
                )
        except httpx.HTTPError as exc:
            raise ApiError(
                502,
                f"memory store {ref.store!r} did not answer: {type(exc).__name__}",
                type="server_error",
                code="memory_unavailable",
            ) from None
        if answer.status_code != 200:
            try:
                error = answer.json()["error"]
                message = str(error["message"])
            except (ValueError, KeyError, TypeError):
                message = f"status {answer.status_code}"
            status = answer.status_code if answer.status_code in (401, 403, 404) else 502
            raise ApiError(status, f"memory store {ref.store!r}: {message}", param="memory")
        found = answer.json()["data"]
        if not found:
            return messages, []
        notes = "\n".join(f"- {item['text']}" for item in found)
        recall = f"What you remember about the user:\n{notes}"
        if messages and messages[0]["role"] == "system":
            merged = {"role": "system", "content": f"{messages[0]['content']}\n\n{recall}"}
            messages = [merged, *messages[1:]]
        else:
            messages = [{"role": "system", "content": recall}, *messages]
        return messages, [str(item["id"]) for item in found]

    async def _embeddings(self, request: Request) -> Response:
        req = await self._body(request, EmbeddingRequest)
        if self._embed is None:
            self._check_model(request, req.model, self._model)
            raise invalid(f"The model `{req.model}` does not support embeddings.", "model")
        self._check_model(request, req.model, EMBEDDING_MODEL)
        texts = req.texts()
        if req.dimensions is not None and req.dimensions != 384:
            raise invalid("This model does not support specifying dimensions.", "dimensions")
        record = self._start(request, "embeddings", EMBEDDING_MODEL, {}, texts)
        try:
            vectors, tokens = await self._embed(texts)
            record.input_tokens = tokens
        except BaseException as exc:
            record.error_type = type(exc).__name__
            record.status = exc.status if isinstance(exc, ApiError) else None
            raise
        finally:
            self._telemetry.finish(record)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
                    if req.encoding_format == "base64"
                    else v
                ),
            }
            for i, v in enumerate(vectors)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": EMBEDDING_MODEL,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # -- generation ---------------------------------------------------------------------

    async def _run(self, job: GenerationJob, record: RequestRecord) -> Stream:
        try:
            return await self._open(job)
        except BaseException as exc:
            record.error_type = type(exc).__name__
            record.status = exc.status if isinstance(exc, ApiError) else None
            self._telemetry.finish(record)
            raise

    async def _collect(self, stream: Stream, record: RequestRecord) -> r.Accumulated:
        """A whole (non-streamed) answer: the stream's events, drained."""
        result = r.Accumulated()
        async for _chunk, result in self._events(stream, record):  # noqa: B007
            pass
        return result

    @staticmethod
    def _account(batch: list[Chunk], result: r.Accumulated, record: RequestRecord) -> None:
        for chunk in batch:
            if chunk.text or (chunk.logprobs and not chunk.echo):
                record.token_arrived(chunk.text)
            result.add(chunk, is_echo=chunk.echo)

    def _streaming(self, events: AsyncIterator[bytes], stream: Stream) -> Response:
        # The background task runs after the response, also when the client left before
        # the body started (then the event generator never ran and closed nothing).
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(stream[1].aclose),
        )

    async def _events(
        self, stream: Stream, record: RequestRecord
    ) -> AsyncIterator[tuple[Chunk, r.Accumulated]]:
        """Every chunk with the running totals; closes telemetry and the model stream."""
        first, rest = stream
        result = r.Accumulated()
        try:
            for chunk in first:
                self._account([chunk], result, record)
                yield chunk, result
            async for batch in rest:
                for chunk in batch:
                    self._account([chunk], result, record)
                    yield chunk, result
        except BaseException as exc:
            record.error_type = type(exc).__name__
            if isinstance(exc, ApiError):
                record.status = exc.status
            elif isinstance(exc, GeneratorExit | asyncio.CancelledError):
                record.status = 499  # the client went away mid-answer
            raise
        finally:
            await rest.aclose()
            record.input_tokens = result.prompt_tokens
            record.cached_input_tokens = result.cached_tokens
            record.output_tokens = result.completion_tokens
            record.finish_reason = result.finish_reason
            self._telemetry.finish(record)

    async def _completion_events(
        self, req: CompletionRequest, stream: Stream, record: RequestRecord, want_lp: bool
    ) -> AsyncIterator[bytes]:
        chunks = r.Chunks(r.new_id("cmpl"), "text_completion", req.model)
        # text_offset counts from the start of the returned text, prompt included on echo.
        offset = len(req.prompt_text) if req.echo else 0
        if req.echo and not want_lp:
            yield _sse(chunks.text(req.prompt_text, None, None))
        try:
            async for chunk, totals in self._events(stream, record):
                lp_body = None
                if want_lp:
                    step = r.CompletionLogprobs()
                    step.add(chunk.logprobs, 0 if chunk.echo else offset)
                    lp_body = step.body()
                if not chunk.echo:
                    offset += len(chunk.text)
                text = req.prompt_text if chunk.echo else chunk.text
                usage = _final_usage(chunk, totals)
                if text or lp_body or usage:
                    yield _sse(chunks.text(text, lp_body, chunk.finish_reason, usage))
                if usage and req.include_usage:
                    yield _sse(chunks.usage_only(usage))
        except ApiError as err:
            yield _sse(err.body())
        yield _SSE_DONE

    async def _chat_events(
        self, req: ChatCompletionRequest, stream: Stream, record: RequestRecord, want_lp: bool
    ) -> AsyncIterator[bytes]:
        chunks = r.Chunks(r.new_id("chatcmpl"), "chat.completion.chunk", req.model)
        yield _sse(chunks.delta({"role": "assistant", "content": ""}, None, None))
        try:
            async for chunk, totals in self._events(stream, record):
                usage = _final_usage(chunk, totals)
                if chunk.text or chunk.logprobs or usage:
                    delta = {"content": chunk.text} if chunk.text else {}
                    lp = r.chat_logprobs(chunk.logprobs) if want_lp and chunk.logprobs else None
                    yield _sse(chunks.delta(delta, lp, chunk.finish_reason, usage))
                if usage and req.include_usage:
                    yield _sse(chunks.usage_only(usage))
        except ApiError as err:
            yield _sse(err.body())
        yield _SSE_DONE


def _final_usage(chunk: Chunk, totals: r.Accumulated) -> dict[str, Any] | None:
    """Usage rides on the chunk that ends the stream, and on no other."""
    if chunk.finish_reason is None:
        return None
    return r.usage(totals.prompt_tokens, totals.completion_tokens, totals.cached_tokens)


def _attrs(
    req: CompletionRequest | ChatCompletionRequest, max_tokens: int | None
) -> dict[str, Any]:
    return {
        "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.request.temperature": req.temperature,
        "gen_ai.request.top_p": req.top_p,
        "gen_ai.request.seed": req.seed,
    }
