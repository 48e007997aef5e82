"""Continuous batching for the llama.cpp engine: several sequences decoded in one pass.

`spec.engine.llamacpp.parallel: N` gives a replica N slots, each a llama.cpp sequence.
One scheduler thread owns the context; every step decodes one batch holding the next
token of every generating slot plus as much of the waiting prompts as fits in the batch
size. On CPU a step of four sequences costs ~2.8x a step of one (SmolLM2-135M, 2 cores:
28.7 ms against 10.3 ms), so four concurrent requests finish in about 70% of the time
they take one after another; on a GPU the step is bound by reading the weights and the
gain is near N-fold.

Reproducibility. Each slot has a KV stream of its own (`kv_unified` off), so a sequence's
cells are laid out the same whoever shares the batch; where the kernels compute each row
of a batch on its own, a sequence's logits are then bit for bit those it gets alone. Not
every quantization's CPU kernels do: K-quants repacked for AVX2 decode one row and four
rows with different kernels, and the last bits move. The engine checks this at load (a
probe decoded alone and beside others); where the bits move, a seeded request runs alone
(no other sequence in its batches), so it still gives the same text every time.

Each slot keeps its last sequence's KV cells, and a new request takes the free slot whose
cells share the longest prefix with its prompt; states of sequences about to be
overwritten go to the same saved-state cache as the one-sequence engine's.
"""

from __future__ import annotations

import codecs
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from freehold_serving.args import EngineConfig
from freehold_serving.engines.base import Chunk, EngineError, SamplingParams, TokenLogprob
from freehold_serving.engines.llamacpp import (
    MIN_STATE_TOKENS,
    LlamaCppEngine,
    first_logprob,
    sampling,
)
from freehold_serving.engines.prompt_states import (
    as_tokens,
    common_prefix,
    load_seq_state,
    seq_state,
)
from freehold_serving.engines.stops import StopMatcher

log = logging.getLogger(__name__)

# The smallest context llama.cpp allocates: the Llama object is kept for its tokenizer,
# chat template and grammar helpers; its own context is unused.
HELPER_CONTEXT = 256
PROBE = "The capital of France is Paris. The capital of Italy is"

Emit = Callable[[object], None]


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    cancel: threading.Event
    emit: Emit
    max_tokens: int
    solo: bool
    sampler: Any = None
    todo: list[int] = field(default_factory=list)  # prompt tokens not yet evaluated
    pos: int = 0  # the position of the next token to evaluate
    next_token: int | None = None  # sampled, to be evaluated in the next step
    cached: int = 0
    generated: int = 0
    scores: list[TokenLogprob] | None = None  # echo=true with logprobs: the prompt's
    decoder: Any = None
    stops: StopMatcher | None = None

    def send(self, item: object) -> None:
        """Hand a chunk, an exception or DONE to the caller. A caller that is gone (its
        event loop closed) must not stop the scheduler: the request is dropped instead."""
        try:
            self.emit(item)
        except Exception:
            log.debug("a request's caller is gone; dropping it", exc_info=True)
            self.cancel.set()


@dataclass(eq=False)
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what its KV cells hold, in order
    request: _Request | None = None
    used: float = 0.0


