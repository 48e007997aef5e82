"""Request bodies of the OpenAI-compatible API, validated the way OpenAI validates them:
strict types, unknown arguments rejected, bounds enforced."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from freehold_serving.engines.base import SamplingParams
from freehold_serving.openai.errors import invalid


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Body):
    include_usage: bool = False


# Stop strings are matched against every generated token's text: bound their length.
StopString = Annotated[str, Field(min_length=1, max_length=256)]
Stop = StopString | Annotated[list[StopString], Field(max_length=4)] | None


def _stops(stop: Stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


class _Sampling(Body):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _supported(self) -> _Sampling:
        if (self.n or 1) != 1:
            raise invalid("Only n=1 is supported by this server.", param="n")
        if self.logit_bias:
            raise invalid("logit_bias is not supported by this server.", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        return self

    def _params(self, max_tokens: int | None, logprobs: int | None, echo: bool) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=_stops(self.stop),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logprobs=logprobs,
            echo=echo,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = False
    best_of: int | None = Field(default=None, ge=1, le=1)

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def sampling(self) -> SamplingParams:
        if self.max_tokens == 0 and not self.echo:
            raise invalid("max_tokens must be at least 1 unless echo is true.", "max_tokens")
        return self._params(self.max_tokens, self.logprobs, bool(self.echo))


class TextPart(Body):
    type: Literal["text"]
    text: str


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    # OpenAI names the field "schema"; it shadows a BaseModel attribute, hence the alias.
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    """`text`, `json_object` (any JSON object) or `json_schema`: the output is constrained
    by a grammar while it is sampled, so it always parses (unless cut by max_tokens)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise invalid(
                "response_format.json_schema is required with type json_schema, and only then.",
                param="response_format.json_schema",
            )
        return self

    def grammar(self) -> str | None:
        """The JSON schema to constrain output with ("{}" for any JSON object)."""
        import json

        if self.type == "json_object":
            return json.dumps({"type": "object"})
        if self.json_schema is not None:
            return json.dumps(self.json_schema.schema_)
        return None


class MemoryRef(Body):
    """Freehold extension: recall the subject's memories from a MemoryStore into the prompt.
    The response's `memory.records` lists the record ids used."""

    store: str = Field(min_length=1, max_length=253)
    subject: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    top_k: int = Field(default=5, ge=1, le=20)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    memory: MemoryRef | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs requires logprobs to be true.", param="top_logprobs")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        # `developer` is OpenAI's newer name for the system role.
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

    def sampling(self) -> SamplingParams:
        limit = self.max_completion_tokens or self.max_tokens
        top = (self.top_logprobs or 0) if self.logprobs else None
        params = self._params(limit, top, False)
        schema = self.response_format.grammar() if self.response_format else None
        if schema is None:
            return params
        from dataclasses import replace

        return replace(params, json_schema=schema)


class EmbeddingRequest(Body):
    model: str = Field(min_length=1)
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        for i, text in enumerate(texts):
            if not text:
                param = "input" if isinstance(self.input, str) else f"input[{i}]"
                raise invalid("Input cannot be an empty string.", param=param)
        return texts


def reject_unsupported(body: Any) -> None:
    """Name the OpenAI features we do not implement before generic validation runs."""
    from freehold_serving.openai.errors import UNSUPPORTED

    if isinstance(body, dict):
        for key, why in UNSUPPORTED.items():
            if body.get(key) not in (None, [], {}):
                raise invalid(f"'{key}': {why}.", param=key, code="unsupported_parameter")
