"""Every panel of the chart's serving dashboard returns data from a real Prometheus
(Debian's `prometheus` package; scripts/test installs it) scraping the real models after
real traffic: no panel is empty or fails to evaluate. (The operator's dashboard is checked
the same way in tests/e2e/test_dashboards.py.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.serving.conftest import MEMORY_KEYS, SMOL, Stack
from tests.ports import free_port
from tests.prometheus import empty_panels, label_values, prometheus

pytestmark = pytest.mark.slow
SERVING_DASHBOARDS = ["genai-serving.json", "memory.json"]


def traffic(stack: Stack) -> None:
    """Completions, a stream, chat, and a failing request (a prompt longer than Gemma's
    1,024-token context), on both models."""
    for base, model in ((stack.base(), "gemma-3-270m"), (stack.base("smol"), SMOL)):
        for _ in range(3):
            httpx.post(
                f"{base}/completions",
                json={"model": model, "prompt": "Hello", "max_tokens": 8},
                timeout=120,
            ).raise_for_status()
        with httpx.stream(
            "POST",
            f"{base}/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Count to five."}],
                "max_tokens": 12,
                "stream": True,
            },
            timeout=120,
        ) as streamed:
            for _ in streamed.iter_lines():
                pass
    failed = httpx.post(
        f"{stack.base()}/completions",
        json={"model": "gemma-3-270m", "prompt": "word " * 3000, "max_tokens": 4},
        timeout=120,
    )
    assert failed.status_code == 400
    memory_traffic(stack)


def memory_traffic(stack: Stack) -> None:
    """A record added, a subject exported and erased: what the memory dashboard shows."""
    with httpx.Client(
        base_url=stack.memory,
        headers={"Authorization": f"Bearer {MEMORY_KEYS['acme']}"},
        timeout=120,
    ) as c:
        added = c.post(
            "/records",
            json={"records": [{"subject": "u-dash", "text": "Prefers tea over coffee."}]},
        )
        assert added.is_success, added.text
        assert c.post("/export", json={"subject": "u-dash"}).is_success
        assert c.post("/erase", json={"subject": "u-dash"}).is_success


@pytest.mark.parametrize("name", SERVING_DASHBOARDS)
def test_every_panel_returns_data(stack: Stack, tmp_path: Path, name: str) -> None:
    host = stack.root.removeprefix("http://")
    jobs = {
        "freehold-gemma": (host, "/metrics"),
        "freehold-smol": (host, "/smol/metrics"),
        "freehold-memory": (host, "/v1/memory/metrics"),
    }
    with prometheus(tmp_path, free_port(), jobs) as url:
        traffic(stack)
        empty = empty_panels(url, name)
        models = label_values(
            url, "gen_ai_server_request_duration_seconds_count", "gen_ai_request_model"
        )
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert {"gemma-3-270m", SMOL} <= models
