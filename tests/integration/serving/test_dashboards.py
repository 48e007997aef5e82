"""Every panel of the chart's serving dashboard returns data from a real Prometheus
(Debian's `prometheus` package; scripts/test installs it) scraping the real models after
real traffic: no panel is empty or fails to evaluate. (Issue 13: the operator's and the other
dashboards are not written yet.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.serving.conftest import SMOL, Stack, free_port
from tests.paths import CHART

pytestmark = pytest.mark.slow
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise AssertionError("prometheus is needed: apt-get install prometheus (scripts/test does)")
    folder = tmp_path_factory.mktemp("prometheus")
    host = stack.root.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": f"freehold-{name}",
                "metrics_path": path,
                "static_configs": [{"targets": [host]}],
            }
            for name, path in (("gemma", "/metrics"), ("smol", "/smol/metrics"))
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(30)


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


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard.get("panels") or []:
        for target in panel.get("targets") or []:
            out.append((panel.get("title", "?"), target["expr"]))
    return out


def evaluate(url: str, expr: str) -> list[Any]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[Any] = answer["data"]["result"]
    return result


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_returns_data(stack: Stack, prometheus: str, path: Path) -> None:
    traffic(stack)
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    # Template variables: their own query must find values; panels then use "all".
    for variable in variables.values():
        query = variable["query"]
        assert query.startswith("label_values(")
        metric, label = query.removeprefix("label_values(").removesuffix(")").split(", ")
        deadline = time.monotonic() + 30
        values: list[Any] = []
        while time.monotonic() < deadline and not {"gemma-3-270m", SMOL} <= set(values):
            found = httpx.get(
                f"{prometheus}/api/v1/label/{label}/values", params={"match[]": metric}
            ).json()
            values = found["data"]
            time.sleep(1)
        targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
        assert {"gemma-3-270m", SMOL} <= set(values), (
            values,
            [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets],
        )
    empty = []
    for title, raw in queries(dashboard):
        expr = raw
        for name in variables:
            expr = expr.replace(f"${name}", ".*")
        deadline = time.monotonic() + 30
        result: list[Any] = []
        while time.monotonic() < deadline:
            result = evaluate(prometheus, expr)
            if result:
                break
            time.sleep(1)
        if not result:
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
