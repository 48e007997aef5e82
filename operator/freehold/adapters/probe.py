"""Reads a workload's own status endpoint (JSON) for its resource's status.

Short timeout, no retries, and any failure is "no answer": a status read must never hold
up a reconcile pass or fail it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx

log = logging.getLogger(__name__)


class HttpProbe:
    def __init__(self, timeout: float = 2.0) -> None:
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)

    def __call__(self, url: str) -> Mapping[str, Any] | None:
        try:
            answer = self._client.get(url)
            answer.raise_for_status()
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("status probe %s: %s", url, exc)
            return None
        return body if isinstance(body, dict) else None
