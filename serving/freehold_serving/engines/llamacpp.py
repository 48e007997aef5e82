"""llama.cpp engine (llama-cpp-python): GGUF models on CPU, with GPU offload.

We drive `Llama.generate` ourselves instead of `create_completion` so that token
counts are exact, time per token is measurable, and logprobs come from the logits
of the last decoded position. llama-cpp-python otherwise needs `logits_all=True`
for logprobs, which keeps n_ctx x n_vocab floats (gigabytes for Gemma's 262k vocabulary).
"""

from __future__ import annotations

import codecs
import logging
import random
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from freehold_serving.args import EngineConfig
from freehold_serving.engines.base import (
    ChatPrompt,
    Chunk,
    ContextLengthError,
    EngineError,
    SamplingParams,
    TokenLogprob,
)
from freehold_serving.engines.chat_templates import BY_ARCHITECTURE
from freehold_serving.engines.prompt_states import (
    PromptStates,
    as_tokens,
    common_prefix,
    load_seq_state,
    seq_state,
)
from freehold_serving.engines.stops import StopMatcher

log = logging.getLogger(__name__)


# A state is kept when at least this many of its tokens would otherwise be lost, and
# restored when it spares at least this many over the context as it is. Copying a state
# costs ~0.2 ms per MB (SmolLM2: 23 KB a token) against milliseconds a token to evaluate
# on CPU; below a few tokens neither is worth the bookkeeping.
MIN_STATE_TOKENS = 8

_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"  # private-use characters: never in a template
_MARK = re.compile(f"({_MARK_OPEN}\\d+{_MARK_CLOSE})")


def split_chat(text: str, skeleton: str, contents: list[str]) -> tuple[tuple[str, bool], ...]:
    """The rendered chat as (piece, from_template) by aligning it with the skeleton
    rendered over placeholders. Templates may trim a message's content, so each content
    is matched as given or stripped. Empty when they cannot be aligned (the caller then
    tokenizes the whole text and says so)."""
    pieces: list[tuple[str, bool]] = []
    parts = _MARK.split(skeleton)
    pos = 0
    for n, part in enumerate(parts):
        if n % 2 == 0:  # the template's own text
            if not text.startswith(part, pos):
                return ()
            pieces.append((part, True))
            pos += len(part)
            continue
        content = contents[int(part[1:-1])]
        following = parts[n + 1] if n + 1 < len(parts) else ""
        for candidate in (content, content.strip(), content.rstrip(), content.lstrip()):
            end = pos + len(candidate)
            if text.startswith(candidate, pos) and text.startswith(following, end):
                pieces.append((candidate, False))
                pos = end
                break
        else:
            return ()
    return tuple(pieces) if pos == len(text) else ()


def sampling(params: SamplingParams) -> dict[str, float]:
    """llama-cpp-python's sampler arguments for a request: only what the API exposes, the
    rest neutral (no top-k, min-p, typical or repeat penalty)."""
    return {
        "top_k": 0,
        "top_p": params.top_p,
        "min_p": 0.0,
        "typical_p": 1.0,
        "temp": params.temperature,
        "repeat_penalty": 1.0,
        "frequency_penalty": params.frequency_penalty,
        "presence_penalty": params.presence_penalty,
    }


def first_logprob(llm: Any, token: int) -> TokenLogprob:
    """The prompt's first token in echo scoring: nothing before it, so no logprob."""
    first: bytes = llm.detokenize([token], special=True)
    in_text = bool(llm.detokenize([token], special=False))
    return TokenLogprob(first.decode("utf-8", errors="replace"), list(first), None, in_text=in_text)


