"""Prefix-aware routing of llama.cpp replicas and their prompt cache: the pure parts."""

from __future__ import annotations

import numpy as np

from freehold_serving.engines.base import GenerationJob, SamplingParams
from freehold_serving.engines.prefix_routing import PrefixMemory, request_blocks
from freehold_serving.engines.prompt_states import PromptStates, as_tokens, common_prefix

SYSTEM = "You are the ministry's assistant. Answer in one short paragraph. " * 4


def chat(n: int, turns: int) -> GenerationJob:
    messages = [("system", SYSTEM), ("user", f"Question {n}: " + "how do I renew a permit? " * 6)]
    for t in range(turns):
        messages += [("assistant", f"Answer {t}. " + "Bring your papers. " * 12)]
        messages += [("user", f"And then {t}?")]
    return GenerationJob(SamplingParams(), messages=tuple(messages))


def test_a_conversation_follows_its_replica() -> None:
    memory = PrefixMemory()
    memory.remember(request_blocks(chat(1, 0)), "A")
    memory.remember(request_blocks(chat(2, 0)), "B")  # sent elsewhere (least loaded)
    for turns in (1, 2):
        assert memory.longest(request_blocks(chat(1, turns)), {"A", "B"})[0] == "A"
        assert memory.longest(request_blocks(chat(2, turns)), {"A", "B"})[0] == "B"
    memory.remember(request_blocks(chat(1, 1)), "A")
    owner, matched = memory.longest(request_blocks(chat(1, 2)), {"A", "B"})
    assert owner == "A" and matched == sum(map(len, request_blocks(chat(1, 1))))


def test_a_shared_system_prompt_does_not_pull_new_conversations() -> None:
    memory = PrefixMemory()
    memory.remember(request_blocks(chat(1, 0)), "A")
    memory.remember(request_blocks(chat(2, 0)), "B")
    # Conversation 3 shares only the system prompt, where the others branch off.
    assert memory.longest(request_blocks(chat(3, 0)), {"A", "B"}) == (None, 0)


def test_only_live_replicas_and_whole_blocks_count() -> None:
    memory = PrefixMemory()
    memory.remember(request_blocks(chat(1, 0)), "A")
    assert memory.longest(request_blocks(chat(1, 1)), {"B"}) == (None, 0)
    memory.forget("A")
    assert memory.longest(request_blocks(chat(1, 1)), {"A"}) == (None, 0)
    short = GenerationJob(SamplingParams(), prompt="short")
    assert request_blocks(short) == []  # under one block: nothing to remember
    prompt = GenerationJob(SamplingParams(), prompt="p" * 300)
    memory.remember(request_blocks(prompt), "C")
    longer = GenerationJob(SamplingParams(), prompt="p" * 300 + "q" * 100)
    assert memory.longest(request_blocks(longer), {"C"}) == ("C", 256)


def test_memory_is_bounded() -> None:
    memory = PrefixMemory(capacity=10)
    for n in range(5):
        memory.remember(request_blocks(chat(n, 2)), "A")
    assert len(memory._blocks) == 10


def test_common_prefix() -> None:
    assert common_prefix(as_tokens([1, 2, 3]), as_tokens([1, 2, 4, 5])) == 2
    assert common_prefix(as_tokens([1, 2]), as_tokens([1, 2, 3])) == 2
    assert common_prefix(as_tokens([]), as_tokens([1])) == 0
    assert common_prefix(as_tokens([9]), as_tokens([1])) == 0


def test_prompt_states_keep_the_longest_within_budget() -> None:
    states = PromptStates(capacity_bytes=100)
    states.add(as_tokens([1, 2, 3]), b"x" * 30)
    states.add(as_tokens([1, 2, 3, 4, 5]), b"y" * 30)  # extends the first: replaces it
    assert len(states) == 1 and states.size_bytes == 30
    assert states.holds(as_tokens([1, 2, 3])) and not states.holds(as_tokens([1, 2, 9]))
    states.add(as_tokens([7, 8]), b"z" * 30)
    found, shared = states.best(as_tokens([1, 2, 3, 4, 6]))
    assert found is not None and found.data == b"y" * 30 and shared == 4
    states.add(as_tokens([5, 5]), b"w" * 30)
    states.add(as_tokens([6, 6]), b"v" * 30)  # over budget: the least recently used goes
    assert states.size_bytes <= 100
    assert states.best(as_tokens([7, 8]))[0] is None  # [7, 8] was least recently used
    assert states.best(as_tokens([1, 2, 3, 4]))[1] == 4
    before = states.size_bytes
    states.add(as_tokens([1]), b"q" * 101)  # larger than the whole budget: not kept
    assert states.size_bytes == before
    newest, _ = states.best(as_tokens([6, 6]))
    assert newest is not None and np.array_equal(newest.tokens, [6, 6])
