"""The evaluated model: any OpenAI-compatible endpoint (`/v1/completions`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx


class EndpointError(Exception):
    """The endpoint failed; the message says which request and how."""


@dataclass(frozen=True)
class Timing:
    text: str
    ttft_ms: float
    tokens_per_s: float


class Endpoint:
    def __init__(
        self, base_url: str, model: str | None, api_key: str | None = None, seed: int = 0
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=300)
        self.seed = seed
        self._model = model

    @property
    def model(self) -> str:
        """The model named, or the endpoint's first (asked once, when first needed: after
        wait_ready, not while the endpoint may still be starting)."""
        if self._model is None:
            self._model = self._first_model()
        return self._model

    def close(self) -> None:
        self._client.close()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = self._client.post("/completions", json={"model": self.model, **body})
        except httpx.HTTPError as exc:
            raise EndpointError(f"{self._client.base_url}: {exc}") from None
        if answer.status_code != 200:
            raise EndpointError(f"/completions answered {answer.status_code}: {answer.text[:300]}")
        result: dict[str, Any] = answer.json()
        return result

    def chat_json(self, system: str, user: str, schema: dict[str, Any]) -> dict[str, Any]:
        """A chat answer constrained to a JSON schema (the judge's verdict), parsed."""
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "seed": self.seed,
            "max_tokens": 64,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": schema},
            },
        }
        try:
            answer = self._client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise EndpointError(f"{self.base_url}: {exc}") from None
        if answer.status_code != 200:
            raise EndpointError(
                f"judge /chat/completions answered {answer.status_code}: {answer.text[:300]}"
            )
        content = answer.json()["choices"][0]["message"]["content"]
        try:
            verdict: dict[str, Any] = json.loads(content)
        except ValueError:
            raise EndpointError(f"the judge's answer is not JSON: {content[:200]!r}") from None
        return verdict

    def wait_ready(self, timeout: float, interval: float = 2.0) -> None:
        """Wait until the endpoint answers at all (any HTTP status but 502-504): a model
        that was just rolled out can be Ready a moment before its Service routes to it,
        and a refused connection then is a dependency not ready yet, not a failed
        evaluation. EndpointError after `timeout` seconds."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self._client.get("/models", timeout=10)
                if answer.status_code not in (502, 503, 504):
                    return
                why = f"answered {answer.status_code}"
            except httpx.HTTPError as exc:
                why = str(exc) or type(exc).__name__
            if time.monotonic() >= deadline:
                raise EndpointError(
                    f"{self.base_url}/models did not answer within {timeout:.0f} s ({why})"
                )
            time.sleep(interval)

    def _first_model(self) -> str:
        try:
            answer = self._client.get("/models")
            answer.raise_for_status()
            return str(answer.json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise EndpointError(f"{self._client.base_url}/models: {exc}") from None

    def complete(
        self, prompt: str, max_tokens: int, temperature: float, top_p: float, stop: list[str]
    ) -> str:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": self.seed,
        }
        if stop:
            body["stop"] = stop
        return str(self._post(body)["choices"][0]["text"])

    def loglikelihood(self, context: str, continuation: str) -> float:
        """log P(continuation | context): the prompt scored with echo + logprobs."""
        result = self._post(
            {"prompt": context + continuation, "max_tokens": 0, "echo": True, "logprobs": 0}
        )
        logprobs = result["choices"][0]["logprobs"]
        total = 0.0
        for offset, value in zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=True):
            if offset >= len(context) and value is not None:
                total += float(value)
        return total

    def stream(
        self, prompt: str, max_tokens: int, temperature: float, top_p: float, stop: list[str]
    ) -> Timing:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": self.seed,
        }
        if stop:
            body["stop"] = stop
        start = time.perf_counter()
        first: float | None = None
        text, tokens = "", 0
        try:
            with self._client.stream("POST", "/completions", json=body) as answer:
                answer.raise_for_status()
                for line in answer.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("choices") and chunk["choices"][0].get("text"):
                        first = first or time.perf_counter()
                        text += chunk["choices"][0]["text"]
                    if chunk.get("usage"):
                        tokens = int(chunk["usage"]["completion_tokens"])
        except httpx.HTTPError as exc:
            raise EndpointError(f"streaming /completions: {exc}") from None
        end = time.perf_counter()
        first = first or end
        rate = tokens / (end - first) if end > first and tokens > 1 else 0.0
        return Timing(text, (first - start) * 1000, rate)