class LlamaCppEngine:
    """One llama.cpp context: one sequence at a time. Callers serialise access."""

    def __init__(
        self, path: Path, config: EngineConfig, *, helper_context: int | None = None
    ) -> None:
        """`helper_context`: a smaller context for an engine that decodes in a context of
        its own (llamacpp_batch) and keeps this one for its tokenizer and templates."""
        from llama_cpp import Llama

        cfg = config.llamacpp
        # llama-cpp-python's API is only partly annotated; we type our side of it.
        self._llm: Any = Llama(
            model_path=str(path),
            n_ctx=helper_context or config.context_length,
            n_threads=cfg.threads,
            n_threads_batch=cfg.threads,
            n_batch=cfg.batch_size,
            n_gpu_layers=cfg.gpu_layers if config.gpus > 0 else 0,
            flash_attn=cfg.flash_attention,
            verbose=False,
        )
        self.context_length: int = self._llm.n_ctx()
        self._n_vocab: int = self._llm.n_vocab()
        self._batch_size = cfg.batch_size
        self._template, self._chat_stops = self._chat_template()
        self._grammars: dict[str, Any] = {}
        self._states = PromptStates(cfg.prompt_cache_mib * 1024 * 1024)

    # -- prompts -----------------------------------------------------------------------

    def _chat_template(self) -> tuple[Any, tuple[str, ...]]:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        meta = self._llm.metadata
        source = meta.get("tokenizer.chat_template")
        stops: tuple[str, ...] = ()
        if source is None:
            arch = meta.get("general.architecture", "")
            if arch not in BY_ARCHITECTURE:
                raise EngineError(
                    f"the model has no chat template and architecture {arch!r} has no known "
                    "one; /v1/chat/completions is unavailable",
                    code="chat_template_missing",
                )
            source, stops = BY_ARCHITECTURE[arch]
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(source), stops

    def _token_text(self, token: int) -> str:
        raw: bytes = self._llm.detokenize([token], special=True)
        return raw.decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        tokens: list[int] = self._llm.tokenize(
            text.encode("utf-8"), add_bos=add_special, special=not add_special
        )
        return tokens

    def render_chat(self, messages: Sequence[dict[str, str]]) -> ChatPrompt:
        def raise_exception(message: str) -> None:
            raise EngineError(message, param="messages")

        bos = self._token_text(self._llm.token_bos())
        eos = self._token_text(self._llm.token_eos())

        def render(msgs: list[dict[str, str]]) -> str:
            text: str = self._template.render(
                messages=msgs,
                bos_token=bos,
                eos_token=eos,
                add_generation_prompt=True,
                raise_exception=raise_exception,
            )
            return text

        text = render(list(messages))
        # The same template over placeholders shows which characters are the template's.
        marks = [f"{_MARK_OPEN}{i}{_MARK_CLOSE}" for i in range(len(messages))]
        skeleton = render([{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)])
        pieces = split_chat(text, skeleton, [m.get("content", "") for m in messages])
        return ChatPrompt(text=text, stop=self._chat_stops, pieces=pieces)

    def tokenize_chat(self, prompt: ChatPrompt) -> list[int]:
        if not prompt.pieces:
            log.warning("chat template pieces unknown: tokenizing the whole prompt")
            return self.tokenize(prompt.text, add_special=False)
        tokens: list[int] = []
        for text, from_template in prompt.pieces:
            if text:
                tokens += self._llm.tokenize(
                    text.encode("utf-8"), add_bos=False, special=from_template
                )
        return tokens

    def check_length(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """The number of tokens that may be generated; raises when it does not fit."""
        room = self.context_length - prompt_tokens
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            wanted = prompt_tokens + (max_tokens or 0)
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_length} tokens. "
                f"However, you requested {wanted} tokens ({prompt_tokens} in the prompt, "
                f"{max_tokens or 0} for the completion). Please reduce the prompt or "
                "max_tokens.",
                param="messages" if max_tokens is None else "max_tokens",
            )
        return room if max_tokens is None else max_tokens

    # -- logprobs ----------------------------------------------------------------------

    def _logprob(self, logits: npt.NDArray[np.float32], token: int, top: int) -> TokenLogprob:
        peak = float(logits.max())
        log_norm = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
        alternatives: list[tuple[str, list[int], float]] = []
        if top > 0:
            best = np.argpartition(-logits, top)[:top]
            for idx in best[np.argsort(-logits[best])]:
                raw = self._llm.detokenize([int(idx)], special=True)
                alternatives.append(
                    (
                        raw.decode("utf-8", errors="replace"),
                        list(raw),
                        float(logits[idx]) - log_norm,
                    )
                )
        raw = self._llm.detokenize([token], special=True)
        return TokenLogprob(
            token=raw.decode("utf-8", errors="replace"),
            token_bytes=list(raw),
            logprob=float(logits[token]) - log_norm,
            top=alternatives,
        )

    def _last_logits(self) -> npt.NDArray[np.float32]:
        pointer = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def score(self, tokens: list[int], top: int) -> list[TokenLogprob]:
        """Logprob of every prompt token given the ones before it (for echo=true).

        Decodes the prompt in batches with logits for every position; the KV cache is
        left holding the prompt, so a generation that follows reuses it.
        """
        llm = self._llm
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        result = [first_logprob(self._llm, tokens[0])]
        for start in range(0, len(tokens), self._batch_size):
            batch = tokens[start : start + self._batch_size]
            llm._batch.set_batch(batch=batch, n_past=start, logits_all=True)
            llm._ctx.decode(llm._batch)
            rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch), self._n_vocab))
            llm.input_ids[start : start + len(batch)] = batch
            llm.n_tokens += len(batch)
            for i, row in enumerate(rows):
                nxt = start + i + 1
                if nxt < len(tokens):
                    result.append(self._logprob(row, tokens[nxt], top))
        return result

    # -- prompt states -----------------------------------------------------------------

    def _save_state(self, tokens: npt.NDArray[np.int32]) -> None:
        data = seq_state(self._llm._ctx.ctx, 0)
        if data is not None:
            self._states.add(tokens, data)

    def _restore_state(self, tokens: npt.NDArray[np.int32], data: bytes) -> bool:
        llm = self._llm
        llm._ctx.kv_cache_seq_rm(0, 0, -1)
        if not load_seq_state(llm._ctx.ctx, 0, data):
            log.warning("a saved prompt state did not load; evaluating the prompt afresh")
            llm.reset()
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        return True

    def reuse_prefix(self, prompt: list[int], *, restore: bool = True) -> int:
        """Bring the context to the saved state sharing the most with `prompt` (keeping
        the context's own state first, if it is about to be overwritten). Returns how many
        prompt tokens need no evaluation. llama-cpp-python's `generate` then evaluates only
        the rest: it always evaluates the last prompt token again, for its logits.
        `restore=False` only keeps the context's state (the caller evaluates afresh)."""
        llm = self._llm
        wanted = as_tokens(prompt[:-1])
        current = as_tokens(llm.input_ids[: llm.n_tokens])
        here = common_prefix(current, wanted)
        if self._states.capacity_bytes == 0:
            return here if restore else 0
        saved, shared = self._states.best(wanted)
        lost = len(current) - here
        if lost >= MIN_STATE_TOKENS and not self._states.holds(current):
            self._save_state(current)
        if not restore:
            return 0
        if saved is not None and shared >= here + MIN_STATE_TOKENS:
            if self._restore_state(saved.tokens, saved.data):
                return shared
            return 0
        return here

    # -- generation --------------------------------------------------------------------

    def _grammar(self, schema: str) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = self._grammars.get(schema)
        if grammar is None:
            try:
                grammar = LlamaGrammar.from_json_schema(schema, verbose=False)
            except Exception as exc:  # the converter raises plain exceptions on bad schemas
                raise EngineError(
                    f"response_format.json_schema cannot be turned into a grammar: {exc}",
                    param="response_format.json_schema",
                ) from None
            if len(self._grammars) > 32:
                self._grammars.clear()
            self._grammars[schema] = grammar
        return grammar

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_token_is_eog(self._llm._model.vocab, token))

    def generate(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        if not prompt:
            raise EngineError("the prompt is empty", param="prompt")
        max_tokens = self.check_length(len(prompt), params.max_tokens)
        want_logprobs = params.logprobs is not None
        top = params.logprobs or 0
        if params.echo and want_logprobs:
            self.reuse_prefix(prompt, restore=False)
            yield Chunk(logprobs=self.score(prompt, top), prompt_tokens=len(prompt), echo=True)
        if max_tokens == 0:
            yield Chunk(finish_reason="length", prompt_tokens=len(prompt))
            return

        llm = self._llm
        cached = 0
        if params.seed is not None:
            # Reusing the KV cache evaluates the prompt's last position alone, whose
            # logits differ in the last bits from a batched evaluation; a seeded
            # request must give the same text every time, so evaluate it afresh.
            self.reuse_prefix(prompt, restore=False)
            llm.reset()
        elif not (params.echo and want_logprobs):  # scoring left the prompt in the context
            cached = self.reuse_prefix(prompt)
        llm.set_seed(params.seed if params.seed is not None else random.getrandbits(32))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(params.stop)
        generated = 0
        finish: str = "length"
        grammar = self._grammar(params.json_schema) if params.json_schema else None
        tokens = llm.generate(prompt, grammar=grammar, **sampling(params))
        try:
            for token in tokens:
                if cancel.is_set():
                    return
                if self._is_end(token):
                    finish = "stop"
                    break
                generated += 1
                lps = [self._logprob(self._last_logits(), token, top)] if want_logprobs else []
                piece = decoder.decode(llm.detokenize([token]))
                text, stopped = stops.feed(piece)
                if text or lps:
                    yield Chunk(text=text, logprobs=lps)
                if stopped:
                    finish = "stop"
                    break
                if generated >= max_tokens:
                    break
        finally:
            tokens.close()
        tail = "" if stops.stopped else stops.flush(decoder.decode(b"", final=True))
        yield Chunk(
            text=tail,
            finish_reason="stop" if finish == "stop" else "length",
            prompt_tokens=len(prompt),
            completion_tokens=generated,
            cached_tokens=cached,
        )
