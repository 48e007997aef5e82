"""A multi-turn chat workload for routing benchmarks (bench/vllm.py, bench/llamacpp_routing.py):
time to first token of the follow-up turns."""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

# A multi-turn workload: many conversations, each with its own long opening (a prefix no
# other conversation shares), each turn sending the whole history again, turn by turn
# across all conversations. What prefix-aware routing buys is cache capacity: each replica
# keeps only its own conversations' histories, where power-of-two makes both replicas hold
# every conversation. With more history than one replica's cache holds but no more than
# the two hold together, follow-up turns hit the cache under prefix-aware routing and
# mostly miss under power-of-two (bench/vllm.py sizes the workload from the KV cache).
OPENING = "Ticket {n:05d}. You are the help desk of district office {n}. Office rules: {rules}"


def conversation_turns(conversations: int, turns: int) -> list[list[list[dict[str, str]]]]:
    out = []
    for n in range(conversations):
        rules = " ".join(
            f"Rule {i}: forms of kind {i * n % 97} are handled at desk {(i + n) % 7}."
            for i in range(30)
        )
        history: list[dict[str, str]] = [
            {"role": "system", "content": OPENING.format(n=n, rules=rules)}
        ]
        per = []
        for t in range(turns):
            history = [*history, {"role": "user", "content": f"Question {t}: where is desk {t}?"}]
            per.append(history)
            history = [*history, {"role": "assistant", "content": f"Desk {t} is on floor {t}."}]
        out.append(per)
    return out


def ttft_chat(client: httpx.Client, base: str, model: str, messages: list[dict[str, str]]) -> float:
    body = {"model": model, "messages": messages, "max_tokens": 4, "temperature": 0}
    start = time.perf_counter()
    with client.stream(
        "POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, timeout=300
    ) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    return time.perf_counter() - start
    return time.perf_counter() - start


def multi_turn(base: str, model: str, conversations: int, turns: int, parallel: int) -> float:
    """TTFT p50 (ms) of the follow-up turns (turn 2 on): each turn of every conversation,
    `parallel` requests at a time, before the next turn of any."""
    chats = conversation_turns(conversations, turns)
    samples: list[float] = []
    clients = [httpx.Client() for _ in range(parallel)]
    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for t in range(turns):
                took = list(
                    pool.map(
                        lambda n, t=t: ttft_chat(clients[n % parallel], base, model, chats[n][t]),
                        range(conversations),
                    )
                )
                if t > 0:
                    samples += took
    finally:
        for client in clients:
            client.close()
    return statistics.median(samples) * 1000
