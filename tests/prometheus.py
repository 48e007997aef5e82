"""A real Prometheus (Debian's package) for the tests, and a dashboard's panels evaluated
through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.paths import CHART

DASHBOARDS = CHART / "dashboards"


@contextmanager
def prometheus(folder: Path, port: int, jobs: dict[str, tuple[str, str]]) -> Iterator[str]:
    """Prometheus scraping every second; jobs: name -> (host:port, metrics path)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise AssertionError("prometheus is needed: apt-get install prometheus (scripts/test does)")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": name, "metrics_path": path, "static_configs": [{"targets": [target]}]}
            for name, (target, path) in jobs.items()
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [binary, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def label_values(url: str, metric: str, label: str) -> set[str]:
    found = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": metric}).json()
    return set(found["data"])


def empty_panels(url: str, name: str, timeout: float = 30) -> list[str]:
    """The panels of dashboards/NAME whose query errs or returns nothing ("All" for each
    template variable, whose own query must find values)."""
    dashboard: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    empty = []
    variables = dashboard.get("templating", {}).get("list", [])
    for variable in variables:
        metric, label = (
            variable["query"].removeprefix("label_values(").removesuffix(")").split(", ")
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not label_values(url, metric, label):
            time.sleep(1)
        if not label_values(url, metric, label):
            empty.append(f"variable {variable['name']}: {variable['query']}")
    for panel in dashboard.get("panels") or []:
        for target in panel.get("targets") or []:
            expr = target["expr"]
            for variable in variables:
                expr = expr.replace(f"${variable['name']}", ".*")
            deadline = time.monotonic() + timeout
            result: list[Any] = []
            while time.monotonic() < deadline:
                answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30)
                body = answer.json()
                if body.get("status") != "success":
                    empty.append(f"{panel.get('title')}: {expr}: {body.get('error')}")
                    break
                result = body["data"]["result"]
                if result:
                    break
                time.sleep(1)
            if not result:
                empty.append(f"{panel.get('title')}: {expr}")
    return empty
