"""The ModelRouter in front of one model vs. the same model called directly, in one run.

`freehold up` serves SmolLM2-135M-Instruct at /models/smollm2-135m/v1 and a router with that
one target at /v1 (same Ray Serve cluster, same HAProxy). A bare relay
(bench/relay_floor.py: no checks, no records) is deployed beside them as the floor of any
Ray Serve HTTP hop on this machine. Requests alternate between the three paths (direct,
routed, floor, direct, ...) so all see the same machine state. Measured: latency p50 of
whole (non-streaming) completions and of the first streamed token, one request at a time;
throughput with 4 in flight. Reported: what the router adds, what the bare relay adds,
and the throughput ratio.

Targets (issue #15, #28): added latency p50 <= 1 ms in one Ray cluster; throughput >=
0.97x.

Budget holdout (issue #28), in a second `freehold up` with API keys and budgets: 50
concurrent requests of two tenants (two keys each) mixing plain requests, requests without
`max_tokens`, streams and streams dropped after their first token. Reported per tenant:
what the router charged against its budget, and, independently, the tokens the model's own
access records show it served through the router (the model sees only the router's key).
The stated bound is zero: no tenant may exceed its budget.

    python bench/router.py [--requests 60] [--max-tokens 8] [--skip-holdout] [--out FILE]
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


BUDGETS = {"acme": 1500, "globex": 900}
HOLDOUT_KEYS = {"fh-bench-acme-1": "acme", "fh-bench-acme-2": "acme",
                "fh-bench-globex-1": "globex", "fh-bench-globex-2": "globex"}  # fmt: skip


def start(
    folder: Path, manifest: str = ROUTER, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    router = folder / "router.yaml"
    router.write_text(manifest)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "freehold", "up", "-f", str(ROOT / "examples" / "smollm2.yaml"),
         "-f", str(router), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "FREEHOLD_DATA_DIR": str(folder / "data")}, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code in (200, 401):
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("freehold up did not serve within 300 s")


def deploy_floor(base: str, target: str) -> str:
    """The bare relay (bench/relay_floor.py) deployed into freehold up's Ray cluster."""
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relay_floor.py"), "--target", target,
         "--model", "smollm2-135m-instruct"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    url = f"{base}/relay-floor/v1/completions"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # HAProxy learns the new route after a reload
        try:
            if httpx.post(url, json=body("x", 1, False), timeout=30).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the bare relay was not served within 120 s")


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


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def holdout_request(base: str, n: int) -> str:
    """One of the mix: plain, no max_tokens, stream, dropped stream. Returns its outcome."""
    key = list(HOLDOUT_KEYS)[(n // 4) % len(HOLDOUT_KEYS)]  # every key sends every kind
    kind = ("plain", "open", "stream", "dropped")[n % 4]
    body: dict[str, object] = {
        "model": "routed",
        "messages": [{"role": "user", "content": f"Tell me a story about number {n}."}],
        "temperature": 0.8,
    }
    if kind != "open":
        body["max_tokens"] = 48
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{base}/v1/chat/completions"
    with httpx.Client(timeout=300) as client:
        if kind in ("plain", "open"):
            return f"{kind}:{client.post(url, json=body, headers=headers).status_code}"
        body["stream"] = True
        with client.stream("POST", url, json=body, headers=headers) as answer:
            if answer.status_code != 200:
                return f"{kind}:{answer.status_code}"
            for line in answer.iter_lines():
                if kind == "dropped" and line.startswith("data: {"):
                    return "dropped:200"  # the client leaves after its first token
        return "stream:200"


def model_tokens(data: Path) -> int:
    """Tokens the model's own access records show it served (through the router: the only
    caller that may reach it)."""
    total = 0
    for path in (data / "audit").rglob("*.jsonl"):
        if path.name.startswith("router-"):
            continue
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("type") == "inference.access":
                found = event["data"]
                total += int(found.get("inputTokens") or 0) + int(found.get("outputTokens") or 0)
    return total


def holdout() -> dict[str, object]:
    budgets = "".join(f"    - {{tenant: {t}, tokens: {n}}}\n" for t, n in BUDGETS.items())
    manifest = ROUTER + "  auth: {apiKeys: {path: bench/keys}}\n  budgets:\n" + budgets
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = folder / "keys"
        keys.write_text("".join(f"{k} {t}\n" for k, t in HOLDOUT_KEYS.items()))
        proc, base = start(folder, manifest, ("--api-keys-file", str(keys)))
        try:
            with ThreadPoolExecutor(50) as pool:
                outcomes = list(pool.map(lambda n: holdout_request(base, n), range(50)))
            time.sleep(15)  # dropped streams are read to their end in the background
            status = httpx.get(f"{base}/router/status", timeout=30).json()
            served = model_tokens(folder / "data")
        finally:
            stop(proc)
    charged = {b["tenant"]: b["committedTokens"] for b in status["budgets"]}
    over = {t: charged.get(t, 0) - BUDGETS[t] for t in BUDGETS}
    return {
        "holdout_requests": 50,
        "holdout_outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
        "holdout_budgets": BUDGETS,
        "holdout_charged": charged,
        "holdout_model_tokens": served,
        "holdout_worst_overspend_tokens": max(over.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--skip-holdout", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "router.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start(Path(tmp))
        try:
            direct = f"{base}/models/smollm2-135m/v1/completions"
            paths = {
                "direct": (direct, "smollm2-135m-instruct"),
                "routed": (f"{base}/v1/completions", "routed"),
                "floor": (deploy_floor(base, direct), "smollm2-135m-instruct"),
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
            stop(proc)

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
    result["p50_ms_floor"] = p50("floor", "whole")
    result["ttft_p50_ms_floor"] = p50("floor", "first_token")
    result["throughput_rps_floor"] = statistics.median(throughput["floor"])
    result["added_p50_ms"] = result["p50_ms_routed"] - result["p50_ms_direct"]
    result["floor_added_p50_ms"] = result["p50_ms_floor"] - result["p50_ms_direct"]
    result["floor_added_ttft_p50_ms"] = result["ttft_p50_ms_floor"] - result["ttft_p50_ms_direct"]
    result["added_ttft_p50_ms"] = result["ttft_p50_ms_routed"] - result["ttft_p50_ms_direct"]
    result["throughput_ratio"] = result["throughput_rps_routed"] / result["throughput_rps_direct"]
    if not args.skip_holdout:
        result.update(holdout())
    print(json.dumps(result, indent=2))
    print(
        f"router adds {result['added_p50_ms']:+.2f} ms p50 (whole), "
        f"{result['added_ttft_p50_ms']:+.2f} ms p50 (first token); throughput "
        f"{result['throughput_ratio']:.3f}x (targets: <= 1 ms, >= 0.97x)"
    )
    print(
        f"a bare relay in the same Ray cluster (the floor of any Ray Serve HTTP hop) adds "
        f"{result['floor_added_p50_ms']:+.2f} ms p50 (whole), "
        f"{result['floor_added_ttft_p50_ms']:+.2f} ms p50 (first token); the router's own "
        f"work: {result['added_p50_ms'] - result['floor_added_p50_ms']:+.2f} ms"
    )
    if not args.skip_holdout:
        print(
            f"budget holdout: charged {result['holdout_charged']} of {BUDGETS}, worst "
            f"overspend {result['holdout_worst_overspend_tokens']} tokens (bound 0); the "
            f"model served {result['holdout_model_tokens']} tokens in all"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
