"""An HTTP fuzzer over the serving API (issue 16): schemathesis generates requests from
/openapi.json, valid and not, against the real Ray Serve app and model. No 5xx, no hang.

Generation lengths are capped (a fuzzed max_tokens of 1,000 would only measure the
engine's speed); every other field is as generated."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.serving.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.security]


def _cap(body: Any) -> None:
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and body[key] > 4:
                body[key] = 4
        if isinstance(body.get("n"), int) and body["n"] > 2:
            body["n"] = 2


def test_no_server_errors_and_no_hangs(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.root}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions"}
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            _cap(case.body)
            response = case.call(base_url=stack.root, timeout=60)
            statuses.append(response.status_code)
            assert response.status_code < 500, (
                case.method,
                case.path,
                case.body,
                response.text[:500],
            )

        run()
    # It really ran: many requests, some served and some refused.
    assert len(statuses) >= 60 and 200 in statuses and any(400 <= c < 500 for c in statuses)
