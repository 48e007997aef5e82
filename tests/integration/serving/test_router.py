"""The ModelRouter's serving app in the same Ray Serve cluster as real models (SmolLM2,
Gemma 3 270M): each strategy's choice, each fallback cause, cooldown and recovery,
budgets (through fallbacks too), streaming, and bad requests.

Failures are real: a second model process (llama-cpp-python's own server with SmolLM2)
is stopped with SIGSTOP (a timeout) and killed (unreachable); Gemma's 1,024-token context
refuses a long prompt (context length); a replica admitting one request answers 503 under
load. Nothing is faked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from freehold_serving.router.args import RouterArgs
from tests.integration.serving.conftest import API_KEY, SMOL, Stack
from tests.pg_server import Postgres
from tests.ports import free_port

pytestmark = pytest.mark.slow
GEMMA = "gemma-3-270m"


def deploy(stack: Stack, name: str, **spec: Any) -> str:
    """A router app at /NAME in the stack's Ray Serve; its base URL (.../v1)."""
    from ray import serve

    from freehold_serving.router.app import build_router

    args = RouterArgs.model_validate({"name": name, "served_name": "assistant", **spec})
    serve.run(build_router(args), name=name, route_prefix=f"/{name}", blocking=False)
    return f"{stack.root}/{name}/v1"


def target(name: str, url: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "model": model, **extra}


