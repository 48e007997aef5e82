"""llama.cpp replicas routed by prefix (issue 26): SmolLM2 on two replicas behind a
front ("routed" in conftest). Real Ray Serve, real router, real llama.cpp."""

from __future__ import annotations

import json
import time

import httpx

from tests.integration.serving.conftest import SMOL, Stack

SYSTEM = (
    "You are the assistant of a city's permits office. Answer in one or two short "
    "sentences, politely, and never invent a rule. "
)


def ask(client: httpx.Client, stack: Stack, messages: list[dict[str, str]]) -> dict:  # type: ignore[type-arg]
    answer = client.post(
        f"{stack.base('routed')}/chat/completions",
        json={"model": SMOL, "messages": messages, "max_tokens": 12, "temperature": 0},
    )
    assert answer.status_code == 200, answer.text
    body: dict = answer.json()  # type: ignore[type-arg]
    return body


def test_each_conversation_comes_back_to_the_replica_that_holds_it(stack: Stack) -> None:
    conversations = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        for question in (
            "How do I renew a parking permit for my street?",
            "Can I build a garden shed without asking anyone?",
            "What does a market stall licence cost per year?",
            "My neighbour's tree hangs over my fence. Who trims it?",
        )
    ]
    previous = [0] * len(conversations)
    with httpx.Client(timeout=120) as client:
        for turn in range(3):
            # Interleaved: each replica serves other conversations in between.
            for n, messages in enumerate(conversations):
                body = ask(client, stack, messages)
                usage = body["usage"]
                cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
                if turn > 0:
                    # Everything the last turn's prompt held was kept: only the answer
                    # and the new question are evaluated.
                    assert cached >= previous[n] - 1, (turn, n, usage)
                previous[n] = usage["prompt_tokens"]
                messages.append(body["choices"][0]["message"])
                messages.append({"role": "user", "content": f"And what then, step {turn}?"})


def test_errors_and_streams_cross_the_front(stack: Stack) -> None:
    with httpx.Client(timeout=120) as client:
        too_long = client.post(
            f"{stack.base('routed')}/chat/completions",
            json={
                "model": SMOL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 10**6,
            },
        )
        assert too_long.status_code == 400, too_long.text
        error = too_long.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
        with client.stream(
            "POST",
            f"{stack.base('routed')}/chat/completions",
            json={
                "model": SMOL,
                "messages": [{"role": "user", "content": "Count to five."}],
                "max_tokens": 8,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as streamed:
            assert streamed.status_code == 200
            events = [
                json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")
            ]
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        assert events[-1]["usage"]["completion_tokens"] > 0


def test_health_is_ok_once_an_engine_replica_answers(stack: Stack) -> None:
    """The front's /health (the kubelet's probe) waits for an engine replica to answer
    (503 engine_starting before: tests/node/test_vllm_pod.py sees it on a real kubelet,
    where the engine takes a minute)."""
    deadline = time.monotonic() + 120
    health = httpx.get(f"{stack.root}/routed/health", timeout=60)
    while health.status_code == 503 and time.monotonic() < deadline:  # still starting
        assert health.json()["error"]["code"] == "engine_starting", health.text
        time.sleep(0.5)
        health = httpx.get(f"{stack.root}/routed/health", timeout=60)
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok"}
