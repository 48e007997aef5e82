from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from freehold_serving.openai.errors import ApiError, from_validation_error
from freehold_serving.openai.schemas import ChatCompletionRequest, CompletionRequest


def error_for(model: type, body: dict[str, Any]) -> ApiError:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        return from_validation_error(exc)
    except ApiError as exc:
        return exc
    raise AssertionError("expected an error")


def test_defaults_follow_openai() -> None:
    req = CompletionRequest.model_validate({"model": "m", "prompt": "p"})
    params = req.sampling()
    assert params.max_tokens == 16 and params.temperature == 1.0 and params.top_p == 1.0
    chat = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "developer",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        }
    )
    assert chat.chat_messages() == [{"role": "system", "content": "ab"}]
    assert chat.sampling().max_tokens is None


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "m", "prompt": "p", "max_tokens": 1.5}, "max_tokens", "expected an integer"),
        ({"model": "m", "prompt": "p", "stream": "yes"}, "stream", "expected a boolean"),
        ({"model": "m", "prompt": "p", "stop": ["a", "b", "c", "d", "e"]}, "stop", ""),
        ({"model": "m", "prompt": "p", "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"model": "m", "prompt": "p", "logit_bias": {"1": 5}}, "logit_bias", "not supported"),
        (
            {"model": "m", "prompt": "p", "stream_options": {"include_usage": True}},
            "stream_options",
            "only allowed when 'stream' is enabled",
        ),
    ],
)
def test_errors_name_the_parameter(body: dict[str, Any], param: str, fragment: str) -> None:
    err = error_for(CompletionRequest, body)
    assert err.status == 400 and err.param == param and fragment in err.message


def test_max_tokens_zero_needs_echo() -> None:
    req = CompletionRequest.model_validate({"model": "m", "prompt": "p", "max_tokens": 0})
    with pytest.raises(ApiError, match="unless echo"):
        req.sampling()


def test_top_logprobs_requires_logprobs() -> None:
    err = error_for(
        ChatCompletionRequest,
        {"model": "m", "top_logprobs": 2, "messages": [{"role": "user", "content": "x"}]},
    )
    assert err.param == "top_logprobs"