def chat(
    base: str, text: str = "Say hello.", key: str | None = None, **extra: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": "assistant",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }
    body = {k: v for k, v in body.items() if v is not None}  # max_tokens=None: not set
    return httpx.post(f"{base}/chat/completions", json=body, headers=headers, timeout=120)


def status(base: str) -> dict[str, Any]:
    root = base.removesuffix("/v1")
    found: dict[str, Any] = {
        t["name"]: t for t in httpx.get(f"{root}/router/status").json()["targets"]
    }
    return found


@pytest.fixture(scope="module")
def second_model(stack: Stack) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A second, independent model process: llama-cpp-python's own OpenAI server."""
    from freehold.api.model_deployment import ModelDeploymentSpec
    from freehold.builders.serving_args import serving_args_for
    from freehold.local.up import DEFAULT_MANIFEST
    from freehold.validation import defaulted
    from freehold_serving.model_files import resolve

    spec = ModelDeploymentSpec.model_validate(defaulted(DEFAULT_MANIFEST)["spec"])
    path = resolve(serving_args_for(spec, "smollm2-135m", "test").model)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", SMOL,
         "--n_threads", "1", "--n_ctx", "2048", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    yield proc, base
    proc.kill()
    proc.wait()


def test_priority_fails_over_on_timeout_cools_down_and_recovers(
    stack: Stack, second_model: tuple[subprocess.Popen[bytes], str]
) -> None:
    proc, second = second_model
    base = deploy(
        stack,
        "r-failover",
        targets=[
            target("second", second, SMOL, priority=0),
            target("smol", stack.base("smol"), SMOL, priority=1),
        ],
        fallback={"timeout_seconds": 3, "cooldown_seconds": 4},
    )
    answer = chat(base)
    assert answer.status_code == 200 and answer.headers["X-Freehold-Target"] == "second"
    os.kill(proc.pid, signal.SIGSTOP)  # a hung model: it accepts, and never answers
    try:
        started = time.monotonic()
        answer = chat(base)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Freehold-Target"] == "smol"
        assert answer.headers["X-Freehold-Attempts"] == "2"
        assert 3 <= time.monotonic() - started < 30
        # Cooling down: the next request goes straight to the fallback.
        assert status(base)["second"]["coolingDown"] is True
        answer = chat(base)
        assert (answer.headers["X-Freehold-Target"], answer.headers["X-Freehold-Attempts"]) == (
            "smol",
            "1",
        )
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    time.sleep(4.5)  # the cooldown ends: the preferred target is tried again, and answers
    answer = chat(base)
    assert answer.headers["X-Freehold-Target"] == "second"
    metrics = httpx.get(f"{stack.root}/r-failover/metrics").text
    assert 'fallbacks_total{cause="timeout",router="r-failover",target="second"}' in metrics, [
        line for line in metrics.splitlines() if "fallbacks_total{" in line
    ]


def test_an_unreachable_target_is_a_5xx_fallback(
    stack: Stack, second_model: tuple[subprocess.Popen[bytes], str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    base = deploy(
        stack,
        "r-dead",
        targets=[target("dead", dead, SMOL), target("smol", stack.base("smol"), SMOL, priority=1)],
    )
    answer = chat(base)
    assert answer.headers["X-Freehold-Target"] == "smol"
    assert answer.headers["X-Freehold-Attempts"] == "2"
    metrics = httpx.get(f"{stack.root}/r-dead/metrics").text
    assert '{cause="5xx",router="r-dead",target="dead"}' in metrics
    # With the fallback switched off for 5xx, the failure is the answer.
    strict = deploy(
        stack,
        "r-strict",
        targets=[target("dead", dead, SMOL), target("smol", stack.base("smol"), SMOL, priority=1)],
        fallback={"on": ["timeout"]},
    )
    refused = chat(strict)
    assert refused.status_code == 502 and refused.json()["error"]["code"] == "upstream_failed"


def test_context_length_and_overload_fall_back(stack: Stack) -> None:
    base = deploy(
        stack,
        "r-context",
        targets=[
            target("gemma", stack.base(), GEMMA, priority=0),  # a 1,024-token context
            target("smol", stack.base("smol"), SMOL, priority=1),  # 4,096
        ],
    )
    long_prompt = "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 150
    answer = chat(base, long_prompt)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Freehold-Target"] == "smol"
    assert answer.headers["X-Freehold-Attempts"] == "2"
    # A declared context limit skips the target before any request.
    limited = deploy(
        stack,
        "r-limit",
        targets=[
            target("gemma", stack.base(), GEMMA, context_limit=1024),
            target("smol", stack.base("smol"), SMOL, priority=1),
        ],
    )
    answer = chat(limited, long_prompt)
    assert answer.headers["X-Freehold-Attempts"] == "1"
    assert answer.headers["X-Freehold-Target"] == "smol"

    # "tiny" admits one request at a time and answers 503 "overloaded" beyond (a 5xx):
    # under load the router moves on to SmolLM2. (No model server here answers 429; its
    # classification is tested in tests/unit/test_router_policy.py.)
    busy = deploy(
        stack,
        "r-busy",
        targets=[
            target("tiny", stack.base("tiny"), GEMMA, priority=0),
            target("smol", stack.base("smol"), SMOL, priority=1),
        ],
        fallback={"cooldown_seconds": 0},
    )
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: chat(busy, max_tokens=24), range(6)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    served = Counter(a.headers["X-Freehold-Target"] for a in answers)
    assert served["smol"] >= 1, served
    metrics = httpx.get(f"{stack.root}/r-busy/metrics").text
    assert '{cause="5xx",router="r-busy",target="tiny"}' in metrics


def test_strategies_choose_as_they_say(stack: Stack) -> None:
    both = [
        target("gemma", stack.base(), GEMMA, cost_input=2.0, cost_output=4.0, weight=3,
               capabilities=["chat", "completions", "logprobs"]),
        target("smol", stack.base("smol"), SMOL, cost_input=0.1, cost_output=0.2, weight=1,
               priority=1, capabilities=["chat", "completions", "json_schema"]),
    ]  # fmt: skip
    cheap = deploy(stack, "r-cost", targets=both, strategy="least_cost")
    assert chat(cheap).headers["X-Freehold-Target"] == "smol"
    capable = deploy(stack, "r-capable", targets=both, strategy="capability")
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert chat(capable).headers["X-Freehold-Target"] == "gemma"  # by priority
    assert chat(capable, response_format=schema).headers["X-Freehold-Target"] == "smol"
    assert chat(capable, logprobs=True).headers["X-Freehold-Target"] == "gemma"
    weighted = deploy(stack, "r-weighted", targets=both, strategy="weighted")
    # First choices only (a request that fell back says so in X-Freehold-Attempts), over
    # enough draws that 3:1 cannot come out even by chance (p < 1e-4 at 48).
    answers = [chat(weighted, max_tokens=1).headers for _ in range(48)]
    picks = Counter(h["X-Freehold-Target"] for h in answers if h["X-Freehold-Attempts"] == "1")
    assert picks["gemma"] > picks["smol"] > 0, picks  # 3:1
    fastest = deploy(stack, "r-fast", targets=both, strategy="least_latency")
    for _ in range(4):  # both get measured first
        chat(fastest, max_tokens=1)
    measured = status(fastest)
    quicker = min(measured, key=lambda n: measured[n]["latencyMs"])
    assert all(measured[n]["latencyMs"] is not None for n in measured)
    assert chat(fastest, max_tokens=1).headers["X-Freehold-Target"] == quicker


def test_streaming_passes_through_and_usage_only_when_asked(stack: Stack) -> None:
    base = deploy(stack, "r-stream", targets=[target("smol", stack.base("smol"), SMOL)])
    body = {
        "model": "assistant",
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 12,
        "stream": True,
    }
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as answer:
        assert answer.headers["X-Freehold-Target"] == "smol"
        lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert not any(c.get("usage") for c in chunks)  # not asked for: the router's own, dropped
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as answer:
        chunks = [json.loads(x[6:]) for x in answer.iter_lines() if x.startswith("data: {")]
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def budget_of(base: str, tenant: str) -> dict[str, Any]:
    root = base.removesuffix("/v1")
    budgets = httpx.get(f"{root}/router/status", timeout=30).json()["budgets"]
    found: dict[str, Any] = next(b for b in budgets if b["tenant"] == tenant)
    return found


def test_a_budget_holds_against_concurrency_several_keys_and_no_max_tokens(
    stack: Stack, tmp_path: Path
) -> None:
    """A tenant trying to overspend (issue 28: ten concurrent requests spent 4.6x a budget,
    one without max_tokens 39x): every request holds the most it can cost before it is
    forwarded, so what is charged (the answers' own usage) never passes the budget."""
    keys = tmp_path / "keys"
    keys.write_text("fh-router-acme-1 acme\nfh-router-acme-2 acme\nfh-router-globex-3 globex\n")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    base = deploy(
        stack,
        "r-budget",
        targets=[target("dead", dead, SMOL), target("smol", stack.base("smol"), SMOL, priority=1)],
        budgets=[{"tenant": "acme", "tokens": 400, "period": "day"}],
        api_keys={"file": str(keys)},
        fallback={"cooldown_seconds": 0},
    )
    assert chat(base).status_code == 401
    with ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda n: chat(base, key=f"fh-router-acme-{n % 2 + 1}", max_tokens=16),
                     range(10))
        )  # fmt: skip
    ok = [a for a in answers if a.status_code == 200]
    refused = [a.json()["error"] for a in answers if a.status_code == 429]
    assert ok and refused, [a.text for a in answers]
    assert all(e["code"] == "budget_exceeded" and "400" in e["message"] for e in refused), refused
    # Answers came through a fallback (the first target is dead): charged all the same.
    assert all(a.headers["X-Freehold-Attempts"] == "2" for a in ok)
    spent = sum(a.json()["usage"]["total_tokens"] for a in ok)
    assert budget_of(base, "acme")["committedTokens"] == spent <= 400
    # Without max_tokens, an answer may use what the budget leaves, and no more.
    for _ in range(10):
        answer = chat(base, "Count from one to one hundred.", key="fh-router-acme-2",
                      max_tokens=None)  # fmt: skip
        if answer.status_code != 200:
            break
        spent += answer.json()["usage"]["total_tokens"]
    assert answer.status_code == 429, answer.text
    assert budget_of(base, "acme")["committedTokens"] == spent <= 400
    # Another tenant has no budget here: unaffected.
    assert chat(base, key="fh-router-globex-3").status_code == 200


def test_a_stream_is_charged_once_and_also_when_its_client_leaves(
    stack: Stack, tmp_path: Path
) -> None:
    from freehold_serving.router.policy import prompt_bound

    keys = tmp_path / "keys"
    keys.write_text("fh-router-acme-1 acme\n")
    base = deploy(
        stack,
        "r-stream-budget",
        targets=[target("smol", stack.base("smol"), SMOL)],
        budgets=[{"tenant": "acme", "tokens": 100000, "period": "day"}],
        api_keys={"file": str(keys)},
    )
    headers = {"Authorization": "Bearer fh-router-acme-1"}
    body: dict[str, Any] = {
        "model": "assistant",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{base}/chat/completions", json=body, headers=headers, timeout=120
    ) as answer:
        chunks = [json.loads(x[6:]) for x in answer.iter_lines() if x.startswith("data: {")]
    used = chunks[-1]["usage"]["total_tokens"]
    assert budget_of(base, "acme")["committedTokens"] == used  # once, not per usage chunk

    text = "Write a long story about a lighthouse keeper."
    body.update(messages=[{"role": "user", "content": text}], max_tokens=48)
    body.pop("stream_options")
    with httpx.stream(
        "POST", f"{base}/chat/completions", json=body, headers=headers, timeout=120
    ) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                break  # the client leaves after its first chunk
    held = used + prompt_bound([text]) + 48
    deadline = time.monotonic() + 120
    while (committed := budget_of(base, "acme")["committedTokens"]) == held:
        assert time.monotonic() < deadline, "the dropped stream's hold was never settled"
        time.sleep(0.5)
    # Charged what the target generated for it (its usage, read after the client left):
    # more than nothing, less than what was held (the prompt bound is an upper bound).
    assert used < committed < held


def test_router_replicas_share_budgets_in_postgresql_and_fail_closed_without_it(
    stack: Stack, tmp_path: Path, postgres: Postgres
) -> None:
    """Two router replicas (two apps with the same router name: one ledger) on a real
    PostgreSQL: concurrent requests through both never pass the budget, a third replica
    (a restart) sees what was spent; a router whose database is away refuses budgeted
    requests (503) and serves the others."""
    from ray import serve

    from freehold_serving.router.app import build_router

    keys = tmp_path / "keys"
    keys.write_text("fh-router-acme-1 acme\nfh-router-globex-2 globex\n")
    password = tmp_path / "pgpass"
    password.write_text(postgres.password)
    database = postgres.create_database("routers_" + os.urandom(4).hex())
    state = {
        "host": postgres.host, "port": postgres.port, "database": database,
        "db_schema": "router_state", "sslmode": "disable", "credentials": "file",
        "user": postgres.user, "password_file": str(password),
    }  # fmt: skip

    def replica(app: str, pg: dict[str, Any]) -> str:
        args = RouterArgs.model_validate({
            "name": "shared", "served_name": "assistant",
            "targets": [target("smol", stack.base("smol"), SMOL)],
            "budgets": [{"tenant": "acme", "tokens": 300, "period": "day"}],
            "api_keys": {"file": str(keys)}, "state_postgres": pg,
        })  # fmt: skip
        serve.run(build_router(args), name=app, route_prefix=f"/{app}", blocking=False)
        return f"{stack.root}/{app}/v1"

    bases = [replica("r-shared-a", state), replica("r-shared-b", state)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda n: chat(bases[n % 2], key="fh-router-acme-1", max_tokens=16),
                     range(8))
        )  # fmt: skip
    ok = [a for a in answers if a.status_code == 200]
    assert ok and any(a.status_code == 429 for a in answers), [a.text for a in answers]
    spent = sum(a.json()["usage"]["total_tokens"] for a in ok)
    assert [budget_of(b, "acme")["committedTokens"] for b in bases] == [spent, spent]
    assert spent <= 300
    assert budget_of(bases[0], "acme") | {"committedTokens": 0} == {
        "tenant": "acme", "period": "day", "tokens": 300, "cost": None, "committedTokens": 0,
        "committedCost": 0.0,
    }  # fmt: skip
    restarted = replica("r-shared-c", state)
    assert budget_of(restarted, "acme")["committedTokens"] == spent

    away = replica("r-shared-away", {**state, "port": free_port(), "connect_timeout_seconds": 1})
    refused = chat(away, key="fh-router-acme-1")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "budget_state_unavailable"
    assert refused.headers["Retry-After"] == "5"
    assert chat(away, key="fh-router-globex-2").status_code == 200  # no budget: served
    assert budget_of(away, "acme").get("ledger") == "unavailable"


