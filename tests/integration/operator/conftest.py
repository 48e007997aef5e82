"""The real operator (`freehold operator`, kopf) against kmock's Kubernetes emulator.

The emulator is the test double for the API server, the one boundary that cannot run
here. It is simplistic (plain merges, no garbage collection, no CEL): tests assert what
the operator *sends*; cascade deletion and admission run in tests/e2e on a real cluster.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
import yaml

from tests.emulator import declare, declare_kuberay, write_kubeconfig
from tests.paths import EXAMPLES

NS = "freehold-demo"
MD_PATH = f"/apis/freehold.dev/v1alpha1/namespaces/{NS}/modeldeployments"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def example(name: str = "gemma-270m") -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    manifest["metadata"]["name"] = name
    return copy.deepcopy(manifest)


@dataclass
class Cluster:
    emulator: kmock.KubernetesEmulator
    url: str
    kubeconfig: Path

    def declare_kuberay(self) -> None:
        declare_kuberay(self.emulator)

    async def request(
        self, method: str, path: str, body: Any = None, merge: bool = False
    ) -> httpx.Response:
        headers = {"Content-Type": "application/merge-patch+json"} if merge else {}
        async with httpx.AsyncClient(base_url=self.url) as client:
            return await client.request(method, path, json=body, headers=headers)

    async def get(self, path: str) -> dict[str, Any] | None:
        resp = await self.request("GET", path)
        return resp.json() if resp.status_code == 200 else None

    async def create_md(self, manifest: dict[str, Any]) -> None:
        resp = await self.request("POST", MD_PATH, manifest)
        assert resp.status_code in (200, 201), resp.text

    async def md(self, name: str = "gemma-270m") -> dict[str, Any]:
        found = await self.get(f"{MD_PATH}/{name}")
        assert found is not None
        return found


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll an async or sync check until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        declare(emulator)
        url = str(emulator.url).rstrip("/")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
        yield Cluster(emulator, url, kubeconfig)


@pytest.fixture
async def operator(cluster: Cluster, tmp_path: Path) -> AsyncIterator[subprocess.Popen[str]]:
    async for proc in run_operator(cluster, tmp_path):
        yield proc


async def run_operator(
    cluster: Cluster, tmp_path: Path, **extra_env: str
) -> AsyncIterator[subprocess.Popen[str]]:
    log = (tmp_path / "operator.log").open("w")
    env = {
        **os.environ,
        **extra_env,
        "KUBECONFIG": str(cluster.kubeconfig),
        "FREEHOLD_OPERATOR_RESYNC_SECONDS": "1",
        "FREEHOLD_OPERATOR_DISCOVERY_SECONDS": "1",
        "FREEHOLD_OPERATOR_LIVENESS_PORT": str(free_port()),
        "FREEHOLD_OPERATOR_SERVING_IMAGE": "registry.local/freehold-serving:test",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "freehold", "operator"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        output = (tmp_path / "operator.log").read_text()
        # Tracebacks quoted in the emulator's error bodies are its own (no resourceVersion,
        # colliding event names); none may come from the operator's code.
        ours = [line for line in output.splitlines() if 'File "' in line and "/freehold/" in line]
        assert not ours, output[-4000:]
