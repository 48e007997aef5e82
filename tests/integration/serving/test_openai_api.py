"""The OpenAI-compatible API on real Ray Serve and the real model, through the
official `openai` client (and raw HTTP where the client would refuse to send)."""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.integration.serving.conftest import API_KEY, MODEL, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base(), api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_llm_and_the_embedder(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL, "all-minilm-l6-v2"]
    assert client.models.retrieve(MODEL).owned_by == "freehold"


def test_completion_counts_tokens_and_stops_at_max_tokens(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    choice = out.choices[0]
    assert choice.text.strip()
    assert choice.finish_reason == "length"
    assert out.usage is not None
    assert out.usage.completion_tokens == 5
    assert out.usage.prompt_tokens > 3
    assert out.usage.total_tokens == out.usage.prompt_tokens + 5


def test_streaming_completion_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": "Water boils at", "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0].text  # type: ignore[call-overload]
    chunks = list(client.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_stop_sequence_ends_the_text_before_it(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"]
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text.startswith(" 5, 6,")
    assert "7" not in out.choices[0].text


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        return (
            client.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=seed
            )
            .choices[0]
            .text
        )

    assert run(11) == run(11)


def test_chat_uses_the_template_and_streams(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    out = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.usage is not None
    # system + user turn of the Gemma template: well over the raw text's token count
    assert out.usage.prompt_tokens >= 15
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_roles_must_alternate(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="roles must alternate"):
        client.chat.completions.create(
            model=MODEL,
            max_tokens=4,
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        )


def test_echo_logprobs_support_loglikelihood_evaluation(client: openai.OpenAI) -> None:
    prompt = "Paris is the capital of France"
    out = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    choice = out.choices[0]
    assert choice.text == prompt
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.tokens[0] == "<bos>" and lp.token_logprobs[0] is None
    assert "".join(lp.tokens[1:]) == prompt
    assert all(x is not None and x < 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset is not None and lp.text_offset[1:3] == [0, len("Paris")]
    # " France" after "Paris is the capital of" is the model's top choice
    assert next(iter(lp.top_logprobs[-1])) == " France"


def test_generated_logprobs_are_the_top_choice_when_greedy(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=4, logprobs=3, temperature=0
    )
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.top_logprobs and lp.token_logprobs
    assert "".join(lp.tokens) == out.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3
        best = max(top, key=top.__getitem__)
        assert best == token and math.isclose(top[best], logprob, abs_tol=1e-4)
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs and chat.choices[0].logprobs.content
    assert content and len(content) == chat.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(c.top_logprobs) == 2 for c in content)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_embeddings_put_similar_sentences_closer(client: openai.OpenAI) -> None:
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The central bank raised interest rates.",
    ]
    out = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    vectors = [d.embedding for d in out.data]
    assert [d.index for d in out.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert out.usage.prompt_tokens > 10
    raw = httpx.post(
        f"{client.base_url}embeddings",
        json={"model": "all-minilm-l6-v2", "input": texts[0], "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert math.isclose(cosine(list(decoded), vectors[0]), 1.0, abs_tol=1e-5)


# -- errors: OpenAI-style objects, never a 500 -------------------------------------------


def post(stack: Stack, path: str, app: str = "", **kwargs: object) -> httpx.Response:
    return httpx.post(f"{stack.base(app)}{path}", timeout=120, **kwargs)  # type: ignore[arg-type]


def assert_error(
    resp: httpx.Response,
    status: int,
    *,
    code: str | None = None,
    param: str | None = None,
    message: str = "",
) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param", "message"),
    [
        ("/completions", b"{not json", 400, None, None, "could not parse the JSON"),
        ("/completions", b"[1, 2]", 400, None, None, "must be a JSON object"),
        (
            "/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": "5"},
            400,
            "invalid_type",
            "max_tokens",
            "expected an integer",
        ),
        (
            "/completions",
            {"model": MODEL, "prompt": "x", "temperature": 3},
            400,
            "invalid_value",
            "temperature",
            "",
        ),
        (
            "/completions",
            {"model": MODEL, "prompt": "x", "bogus": 1},
            400,
            None,
            "bogus",
            "Unrecognized request argument supplied: bogus",
        ),
        ("/completions", {"model": MODEL}, 400, None, "prompt", "Missing required parameter"),
        ("/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, None, "n", "n=1"),
        (
            "/completions",
            {"model": MODEL, "prompt": "x", "suffix": "y"},
            400,
            "unsupported_parameter",
            "suffix",
            "",
        ),
        (
            "/completions",
            {"model": "gpt-4o", "prompt": "x"},
            404,
            "model_not_found",
            "model",
            "`gpt-4o` does not exist",
        ),
        ("/chat/completions", {"model": MODEL, "messages": []}, 400, None, "messages", ""),
        (
            "/chat/completions",
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            None,
            None,
            "",
        ),
        (
            "/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            },
            400,
            "unsupported_parameter",
            "tools",
            "tool calling",
        ),
        ("/embeddings", {"model": "all-minilm-l6-v2", "input": [1, 2, 3]}, 400, None, None, ""),
        ("/embeddings", {"model": "all-minilm-l6-v2", "input": ""}, 400, None, "input", "empty"),
        ("/embeddings", {"model": MODEL, "input": "x"}, 404, "model_not_found", "model", ""),
    ],
)
def test_bad_requests_get_openai_errors(
    stack: Stack,
    path: str,
    body: object,
    status: int,
    code: str | None,
    param: str | None,
    message: str,
) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    assert_error(post(stack, path, **kwargs), status, code=code, param=param, message=message)


def test_prompt_longer_than_the_context_is_refused(stack: Stack) -> None:
    resp = post(stack, "/completions", json={"model": MODEL, "prompt": "word " * 1500})
    assert_error(
        resp, 400, code="context_length_exceeded", message="maximum context length is 1024 tokens"
    )
    resp = post(stack, "/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 5000})
    assert_error(resp, 400, code="context_length_exceeded", param="max_tokens")


def test_oversized_body_is_413(stack: Stack) -> None:
    resp = post(stack, "/completions", json={"model": MODEL, "prompt": "x" * (5 * 2**20)})
    assert_error(resp, 413, code="request_too_large")


@pytest.mark.security
def test_a_chunked_body_is_limited_while_it_is_read(stack: Stack) -> None:
    """No Content-Length to check up front: the limit holds while reading (issue 16)."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "' + MODEL.encode() + b'", "prompt": "'
        for _ in range(6):
            yield b"x" * 2**20
        yield b'"}'

    resp = post(stack, "/completions", content=chunks())
    assert_error(resp, 413, code="request_too_large")


@pytest.mark.security
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000,  # RecursionError in the JSON parser
        rb'{"model": "m", "prompt": "\ud800"}',  # a lone surrogate, JSON-escaped
    ],
    ids=["deep-nesting", "lone-surrogate"],
)
def test_malformed_json_is_a_400_not_a_500(stack: Stack, body: bytes) -> None:
    resp = post(stack, "/completions", content=body, headers={"Content-Type": "application/json"})
    assert_error(resp, 400)


@pytest.mark.security
def test_stop_strings_are_bounded(stack: Stack) -> None:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "stop": ["x" * 257]}
    assert_error(post(stack, "/completions", json=body), 400, param="stop")


def test_unknown_route_is_an_openai_404(stack: Stack) -> None:
    resp = httpx.get(f"{stack.base()}/engines")
    assert_error(resp, 404)


def test_api_keys_are_enforced(stack: Stack) -> None:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    assert_error(post(stack, "/completions", "locked", json=body), 401, code="missing_api_key")
    assert_error(
        post(stack, "/completions", "locked", json=body, headers={"Authorization": "Bearer wrong"}),
        401,
        code="invalid_api_key",
    )
    locked = openai.OpenAI(base_url=stack.base("locked"), api_key=API_KEY, max_retries=0)
    assert locked.completions.create(**body).usage.completion_tokens == 2  # type: ignore[call-overload,union-attr]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.base("locked"), api_key="nope", max_retries=0).models.list()


def test_overload_sheds_with_retry_after_and_recovers(stack: Stack) -> None:
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "max_tokens": 48, "temperature": 0}

    def call(_: int) -> httpx.Response:
        return post(stack, "/completions", "tiny", json=body)

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(call, range(12)))
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for resp in results:
        if resp.status_code == 503:
            assert_error(resp, 503, code="overloaded")
            assert int(resp.headers["retry-after"]) >= 1
    # and the service still answers afterwards
    assert post(stack, "/completions", "tiny", json=body).status_code == 200


@pytest.mark.security
@pytest.mark.parametrize("read_lines", [0, 1], ids=["before-first-token", "mid-stream"])
def test_client_disconnect_frees_the_replica_at_once(stack: Stack, read_lines: int) -> None:
    """A client that leaves (before reading anything, or mid-stream) must not keep the
    engine or its admission slot: the next request is served at once, not after the
    ~900 abandoned tokens (many seconds). Broken cancellation fails the time bound."""
    body = {"model": MODEL, "prompt": "Tell a long story:", "max_tokens": 900, "stream": True}
    for _ in range(3):  # more leavers than the replica has slots: a leak would 503 forever
        with httpx.stream(
            "POST", f"{stack.base('tiny')}/completions", json=body, timeout=60
        ) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            for _ in range(read_lines):
                next(lines)
    started = time.monotonic()
    quick = post(
        stack, "/completions", "tiny", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    )
    assert quick.status_code == 200, quick.text
    assert time.monotonic() - started < 5.0


def test_metrics_follow_genai_conventions_and_hold_no_content(
    stack: Stack, client: openai.OpenAI
) -> None:
    secret_prompt = "canary-4f9e2 my account number is 1234"
    client.completions.create(model=MODEL, prompt=secret_prompt, max_tokens=4)
    text = httpx.get(f"{stack.root}/metrics").text
    for name in (
        "gen_ai_server_request_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "gen_ai_client_token_usage_bucket",
    ):
        assert name in text, name
    assert 'gen_ai_request_model="gemma-3-270m"' in text
    assert 'gen_ai_token_type="input"' in text and 'gen_ai_token_type="output"' in text
    assert 'gen_ai_operation_name="text_completion"' in text
    assert "canary-4f9e2" not in text