def test_replicas_share_cooldowns_in_postgresql(
    stack: Stack, tmp_path: Path, postgres: Postgres
) -> None:
    """A target one replica saw fail is passed over by the other within a second, not
    found out again (two apps with one router name: one shared state)."""
    from ray import serve

    from freehold_serving.router.app import build_router

    password = tmp_path / "pgpass"
    password.write_text(postgres.password)
    state = {
        "host": postgres.host, "port": postgres.port,
        "database": postgres.create_database("cool_" + os.urandom(4).hex()),
        "db_schema": "router_state", "sslmode": "disable", "credentials": "file",
        "user": postgres.user, "password_file": str(password),
    }  # fmt: skip
    dead = f"http://127.0.0.1:{free_port()}/v1"
    bases = []
    for app in ("r-cool-a", "r-cool-b"):
        args = RouterArgs.model_validate({
            "name": "cooling", "served_name": "assistant",
            "targets": [target("dead", dead, SMOL), target("smol", stack.base("smol"), SMOL,
                                                           priority=1)],
            "fallback": {"cooldown_seconds": 60}, "state_postgres": state,
        })  # fmt: skip
        serve.run(build_router(args), name=app, route_prefix=f"/{app}", blocking=False)
        bases.append(f"{stack.root}/{app}/v1")
    first = chat(bases[0])
    assert first.status_code == 200 and first.headers["X-Freehold-Attempts"] == "2"
    time.sleep(2.5)  # the other replica reads shared cooldowns every second
    second = chat(bases[1])
    assert second.status_code == 200, second.text
    assert second.headers["X-Freehold-Attempts"] == "1"  # "dead" passed over, not retried
    assert status(bases[1])["dead"]["coolingDown"] is True


