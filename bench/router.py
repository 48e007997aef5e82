"""The ModelRouter in front of one model vs. the same model called directly, in one run.

`freehold up` serves SmolLM2-135M-Instruct at /models/smollm2-135m/v1 and a router with that
one target at /v1 (same Ray Serve cluster, same HAProxy). Requests alternate between the
two paths (direct, routed, direct, ...) so both see the same machine state. Measured:
latency p50 of whole (non-streaming) completions and of the first streamed token, one
request at a time; throughput with 4 in flight. Reported: what the router adds and the
throughput ratio.

Targets (issue #15): added latency p50 <= 2 ms; throughput >= 0.97x.

    python bench/router.py [--requests 60] [--max-tokens 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ROUTER = """apiVersion: freehold.dev/v1alpha1
kind: ModelRouter
metadata: {name: bench, namespace: bench}
spec:
  servedName: routed
  targets:
    - name: smollm2
      modelDeploymentRef: {name: smollm2-135m}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    router = folder / "router.yaml"
    router.write_text(ROUTER)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "freehold", "up", "-f", str(ROOT / "examples" / "smollm2.yaml"),
         "-f", str(router), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "FREEHOLD_DATA_DIR": str(folder / "data")}, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("freehold up did not serve within 300 s")


def body(model: str, max_tokens: int, stream: bool) -> dict[str, object]:
    return {
        "model": model,
        "prompt": "The capital of France is",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def once(client: httpx.Client, url: str, model: str, max_tokens: int, stream: bool) -> float:
    started = time.perf_counter()
    if not stream:
        answer = client.post(url, json=body(model, max_tokens, False))
        answer.raise_for_status()
        return time.perf_counter() - started
    first: float | None = None
    with client.stream("POST", url, json=body(model, max_tokens, True)) as answer:
        for line in answer.iter_lines():
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no token streamed")
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "router.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start(Path(tmp))
        try:
            paths = {
                "direct": (f"{base}/models/smollm2-135m/v1/completions", "smollm2-135m-instruct"),
                "routed": (f"{base}/v1/completions", "routed"),
            }
            client = httpx.Client(timeout=120)
            for url, model in paths.values():  # warm both paths
                for _ in range(3):
                    once(client, url, model, args.max_tokens, False)
            samples: dict[str, dict[str, list[float]]] = {
                name: {"whole": [], "first_token": []} for name in paths
            }
            for _ in range(args.requests):
                for name, (url, model) in paths.items():
                    samples[name]["whole"].append(once(client, url, model, args.max_tokens, False))
                    samples[name]["first_token"].append(
                        once(client, url, model, args.max_tokens, True)
                    )
            throughput: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(3):  # alternating rounds of 4 in flight
                for name, (url, model) in paths.items():
                    count = args.requests
                    # One keep-alive client per worker, as a real caller would hold.
                    local = threading.local()

                    def call(
                        _: int, u: str = url, m: str = model, mine: threading.local = local
                    ) -> float:
                        if not hasattr(mine, "client"):
                            mine.client = httpx.Client(timeout=120)
                        return once(mine.client, u, m, args.max_tokens, False)

                    with ThreadPoolExecutor(4) as pool:
                        started = time.perf_counter()
                        list(pool.map(call, range(count)))
                        throughput[name].append(count / (time.perf_counter() - started))
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def p50(name: str, kind: str) -> float:
        return statistics.median(samples[name][kind]) * 1000

    result = {
        "model": "smollm2-135m-instruct",
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "p50_ms_direct": p50("direct", "whole"),
        "p50_ms_routed": p50("routed", "whole"),
        "ttft_p50_ms_direct": p50("direct", "first_token"),
        "ttft_p50_ms_routed": p50("routed", "first_token"),
        "throughput_rps_direct": statistics.median(throughput["direct"]),
        "throughput_rps_routed": statistics.median(throughput["routed"]),
    }
    result["added_p50_ms"] = result["p50_ms_routed"] - result["p50_ms_direct"]
    result["added_ttft_p50_ms"] = result["ttft_p50_ms_routed"] - result["ttft_p50_ms_direct"]
    result["throughput_ratio"] = result["throughput_rps_routed"] / result["throughput_rps_direct"]
    print(json.dumps(result, indent=2))
    print(
        f"router adds {result['added_p50_ms']:+.2f} ms p50 (whole), "
        f"{result['added_ttft_p50_ms']:+.2f} ms p50 (first token); throughput "
        f"{result['throughput_ratio']:.3f}x (targets: <= 2 ms, >= 0.97x)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
