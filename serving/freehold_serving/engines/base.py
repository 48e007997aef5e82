"""The small interface every inference engine implements."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


class EngineError(Exception):
    """A request the engine cannot serve, for a reason the caller can fix (a 400)."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses Ray process boundaries: keep it picklable with its fields.
        return (type(self), (self.message, self.code, self.param))


class ContextLengthError(EngineError):
    def __init__(
        self, message: str, code: str = "context_length_exceeded", param: str | None = None
    ):
        super().__init__(message, code, param)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    echo: bool = False
    json_schema: str | None = None  # constrain the output to this JSON schema


@dataclass
class TokenLogprob:
    token: str
    token_bytes: list[int]
    logprob: float | None
    top: list[tuple[str, list[int], float]] = field(default_factory=list)
    in_text: bool = True  # False for control tokens such as <bos>: not part of the text


@dataclass
class Chunk:
    """A piece of a completion: new text, its tokens' logprobs, and maybe the end."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens not evaluated again (held from an earlier request)
    echo: bool = False  # logprobs of the prompt itself (echo=true), before any output


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]
    # The text in pieces: (text, from the template). Only the template's own text may be
    # read as control tokens; a user who types "<start_of_turn>" gets those characters.
    pieces: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class GenerationJob:
    """A completion (`prompt`) or a chat (`messages`) to run."""

    params: SamplingParams
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    adapter: str | None = None  # a LoRA adapter's name (engine vllm); None: the model


class Generator(Protocol):
    """What the HTTP API needs from a model replica: one call per request, chunks out as
    they come. Async and per request, so an engine that batches many requests at once
    (vLLM's continuous batching) implements it directly; llama.cpp implements it in
    llm_server.LLMServer, over an `Engine` running one sequence at a time behind a lock, or
    over the batching engine (engines.llamacpp_batch, `parallel` > 1)."""

    def generate(self, job: GenerationJob) -> AsyncGenerator[list[Chunk], None]:
        """Raises EngineError (a 4xx) before the first chunk when the job cannot run."""
        ...

    async def ready(self) -> int:
        """The context length, once the model is loaded."""
        ...


class Engine(Protocol):
    """A token-level engine that runs one sequence at a time in a worker thread."""

    context_length: int

    def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    def render_chat(self, messages: Sequence[dict[str, str]]) -> ChatPrompt: ...

    def tokenize_chat(self, prompt: ChatPrompt) -> list[int]: ...

    def check_length(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """The completion budget; raises ContextLengthError if the prompt cannot fit."""
        ...

    def generate(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        """Yield chunks; the last one has a finish_reason. Runs in a worker thread."""
        ...
