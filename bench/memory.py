"""Freehold's memory store vs. mem0 (local, faiss), measured in one run on the same corpus.

The corpus is synthetic and deterministic: N records over S subjects, 384-dimensional unit
vectors (all-MiniLM-L6-v2's size) drawn around shared topic centres with per-subject and
per-record noise, and short texts. Both systems get the same vectors, so the embedding
model is the same by construction and its cost is excluded from search timing (as the
target asks). Each system runs in its own process (peak RSS is per system).

- search p50/p99 (ms) and throughput (queries/s, one thread), subject-filtered top-10;
- recall@10 against exact cosine search within the subject;
- ingest: records/s in batches, and the latency of a single acknowledged add;
- peak RSS.

mem0 is driven through `Memory` (its public class) with `infer=False` and no LLM call; its
`embedding_model` answers from the precomputed vectors. Bulk ingestion into mem0 goes
through its own vector store's `insert` in batches, because `Memory.add` rewrites the whole
faiss index and JSON docstore on every add (~1 s per add at 100k records); its single-add
latency is measured with `Memory.add` on the full store.

Targets (issue #11): p50 <= 5 ms, recall@10 >= 0.95, search throughput >= 2x mem0's.

    python bench/memory.py [--records 100000] [--subjects 100] [--queries 500]

The peer is installed by the bench extra (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
TOPICS = 64


def corpus(records: int, subjects: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors [N, DIM] float32 unit, subject index [N], texts)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((TOPICS, DIM)).astype(np.float32)
    bias = rng.standard_normal((subjects, DIM)).astype(np.float32) * 0.5
    subject = np.arange(records) % subjects
    topic = rng.integers(0, TOPICS, records)
    noise = rng.standard_normal((records, DIM)).astype(np.float32) * 0.8
    vectors = topics[topic] + bias[subject] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [
        f"user {s} note {i} on topic {t}"
        for i, (s, t) in enumerate(zip(subject, topic, strict=True))
    ]
    return vectors.astype(np.float32), subject, texts


def queries(count: int, subjects: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(7).standard_normal((TOPICS, DIM)).astype(np.float32)
    topic = rng.integers(0, TOPICS, count)
    vectors = base[topic] + rng.standard_normal((count, DIM)).astype(np.float32) * 0.8
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), rng.integers(0, subjects, count)


def truth(
    vectors: np.ndarray, subject: np.ndarray, q: np.ndarray, qs: np.ndarray
) -> list[set[int]]:
    out = []
    for vector, s in zip(q, qs, strict=True):
        rows = np.flatnonzero(subject == s)
        scores = vectors[rows] @ vector
        out.append({int(rows[i]) for i in np.argsort(-scores)[:10]})
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(
    latencies: list[float], hits: list[set[int]], expected: list[set[int]]
) -> dict[str, float]:
    recall = statistics.fmean(len(h & e) / len(e) for h, e in zip(hits, expected, strict=True))
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "qps": len(latencies) / sum(latencies),
        "recall10": recall,
    }


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT / "serving"), str(ROOT / "operator")]
    from freehold_serving.memory import crypto
    from freehold_serving.memory.records import RecordFields, SearchRequest
    from freehold_serving.memory.store import Store

    vectors, subject, texts = corpus(args.records, args.subjects)
    q, qs = queries(args.queries, args.subjects)
    expected = truth(vectors, subject, q, qs)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(
            Path(tmp) / "memory.db",
            crypto.FileKeyWrapper(Path(tmp) / "keys" / "store.key"),
            embedding_model="synthetic-384",
            dimension=DIM,
        )
        ids: dict[str, int] = {}
        started = time.perf_counter()
        for start in range(0, args.records, 500):
            end = min(start + 500, args.records)
            items = [(f"u{subject[i]}", RecordFields(text=texts[i])) for i in range(start, end)]
            added = store.add("bench", items, [vectors[i].tolist() for i in range(start, end)])
            ids.update({r.id: start + k for k, r in enumerate(added)})
        ingest = args.records / (time.perf_counter() - started)
        # Indexes are built per subject on first use: build them all, and time it.
        started = time.perf_counter()
        for s in range(args.subjects):
            store.search(
                "bench", SearchRequest(subject=f"u{s}", mode="vector", top_k=1), q[0].tolist()
            )
        build = time.perf_counter() - started
        latencies, hits = [], []
        for vector, s in zip(q, qs, strict=True):
            request = SearchRequest(subject=f"u{s}", mode="vector", top_k=10)
            listed = vector.tolist()
            t = time.perf_counter()
            found = store.search("bench", request, listed)
            latencies.append(time.perf_counter() - t)
            hits.append({ids[r.id] for r in found})
        hybrid = []
        for vector, s in zip(q[:100], qs[:100], strict=True):
            request = SearchRequest(subject=f"u{s}", query="note on topic 3", top_k=10)
            listed = vector.tolist()
            t = time.perf_counter()
            store.search("bench", request, listed)
            hybrid.append(time.perf_counter() - t)
        single = []
        for i in range(50):
            t = time.perf_counter()
            store.add("bench", [("u0", RecordFields(text=f"one more {i}"))], [vectors[i].tolist()])
            single.append(time.perf_counter() - t)
        result = summary(latencies, hits, expected)
        result.update(
            ingest_per_s=ingest,
            index_build_s=build,
            hybrid_p50_ms=percentile(hybrid, 50) * 1000,
            single_add_p50_ms=percentile(single, 50) * 1000,
        )
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_mem0(args: argparse.Namespace) -> dict[str, Any]:
    def faiss(tmp: str) -> dict[str, Any]:
        return {
            "provider": "faiss",
            "config": {
                "collection_name": "bench",
                "path": f"{tmp}/faiss",
                "distance_strategy": "cosine",
                "embedding_model_dims": DIM,
            },
        }

    return mem0_run(args, faiss, str, int)


def mem0_run(
    args: argparse.Namespace,
    vector_store: Callable[[str], dict[str, Any]],
    id_of: Callable[[int], str],
    index_of: Callable[[str], int],
) -> dict[str, Any]:
    """mem0 on the corpus with `vector_store(tmp)` as its store; `id_of`/`index_of` map a
    record's index to the id mem0 keeps and back (bench/memory_postgres.py uses it too)."""
    os.environ["MEM0_TELEMETRY"] = "False"
    from mem0 import Memory

    vectors, subject, texts = corpus(args.records, args.subjects)
    q, qs = queries(args.queries, args.subjects)
    expected = truth(vectors, subject, q, qs)
    lookup: dict[str, list[float]] = {}

    class Precomputed:
        """mem0's embedder interface, answering from the corpus (embedding excluded)."""

        def embed(self, text: str, memory_action: str | None = None) -> list[float]:
            return lookup[text]

    with tempfile.TemporaryDirectory() as tmp:
        memory = Memory.from_config(
            {
                "vector_store": vector_store(tmp),
                # Required by mem0's config even with infer=False; never called.
                "llm": {"provider": "openai", "config": {"api_key": "unused", "model": "unused"}},
                "embedder": {
                    "provider": "openai",
                    "config": {"api_key": "unused", "embedding_dims": DIM},
                },
                "history_db_path": f"{tmp}/history.db",
            }
        )
        memory.embedding_model = Precomputed()
        started = time.perf_counter()
        now = "2026-01-01T00:00:00+00:00"
        for start in range(0, args.records, 1000):
            end = min(start + 1000, args.records)
            memory.vector_store.insert(
                vectors=[vectors[i].tolist() for i in range(start, end)],
                payloads=[
                    {
                        "data": texts[i],
                        "user_id": f"u{subject[i]}",
                        "hash": str(i),
                        "created_at": now,
                    }
                    for i in range(start, end)
                ],
                ids=[id_of(i) for i in range(start, end)],
            )
        ingest = args.records / (time.perf_counter() - started)
        latencies, hits = [], []
        for n, (vector, s) in enumerate(zip(q, qs, strict=True)):
            text = f"query {n}"
            lookup[text] = vector.tolist()
            t = time.perf_counter()
            found = memory.search(text, filters={"user_id": f"u{s}"}, top_k=10, threshold=0.0)
            latencies.append(time.perf_counter() - t)
            hits.append({index_of(r["id"]) for r in found["results"]})
        single = []
        for i in range(getattr(args, "single_adds", 20)):
            text = f"one more {i}"
            lookup[text] = vectors[i].tolist()
            t = time.perf_counter()
            memory.add(text, user_id="u0", infer=False)
            single.append(time.perf_counter() - t)
        result = summary(latencies, hits, expected)
        result.update(
            ingest_per_s=ingest,
            single_add_p50_ms=percentile(single, 50) * 1000 if single else float("nan"),
        )
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def child(system: str, args: argparse.Namespace) -> dict[str, Any]:
    python = sys.executable
    command = [
        python,
        __file__,
        "--system",
        system,
        "--records",
        str(args.records),
        "--subjects",
        str(args.subjects),
        "--queries",
        str(args.queries),
        "--single-adds",
        str(args.single_adds),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{system} failed")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--single-adds", type=int, default=20)
    parser.add_argument("--system", choices=["ours", "mem0"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.system == "ours":
        print(json.dumps(run_ours(args)))
        return
    if args.system == "mem0":
        print(json.dumps(run_mem0(args)))
        return
    results = {"freehold": child("ours", args), "mem0": child("mem0", args)}
    ours, peer = results["freehold"], results["mem0"]
    print(f"{args.records} records, {args.subjects} subjects, {args.queries} queries, dim {DIM}")
    print(f"{'':22}{'freehold':>12}{'mem0':>12}")
    for key in (
        "p50_ms",
        "p99_ms",
        "qps",
        "recall10",
        "ingest_per_s",
        "single_add_p50_ms",
        "rss_mb",
    ):
        print(f"{key:22}{ours[key]:12.3f}{peer[key]:12.3f}")
    print(f"{'hybrid_p50_ms':22}{ours['hybrid_p50_ms']:12.3f}")
    print(f"{'index_build_s':22}{ours['index_build_s']:12.3f}")
    ratio = ours["qps"] / peer["qps"]
    print(f"search throughput: {ratio:.1f}x mem0 (target >= 2x)")
    print(f"search p50: {ours['p50_ms']:.2f} ms (target <= 5 ms)")
    print(f"recall@10: {ours['recall10']:.3f} (target >= 0.95)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, **results}, indent=2)
        )


if __name__ == "__main__":
    main()
