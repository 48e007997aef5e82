"""Response bodies of the OpenAI-compatible API, built from engine chunks."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from freehold_serving.engines.base import Chunk, TokenLogprob


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:  # as OpenAI reports prompt caching: tokens not evaluated again
        body["prompt_tokens_details"] = {"cached_tokens": cached}
    return body


@dataclass
class CompletionLogprobs:
    """The legacy completions `logprobs` object, built up token by token."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(self, entries: Sequence[TokenLogprob], offset: int) -> int:
        for entry in entries:
            self.tokens.append(entry.token)
            self.token_logprobs.append(entry.logprob)
            self.top_logprobs.append(
                None if entry.logprob is None else {t: lp for t, _, lp in entry.top}
            )
            self.text_offset.append(offset)
            if entry.in_text:
                offset += len(entry.token)
        return offset

    def body(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.token_bytes,
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


@dataclass
class Accumulated:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    echo_logprobs: list[TokenLogprob] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, chunk: Chunk, *, is_echo: bool) -> None:
        self.text += chunk.text
        (self.echo_logprobs if is_echo else self.logprobs).extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            self.prompt_tokens = chunk.prompt_tokens
            self.completion_tokens = chunk.completion_tokens
            self.cached_tokens = chunk.cached_tokens


def completion(
    request_id: str, model: str, prompt: str, echo: bool, result: Accumulated, want_logprobs: bool
) -> dict[str, Any]:
    text = (prompt if echo else "") + result.text
    logprobs = None
    if want_logprobs:
        lp = CompletionLogprobs()
        offset = lp.add(result.echo_logprobs, 0)
        lp.add(result.logprobs, len(prompt) if echo else offset)
        logprobs = lp.body()
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": result.finish_reason}
        ],
        "usage": usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens),
    }


def chat_completion(
    request_id: str, model: str, result: Accumulated, want_logprobs: bool
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": chat_logprobs(result.logprobs) if want_logprobs else None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens),
    }


@dataclass(frozen=True)
class Chunks:
    """One streamed response: every chunk carries the same id, object, created and model."""

    request_id: str
    object: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def _envelope(
        self, choices: list[dict[str, Any]], usage_body: dict[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.request_id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage_body is not None:
            body["usage"] = usage_body
        return body

    def text(
        self,
        text: str,
        logprobs: dict[str, Any] | None,
        finish_reason: str | None,
        usage_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._envelope([choice], usage_body)

    def delta(
        self,
        delta: dict[str, Any],
        logprobs: dict[str, Any] | None,
        finish_reason: str | None,
        usage_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._envelope([choice], usage_body)

    def usage_only(self, usage_body: dict[str, Any]) -> dict[str, Any]:
        """The extra final chunk of `stream_options.include_usage`: no choices, only usage."""
        return self._envelope([], usage_body)