class BatchedLlamaCpp(LlamaCppEngine):
    """llama.cpp with N sequences decoded together by one scheduler thread. Requests come
    in with `submit`; chunks go out through each request's `emit`, then `DONE`."""

    DONE = object()

    def __init__(self, path: Path, config: EngineConfig) -> None:
        import llama_cpp

        super().__init__(path, config, helper_context=HELPER_CONTEXT)
        cfg = config.llamacpp
        self.parallel = cfg.parallel
        self.context_length = config.context_length
        params = llama_cpp.llama_context_default_params()
        # Each sequence gets the whole context length: with kv_unified off llama.cpp
        # divides n_ctx evenly among the sequences' streams.
        params.n_ctx = config.context_length * self.parallel
        # Every slot's next token fits in one pass, whatever batchSize says.
        self._batch_size = max(cfg.batch_size, self.parallel)
        params.n_batch = params.n_ubatch = self._batch_size
        params.n_seq_max = self.parallel
        params.n_threads = params.n_threads_batch = cfg.threads
        params.flash_attn = cfg.flash_attention
        params.kv_unified = False
        self._ctx: Any = llama_cpp.llama_init_from_model(self._llm._model.model, params)
        if not self._ctx:
            raise EngineError(
                f"llama.cpp could not allocate {self.parallel} sequences of "
                f"{config.context_length} tokens; lower spec.engine.llamacpp.parallel or "
                "spec.engine.contextLength",
                code="engine_unavailable",
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        # Room for a whole chunk beside the other sequences' next tokens.
        self._chunk = self._batch_size - (self.parallel - 1)
        self._slots = [_Slot(seq) for seq in range(self.parallel)]
        self._inbox: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        # Every decode, the check at load too, runs on the scheduler thread: llama.cpp's
        # CPU backend keeps an OpenMP thread team per calling thread, and a second team
        # (one decode on this thread) made each step of the other ~2x slower (measured).
        self.invariant = False
        checked = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(checked, failed), name="llamacpp-batch", daemon=True
        )
        self._thread.start()
        checked.wait()
        if failed:
            raise failed[0]
        log.info(
            "llama.cpp: %d sequences per step; logits %s by the batch's other sequences",
            self.parallel,
            "unchanged" if self.invariant else "changed (seeded requests run alone)",
        )

    def close(self) -> None:
        """Stop the scheduler: requests still queued or running end with an error, and
        the context is freed (the model stays with its Llama object)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _stopped(self) -> None:
        import llama_cpp

        gone = EngineError("the engine stopped", code="engine_unavailable")
        for request in [*self._inbox, *self._active()]:
            request.send(gone)
            request.send(self.DONE)
        self._inbox.clear()
        for slot in self._slots:
            slot.request = None
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)

    # -- the asyncio side ----------------------------------------------------------------

    def submit(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event, emit: Emit
    ) -> None:
        """Queue a request; its chunks, an exception or DONE come through `emit` (from the
        scheduler thread)."""
        if not prompt:
            raise EngineError("the prompt is empty", param="prompt")
        max_tokens = self.check_length(len(prompt), params.max_tokens)
        request = _Request(
            prompt=prompt,
            params=params,
            cancel=cancel,
            emit=emit,
            max_tokens=max_tokens,
            solo=params.seed is not None and not self.invariant,
        )
        if max_tokens == 0 and not (params.echo and params.logprobs is not None):
            emit(Chunk(finish_reason="length", prompt_tokens=len(prompt)))
            emit(self.DONE)
            return
        with self._wake:
            if self._closed:
                raise EngineError("the engine stopped", code="engine_unavailable")
            self._inbox.append(request)
            self._wake.notify()

    def generate(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        """The one-sequence interface, over the scheduler (tests and tools)."""
        import queue

        out: queue.Queue[object] = queue.Queue()
        self.submit(prompt, params, cancel, out.put)
        while (item := out.get()) is not self.DONE:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Chunk)
            yield item

    # -- the check at load ---------------------------------------------------------------

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants logits) entries as one batch."""
        import llama_cpp

        batch = self._batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        status = int(llama_cpp.llama_decode(self._ctx, batch))
        if status != 0:
            raise EngineError(f"llama.cpp could not decode a batch (status {status})",
                              code="engine_error")  # fmt: skip

    def _logits(self, index: int) -> npt.NDArray[np.float32]:
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _batch_invariant(self) -> bool:
        """Whether a sequence's logits are the same decoded alone and beside others (see
        the module doc): the probe's prompt and two greedy steps, alone, then in every
        slot of batches of 2..N sequences."""
        import llama_cpp

        probe = self.tokenize(PROBE, add_special=True)[: self._batch_size // self.parallel]

        def run(n: int) -> list[list[bytes]]:
            llama_cpp.llama_memory_clear(self._memory, True)
            last = len(probe) - 1
            entries = [(t, i, s, i == last) for s in range(n) for i, t in enumerate(probe)]
            self._decode(entries)
            rows = [self._logits((s + 1) * len(probe) - 1).copy() for s in range(n)]
            seen = [[r.tobytes()] for r in rows]
            for step in range(2):
                tokens = [int(r.argmax()) for r in rows]
                self._decode([(t, len(probe) + step, s, True) for s, t in enumerate(tokens)])
                rows = [self._logits(s).copy() for s in range(n)]
                for s in range(n):
                    seen[s].append(rows[s].tobytes())
            return seen

        try:
            alone = run(1)[0]
            return all(seq == alone for n in range(2, self.parallel + 1) for seq in run(n))
        finally:
            llama_cpp.llama_memory_clear(self._memory, True)

    # -- the scheduler thread ------------------------------------------------------------

    def _run(self, checked: threading.Event, failed: list[BaseException]) -> None:
        try:
            self.invariant = self._batch_invariant()
        except BaseException as exc:
            failed.append(exc)
            return
        finally:
            checked.set()
        while True:
            with self._wake:
                while not self._closed and not self._inbox and not self._active():
                    self._wake.wait()
                if self._closed:
                    self._stopped()
                    return
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed decode ends every sequence in it
                log.exception("llama.cpp batch failed")
                for slot in self._slots:
                    if slot.request is not None:
                        slot.request.send(exc)
                        self._finish(slot)

    def _active(self) -> list[_Request]:
        return [s.request for s in self._slots if s.request is not None]

    def _admit(self) -> None:
        """Requests in arrival order into free slots; a solo request waits for the batch
        to empty, and nothing joins it."""
        while self._inbox:
            request = self._inbox[0]
            if request.cancel.is_set():
                self._inbox.popleft()
                request.send(self.DONE)
                continue
            active = self._active()
            free = [s for s in self._slots if s.request is None]
            if not free or (active and (request.solo or any(r.solo for r in active))):
                return
            self._inbox.popleft()
            try:
                self._start(request, free)
            except Exception as exc:
                request.send(exc)
                request.send(self.DONE)

    def _start(self, request: _Request, free: list[_Slot]) -> None:
        import llama_cpp

        params = request.params
        scoring = params.echo and params.logprobs is not None
        fresh = scoring or params.seed is not None
        wanted = as_tokens(request.prompt[:-1])
        # The free slot holding the most of the prompt; for a fresh evaluation the one
        # least recently used, keeping the others' cells for their conversations.
        shared = {s: common_prefix(as_tokens(s.tokens), wanted) for s in free}
        if fresh:
            slot = min(free, key=lambda s: s.used)
        else:
            slot = max(free, key=lambda s: (shared[s], -s.used))
        keep = 0 if fresh else shared[slot]
        keep = self._prefix_states(slot, wanted, keep, restore=not fresh)
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)
        del slot.tokens[keep:]
        slot.request = request
        slot.used = time.monotonic()
        request.todo = request.prompt[keep:]
        request.pos = keep
        request.cached = keep
        request.sampler = self._sampler(params)
        request.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        request.stops = StopMatcher(params.stop)
        if scoring:
            request.scores = [first_logprob(self._llm, request.prompt[0])]

    def _prefix_states(self, slot: _Slot, wanted: Any, keep: int, *, restore: bool) -> int:
        """Keep the slot's cells as a saved state if the new prompt would lose enough of
        them; restore a saved state sharing more with the prompt than the slot does."""
        if self._states.capacity_bytes == 0:
            return keep
        current = as_tokens(slot.tokens)
        if len(current) - keep >= MIN_STATE_TOKENS and not self._states.holds(current):
            data = seq_state(self._ctx, slot.seq)
            if data is not None:
                self._states.add(current, data)
        if not restore:
            return keep
        saved, shared = self._states.best(wanted)
        if saved is None or shared < keep + MIN_STATE_TOKENS:
            return keep
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, 0, -1)
        if not load_seq_state(self._ctx, slot.seq, saved.data):
            log.warning("a saved prompt state did not load; evaluating the prompt afresh")
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, 0, -1)
            slot.tokens.clear()
            return 0
        slot.tokens[:] = [int(t) for t in saved.tokens]
        return shared

    def _sampler(self, params: SamplingParams) -> Any:
        """The sampler chain llama-cpp-python's `Llama.generate` builds for the same
        arguments (llamacpp.LlamaCppEngine.generate), one per request: the helper Llama
        builds it, from this thread only."""
        grammar = self._grammar(params.json_schema) if params.json_schema else None
        self._llm.set_seed(params.seed if params.seed is not None else random.getrandbits(32))
        return self._llm._init_sampler(grammar=grammar, **sampling(params))

    def _step(self) -> None:
        """One batch: every generating slot's next token first (their streams wait on
        it), then waiting prompts in the room left."""
        entries: list[tuple[int, int, int, bool]] = []
        owners: list[_Slot] = []
        for slot in self._slots:
            request = slot.request
            if request is None:
                continue
            if request.cancel.is_set():
                self._finish(slot)
                continue
            if request.next_token is not None:
                entries.append((request.next_token, request.pos, slot.seq, True))
                owners.append(slot)
                request.next_token = None
        for slot in sorted(self._slots, key=lambda s: s.used):  # the longest waiting first
            request = slot.request
            if request is None or not request.todo:
                continue
            # Prompts go in chunks of a fixed size from their first evaluated token, never
            # cut where the room happens to end: a sequence's rows in one pass decide
            # llama.cpp's kernels, so a seeded prompt is evaluated the same way every time.
            take = request.todo[: self._chunk]
            if len(take) > self._batch_size - len(entries):
                continue  # the next step
            request.todo = request.todo[len(take) :]
            done = not request.todo
            scoring = request.scores is not None
            for i, token in enumerate(take):
                wants = scoring or (done and i == len(take) - 1)
                entries.append((token, request.pos + i, slot.seq, wants))
                owners.append(slot)
        if not entries:
            return
        self._decode(entries)
        for index, ((token, pos, _, logits), slot) in enumerate(zip(entries, owners, strict=True)):
            request = slot.request
            assert request is not None
            slot.tokens.append(token)
            request.pos = pos + 1
            if not logits:
                continue
            if request.scores is not None:  # a prompt token's row: the next one's logprob
                if pos + 1 < len(request.prompt):
                    top = request.params.logprobs or 0
                    request.scores.append(
                        self._logprob(self._logits(index), request.prompt[pos + 1], top)
                    )
                    continue
                self._emit_scores(request)
                if request.max_tokens == 0:
                    self._end(slot, "length")
                    continue
            self._sample(slot, index)

    def _emit_scores(self, request: _Request) -> None:
        assert request.scores is not None
        request.send(Chunk(logprobs=request.scores, prompt_tokens=len(request.prompt), echo=True))
        request.scores = None

    def _sample(self, slot: _Slot, index: int) -> None:
        import llama_cpp

        request = slot.request
        assert request is not None and request.stops is not None
        token = int(llama_cpp.llama_sampler_sample(request.sampler.sampler, self._ctx, index))
        if self._is_end(token):
            self._end(slot, "stop")
            return
        request.generated += 1
        params = request.params
        lps = (
            [self._logprob(self._logits(index), token, params.logprobs or 0)]
            if params.logprobs is not None
            else []
        )
        piece = request.decoder.decode(self._llm.detokenize([token]))
        text, stopped = request.stops.feed(piece)
        if text or lps:
            request.send(Chunk(text=text, logprobs=lps))
        if stopped:
            self._end(slot, "stop")
        elif request.generated >= request.max_tokens:
            self._end(slot, "length")
        else:
            request.next_token = token

    def _end(self, slot: _Slot, finish: str) -> None:
        request = slot.request
        assert request is not None and request.stops is not None
        stops = request.stops
        tail = "" if stops.stopped else stops.flush(request.decoder.decode(b"", final=True))
        request.send(
            Chunk(
                text=tail,
                finish_reason="stop" if finish == "stop" else "length",
                prompt_tokens=len(request.prompt),
                completion_tokens=request.generated,
                cached_tokens=request.cached,
            )
        )
        self._finish(slot)

    def _finish(self, slot: _Slot) -> None:
        request = slot.request
        slot.request = None
        slot.used = time.monotonic()
        if request is not None:
            if request.sampler is not None:
                request.sampler.close()
            request.send(self.DONE)
