"""OpenAI-style error objects, and the translation of validation errors into them."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

# OpenAI's parameters we understand but do not implement: named, so the caller learns
# why rather than being told the parameter does not exist.
UNSUPPORTED = {
    "tools": "tool calling is not supported by this server",
    "tool_choice": "tool calling is not supported by this server",
    "functions": "function calling is not supported by this server",
    "function_call": "function calling is not supported by this server",
    "suffix": "suffix (insertion) is not supported by this model",
    "audio": "audio output is not supported by this server",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
}


class ApiError(Exception):
    """An error answered to the client as an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "string": "a string",
    "list": "an array",
    "dict": "an object",
    "model": "an object",
}


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = str(part)
        elif not str(part).startswith(("function-", "tagged-union", "literal")):
            out += f".{part}"
    return out


def from_validation_error(exc: ValidationError) -> ApiError:
    """The first problem of a request body, the way OpenAI words it."""
    errors = exc.errors(include_url=False)
    # Prefer errors at the shallowest location: for `str | list[str]` pydantic reports
    # every branch; the first branch's message is the clearest.
    first = errors[0]
    kind = first["type"]
    loc = tuple(first["loc"])
    # Union branches add their type name to the location; drop those parts.
    branches = {"str", "list[str]", "int", "constrained-str", "list[constrained-str]"}
    loc = tuple(p for p in loc if not (isinstance(p, str) and p in branches))
    param = _param(loc) or None
    if kind in {"json_invalid", "json_type"}:
        return invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        )
    if kind == "model_type" and not loc:
        return invalid("The request body must be a JSON object.")
    if kind == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param=param)
    for suffix, word in _TYPE_WORDS.items():
        if kind.startswith(suffix + "_") and kind.endswith("_type"):
            got = type(first.get("input")).__name__
            return invalid(
                f"Invalid type for '{param}': expected {word}, but got {got} instead.",
                param=param,
                code="invalid_type",
            )
    return invalid(
        f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value"
    )
