"""1,000 ModelDeployments created at once: time until every one has its children and a
status written, and the operator's peak RSS (issue #4).

Against kmock's Kubernetes emulator by default (in this process), or against the cluster
in KUBECONFIG with --cluster. Targets on a real API server: <= 60 s and <= 256 MB.
The emulator is one Python event loop serving every request, so its numbers measure
the emulator as much as the operator; they are printed for trend, not for the target.

    python bench/operator.py [--count 1000] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the emulator setup is shared with the operator tests
from tests.emulator import declare, write_kubeconfig  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def manifest(i: int, namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "modeldeployment.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": f"bench-{i:04d}", "namespace": namespace}
    return doc


async def run(
    url: str,
    headers: dict[str, str],
    kubeconfig: Path,
    count: int,
    namespace: str,
    verify: bool | str = True,
) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "FREEHOLD_OPERATOR_RESYNC_SECONDS": "3600",
        "FREEHOLD_OPERATOR_NAMESPACES": f'["{namespace}"]',
        "FREEHOLD_OPERATOR_LIVENESS_PORT": "18911",
        "FREEHOLD_LOG_LEVEL": "WARNING",
    }
    log = open(os.environ.get("BENCH_OPERATOR_LOG", os.devnull), "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "freehold", "operator"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    md_path = f"/apis/freehold.dev/v1alpha1/namespaces/{namespace}/modeldeployments"
    try:
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=120, verify=verify
        ) as client:
            await asyncio.sleep(3)  # the operator connects and starts watching
            idle_cpu = cpu_seconds(proc.pid)  # start-up: imports, login, first listing
            start = time.perf_counter()
            gate = asyncio.Semaphore(64)

            async def create(i: int) -> None:
                async with gate:
                    resp = await client.post(md_path, json=manifest(i, namespace))
                    resp.raise_for_status()

            await asyncio.gather(*(create(i) for i in range(count)))
            created = time.perf_counter() - start
            done = 0
            while time.perf_counter() - start < 900:
                items = (await client.get(md_path)).json().get("items", [])
                done = sum(1 for md in items if (md.get("status") or {}).get("backend"))
                deployments = (
                    (await client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments"))
                    .json()
                    .get("items", [])
                )
                if done >= count and len(deployments) >= count:
                    break
                await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - start
            rss = peak_rss_mb(proc.pid)
            cpu = cpu_seconds(proc.pid) - idle_cpu
        print(
            f"{count} ModelDeployments created in {created:.1f} s; children and status "
            f"for {done} of them after {elapsed:.1f} s "
            f"({done / elapsed:.1f}/s); operator peak RSS {rss:.0f} MB"
        )
        print(
            f"operator CPU after start-up: {cpu:.1f} s, {1000 * cpu / max(done, 1):.0f} ms per "
            "ModelDeployment (what a faster API server cannot take away)"
        )
        print(
            f"targets on a real API server: <= 60 s ({elapsed:.1f} s here), "
            f"<= 256 MB ({rss:.0f} MB here)"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def on_emulator(count: int) -> None:
    import kmock

    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        declare(emulator)
        url = str(emulator.url).rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", url)
            print(f"against kmock's emulator at {url}")
            await run(url, {}, kubeconfig, count, "bench")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help="default: 1000 on a cluster, 50 on the emulator (its cost grows "
        "with the square of the requests it has recorded)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="use the cluster in KUBECONFIG (needs the CRDs installed)",
    )
    opts = parser.parse_args()
    if opts.cluster:
        from kubernetes import client, config

        config.load_kube_config()
        cfg = client.Configuration.get_default_copy()
        headers = {"Authorization": cfg.api_key.get("authorization", "")} if cfg.api_key else {}
        namespace = f"freehold-bench-{int(time.time())}"
        subprocess.run(["kubectl", "create", "namespace", namespace], check=True)
        try:
            asyncio.run(
                run(
                    cfg.host,
                    headers,
                    Path(os.environ["KUBECONFIG"]),
                    opts.count or 1000,
                    namespace,
                    verify=cfg.ssl_ca_cert or True,
                )
            )
        finally:
            subprocess.run(
                ["kubectl", "delete", "namespace", namespace, "--wait=false"], check=False
            )
    else:
        asyncio.run(on_emulator(opts.count or 50))


if __name__ == "__main__":
    main()