def test_rate_limits_per_key_and_per_tenant_answer_429_with_retry_after(
    stack: Stack, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("fh-router-acme-1 acme\nfh-router-acme-2 acme\nfh-router-initech-3 initech\n")
    base = deploy(
        stack,
        "r-rate",
        targets=[target("smol", stack.base("smol"), SMOL)],
        rate_limits=[
            {"tenant": "acme", "requests_per_minute": 3, "key_requests_per_minute": 2},
            {"tenant": "initech", "tokens_per_minute": 300},
        ],
        api_keys={"file": str(keys)},
    )
    first = [chat(base, key="fh-router-acme-1", max_tokens=1) for _ in range(3)]
    assert [a.status_code for a in first] == [200, 200, 429]
    error = first[2].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "this key" in error["message"], error
    assert int(first[2].headers["Retry-After"]) >= 1
    # The refused request was counted nowhere: the tenant has room for one more, by key 2.
    second = [chat(base, key="fh-router-acme-2", max_tokens=1) for _ in range(2)]
    assert [a.status_code for a in second] == [200, 429]
    assert "this tenant" in second[1].json()["error"]["message"]
    # Tokens per minute: without max_tokens, an answer may use what the minute leaves;
    # then the minute is spent, and a request that could never fit says so.
    used = 0
    for _ in range(5):
        answer = chat(base, "Count from one to one hundred.", key="fh-router-initech-3",
                      max_tokens=None)  # fmt: skip
        if answer.status_code != 200:
            break
        used += answer.json()["usage"]["total_tokens"]
    assert answer.status_code == 429 and "Retry-After" in answer.headers, answer.text
    assert used <= 300
    huge = chat(base, key="fh-router-initech-3", max_tokens=400)
    assert huge.status_code == 429 and "more than this tenant may use" in huge.text


def test_the_router_reaches_targets_that_need_keys_with_its_own(
    stack: Stack, tmp_path: Path
) -> None:
    """`freehold up` with a router in front of models that need keys: the models accept
    only the router's own key (local/up.py's router_key_file), the router presents it,
    and a caller's key works at the router only (its budgets cannot be skipped)."""
    callers = tmp_path / "callers"
    callers.write_text("fh-router-acme-1 acme\n")
    own = tmp_path / "router-key"
    own.write_text(API_KEY + " freehold-router\n")  # a key file the "locked" model accepts
    audit = tmp_path / "audit"
    base = deploy(
        stack,
        "r-keyed",
        targets=[target("locked", stack.base("locked"), GEMMA, api_key_file=str(own))],
        api_keys={"file": str(callers)},
        audit={"directory": str(audit)},
    )
    answer = chat(base, key="fh-router-acme-1")
    assert answer.status_code == 200, answer.text
    streamed = httpx.post(
        f"{base}/chat/completions",
        json={"model": "assistant", "messages": [{"role": "user", "content": "Hi"}],
              "max_tokens": 3, "stream": True},
        headers={"Authorization": "Bearer fh-router-acme-1"},
        timeout=60,
    )  # fmt: skip
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    assert chat(base, key="fh-router-nobody").status_code == 401
    # The router's access records name the caller's key and tenant (which the target
    # never sees: it only knows the router's key), the target, the tokens.
    deadline = time.monotonic() + 20
    while True:
        found = [
            json.loads(line)
            for f in sorted((audit / "access").glob("router-r-keyed-*.jsonl"))
            for line in f.read_text().splitlines()
        ]
        events = [e["data"] for e in found if e.get("type") == "inference.access"]
        if len(events) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    from freehold_serving.key_records import key_id

    assert [e["status"] for e in events] == [200, 200], found
    for event in events:
        assert event["keyId"] == key_id("fh-router-acme-1") and event["tenant"] == "acme"
        assert event["target"] == "locked" and event["outputTokens"] > 0
    direct = httpx.post(
        f"{stack.base('locked')}/chat/completions",
        json={"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
        headers={"Authorization": "Bearer fh-router-acme-1"},
        timeout=60,
    )
    assert direct.status_code == 401  # the caller's key is the router's, not the model's
    bare = deploy(stack, "r-unkeyed", targets=[target("locked", stack.base("locked"), GEMMA)])
    assert chat(bare).status_code == 401  # without its own key the router gets nowhere


def test_bad_requests_get_openai_errors(stack: Stack) -> None:
    base = deploy(stack, "r-bad", targets=[target("smol", stack.base("smol"), SMOL)])
    wrong = httpx.post(
        f"{base}/chat/completions", json={"model": "gpt-4", "messages": []}, timeout=30
    )
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
    broken = httpx.post(f"{base}/chat/completions", content=b"{nope", timeout=30)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    nothing = deploy(
        stack,
        "r-none",
        targets=[target("smol", stack.base("smol"), SMOL, capabilities=["completions"])],
    )
    refused = chat(nothing)
    assert refused.status_code == 503
    assert "smol: cannot do chat" in refused.json()["error"]["message"]


def test_an_external_provider_goes_through_any_llm(stack: Stack) -> None:
    """any-llm's openai provider against an OpenAI-compatible server we own (SmolLM2 at
    /smol): the path an external provider takes, streaming included. The server needs no
    key; any-llm's client wants one, so the target reads an unrelated variable."""
    base = deploy(
        stack,
        "r-external",
        targets=[
            {
                "name": "ext",
                "external": {
                    "provider": "openai",
                    "model": SMOL,
                    "base_url": stack.base("smol"),
                    "api_key_env": "HOME",
                },
                "capabilities": ["chat"],
            }
        ],
    )
    answer = chat(base, max_tokens=6)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Freehold-Target"] == "ext"
    assert answer.json()["choices"][0]["message"]["content"]
    body = {
        "model": "assistant",
        "messages": [{"role": "user", "content": "Count to three."}],
        "max_tokens": 8,
        "stream": True,
    }
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as streamed:
        lines = [x for x in streamed.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 2
