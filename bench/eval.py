"""Freehold's evaluation runner vs. lm-evaluation-harness, measured in one run.

The same generate_until task (bench/tasks/arithmetic.yaml, lm-evaluation-harness's own
format, 120 local items), the same endpoint (`freehold up` serving SmolLM2-135M-Instruct,
four sequences decoded together, started here unless --endpoint is given), the same
concurrency, greedy decoding. Both run
as their users run them, one command each, in alternating rounds (peer, Freehold, ...):
`lm_eval run --model local-completions ...` and `freehold eval run -f ...` with the task
as a suite of `dataset.format: lm-eval`. Reported: per item, whether the generated text
and the exact_match score are identical; the scores; the median wall time of each and the
ratio, and the time each spends before its first request (imports, dataset loading).

Target (issue #12): scores identical to the item; our wall time at most half of theirs.

    python bench/eval.py [--rounds 3] [--limit N] [--endpoint URL] [--out FILE]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "bench" / "tasks"  # the task's folder; --items N writes a larger one
TASK_FILE = "arithmetic.yaml"
DATA_FILE = "arithmetic.jsonl"
MODEL = "smollm2-135m-instruct"
CONCURRENCY = 4
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_server(parallel: int = CONCURRENCY) -> tuple[subprocess.Popen[bytes], str]:
    """`freehold up` with its built-in model, by default decoding as many sequences
    together as the clients send at once (spec.engine.llamacpp.parallel)."""
    from freehold.local.up import DEFAULT_MANIFEST

    port = free_port()
    data = tempfile.mkdtemp(prefix="fh-bench-eval-")
    spec = DEFAULT_MANIFEST["spec"]
    model = {**DEFAULT_MANIFEST, "spec": {**spec, "engine": {
        **spec["engine"], "llamacpp": {"parallel": parallel}}}}  # fmt: skip
    manifest = Path(data) / "model.yaml"
    manifest.write_text(yaml.safe_dump(model))
    proc = subprocess.Popen(
        [sys.executable, "-m", "freehold", "up", "--port", str(port), "-f", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "FREEHOLD_DATA_DIR": data},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"freehold up exited with {proc.returncode}")
        try:
            answer = httpx.post(
                f"{base}/v1/completions",
                json={"model": MODEL, "prompt": "Hello", "max_tokens": 1},
                timeout=30,
            )
            if answer.status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("freehold up did not serve within 300 s")


def task_with(items: int, folder: Path) -> Path:
    """The arithmetic task with `items` questions (the packaged 120 first, then more of the
    same kind, fixed by a seed), in a folder of its own."""
    import random

    rows = (TASKS / DATA_FILE).read_text().splitlines()[:items]
    pick = random.Random(1234)
    while len(rows) < items:
        a, b = pick.randint(10, 49), pick.randint(10, 49)
        plus = pick.random() < 0.5
        a, b = (a, b) if plus or a >= b else (b, a)
        question = f"What is {a} {'+' if plus else '-'} {b}?"
        rows.append(json.dumps({"question": question, "answer": str(a + b if plus else a - b)}))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TASK_FILE).write_bytes((TASKS / TASK_FILE).read_bytes())
    (folder / DATA_FILE).write_text("\n".join(rows) + "\n")
    return folder


def manifest(base: str, limit: int | None, folder: Path, tasks: Path = TASKS) -> Path:
    suite: dict[str, Any] = {
        "name": "arithmetic",
        "task": "exact_match",
        "metric": "exact_match",
        "dataset": {
            "uri": (tasks / TASK_FILE).as_uri(),
            "sha256": sha256(tasks / TASK_FILE),
            "format": "lm-eval",
            "dataSha256": sha256(tasks / DATA_FILE),
        },
    }
    if limit:
        suite["limit"] = limit
    doc = {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": "bench-arithmetic", "namespace": "bench"},
        "spec": {"target": {"endpoint": base}, "suites": [suite], "concurrency": CONCURRENCY},
    }
    path = folder / "evaljob.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_ours(
    base: str, limit: int | None, folder: Path, tasks: Path = TASKS
) -> tuple[float, list[dict[str, Any]]]:
    out = folder / "freehold.json"
    written = manifest(base, limit, folder, tasks)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "eval", "run", "-f", str(written),
         "-o", str(out), "--data-root", str(tasks)],
        capture_output=True, text=True, check=False, env={**os.environ, **OFFLINE},
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"freehold eval run failed: {done.stderr[-2000:]}")
    items = json.loads(out.read_text())["suites"][0]["items"]
    return wall, [
        {"index": i["index"], "output": i["output"], "score": i["scores"]["exact_match"]}
        for i in items
    ]


def run_theirs(
    base: str, limit: int | None, folder: Path, tasks: Path = TASKS
) -> tuple[float, list[dict[str, Any]]]:
    out = folder / "lm-eval"
    args = (
        f"model={MODEL},base_url={base}/v1/completions,num_concurrent={CONCURRENCY},"
        "tokenizer_backend=None,tokenized_requests=False,max_retries=1"
    )
    cmd = [
        sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
        "--model_args", args, "--tasks", "freehold_arithmetic", "--include_path", str(tasks),
        "--log_samples", "--output_path", str(out),
    ]  # fmt: skip
    if limit:
        cmd += ["--limit", str(limit)]
    started = time.perf_counter()
    # lm-evaluation-harness resolves relative data files from its working directory.
    done = subprocess.run(
        cmd, cwd=tasks, capture_output=True, text=True, check=False, env={**os.environ, **OFFLINE}
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"lm_eval failed: {done.stderr[-3000:]}")
    samples = glob.glob(str(out / "**" / "samples_freehold_arithmetic_*.jsonl"), recursive=True)
    items = [json.loads(line) for line in Path(samples[0]).read_text().splitlines() if line]
    return wall, sorted(
        (
            {"index": s["doc_id"], "output": s["resps"][0][0], "score": float(s["exact_match"])}
            for s in items
        ),
        key=lambda s: s["index"],
    )


def first_request_seconds(command: Callable[[str], list[str]], cwd: Path) -> float:
    """Time from the command's start to its first request, measured with a listener
    that answers nothing (the process is then killed)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        cmd = command(f"http://127.0.0.1:{port}")
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **OFFLINE},
        )
        listener.settimeout(120)
        try:
            listener.accept()[0].close()
            return time.perf_counter() - started
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="items (default: all 120)")
    parser.add_argument(
        "--items", type=int, default=None, help="a larger task: the 120, then more (e.g. 1000)"
    )
    parser.add_argument("--endpoint", default=None, help="an endpoint already serving SmolLM2")
    parser.add_argument(
        "--parallel", type=int, default=CONCURRENCY, help="sequences the server decodes at once"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval.json")
    args = parser.parse_args()
    proc = None
    base = args.endpoint
    if base is None:
        proc, base = start_server(args.parallel)
    work = Path(tempfile.mkdtemp(prefix="fh-bench-eval-task-"))
    tasks = task_with(args.items, work) if args.items else TASKS
    try:
        ours_walls, theirs_walls = [], []
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                wall, theirs = run_theirs(base, args.limit, folder, tasks)
                theirs_walls.append(wall)
                wall, ours = run_ours(base, args.limit, folder, tasks)
                ours_walls.append(wall)
            print(
                f"round {n + 1}: lm-eval {theirs_walls[-1]:.1f} s, freehold {ours_walls[-1]:.1f} s"
            )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            ours_start = first_request_seconds(
                lambda url: [sys.executable, "-m", "freehold", "eval", "run", "-f",
                             str(manifest(url, args.limit, folder, tasks)), "--model", MODEL,
                             "-o", str(folder / "x.json"), "--data-root", str(tasks)],
                tasks,
            )  # fmt: skip
            theirs_start = first_request_seconds(
                lambda url: [sys.executable, "-m", "lm_eval", "run", "--model",
                             "local-completions", "--model_args",
                             f"model={MODEL},base_url={url}/v1/completions,num_concurrent=1,"
                             "tokenizer_backend=None,tokenized_requests=False,max_retries=0",
                             "--tasks", "freehold_arithmetic", "--include_path", str(tasks),
                             "--output_path", str(folder / "o")],
                tasks,
            )  # fmt: skip
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        if proc is not None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    same_output = sum(a["output"] == b["output"] for a, b in zip(ours, theirs, strict=True))
    same_score = sum(a["score"] == b["score"] for a, b in zip(ours, theirs, strict=True))
    result = {
        "task": "bench/tasks/arithmetic.yaml (generate_until, exact_match)",
        "model": MODEL,
        "items": len(ours),
        "concurrency": CONCURRENCY,
        "rounds": args.rounds,
        "identical_outputs": same_output,
        "identical_scores": same_score,
        "score_freehold": statistics.fmean(a["score"] for a in ours),
        "score_lm_eval": statistics.fmean(b["score"] for b in theirs),
        "wall_s_freehold": statistics.median(ours_walls),
        "wall_s_lm_eval": statistics.median(theirs_walls),
        "to_first_request_s_freehold": ours_start,
        "to_first_request_s_lm_eval": theirs_start,
    }
    result["wall_ratio"] = result["wall_s_freehold"] / result["wall_s_lm_eval"]
    print(json.dumps(result, indent=2))
    print(
        f"items identical: outputs {same_output}/{len(ours)}, scores {same_score}/{len(ours)}; "
        f"score {result['score_freehold']:.3f} vs {result['score_lm_eval']:.3f}; wall "
        f"{result['wall_s_freehold']:.1f} s vs {result['wall_s_lm_eval']:.1f} s = "
        f"{result['wall_ratio']:.2f}x (target <= 0.5x)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
