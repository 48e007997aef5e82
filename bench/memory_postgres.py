"""Freehold's memory store on PostgreSQL (two replicas) vs. mem0 on PostgreSQL/pgvector, in
one run, on one PostgreSQL, with the same records and vectors (bench/memory.py's corpus:
embedding excluded).

Ours runs on the machine's PostgreSQL (Debian's postgresql-15, started as the tests start it;
else PyPI `pgserver`'s); mem0 on `pgserver`'s PostgreSQL 16, which has the pgvector extension
its store needs. Each in a temporary directory, fsync and synchronous_commit on: an
acknowledged add is on disk.

- ours: one process ingests in batches of 500 (durable records/s); then `--replicas`
  processes, each a store replica on the same schema, build their indexes and answer
  queries at the same time: vector p50/p99, recall@10 against exact cosine search within
  the subject, hybrid p50, single-add latency, what the indexes hold. Each replica gets
  the queries of the subjects it owns, as the product routes them (memory/affinity.py;
  measured at the store: the hop a forwarded HTTP search adds is not in these figures);
  `--no-affinity`: queries dealt round robin, each replica holding every subject.
- mem0: `Memory` with the pgvector provider, `infer=False`, records inserted through its
  vector store in batches; search through `Memory.search` with the user filter, as mem0
  documents it. `--mem0-index hnsw` (mem0's default: pgvector's HNSW index, filtered after
  the index, so recall falls as subjects grow) or `none` (exact: mem0 at its best recall).

Targets (issue #27): 1,000,000 records, 1,000 subjects, 2 replicas: vector p50 <= 2 ms,
p99 <= 10 ms, recall@10 >= 0.99; hybrid p50 <= 5 ms; ingest >= 2,000 records/s; >= 10x
mem0's search speed at >= its recall.

    python bench/memory_postgres.py [--records 1000000] [--subjects 1000] [--queries 500]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import DIM, corpus, mem0_run, percentile, queries, summary, truth

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "bench_memory"


def _store(uri: str, keys: Path) -> Any:
    sys.path[:0] = [str(ROOT / "serving"), str(ROOT / "operator")]
    from freehold_serving.memory import crypto
    from freehold_serving.memory.postgres import PostgresDatabase
    from freehold_serving.memory.store import Store

    return Store(
        PostgresDatabase(uri, schema=SCHEMA),
        crypto.FileKeyWrapper(keys),
        embedding_model="synthetic-384",
        dimension=DIM,
    )


def ingest_ours(args: argparse.Namespace) -> dict[str, Any]:
    from freehold_serving.memory.records import RecordFields

    vectors, subject, texts = corpus(args.records, args.subjects)
    store = _store(args.uri, args.keys)
    ids = []
    started = time.perf_counter()
    for start in range(0, args.records, 500):
        end = min(start + 500, args.records)
        items = [(f"u{subject[i]}", RecordFields(text=texts[i])) for i in range(start, end)]
        added = store.add("bench", items, [vectors[i].tolist() for i in range(start, end)])
        ids += [r.id for r in added]
    ingest = args.records / (time.perf_counter() - started)
    args.ids.write_text(json.dumps(ids))
    return {"ingest_per_s": ingest}


def replica_ours(args: argparse.Namespace) -> dict[str, Any]:
    from freehold_serving.memory.records import RecordFields, SearchRequest

    vectors, _subject, _texts = corpus(args.records, args.subjects)
    q, qs = queries(args.queries, args.subjects)
    expected = truth(vectors, _subject, q, qs)
    ids = {rid: n for n, rid in enumerate(json.loads(args.ids.read_text()))}
    store = _store(args.uri, args.keys)
    if args.no_affinity:  # any replica answers any subject: each holds every index
        owned = set(range(args.subjects))
        mine = [n for n in range(len(q)) if n % args.replicas == args.replica]
    else:  # as the product routes (memory/affinity.py): each replica its own subjects
        from freehold_serving.memory.affinity import Member, owner

        members = [Member(f"replica-{r}", "-") for r in range(args.replicas)]
        me = members[args.replica]
        owned = {
            s
            for s in range(args.subjects)
            if owner(store.subject_tag("bench", f"u{s}"), members) == me
        }
        mine = [n for n in range(len(q)) if int(qs[n]) in owned]
    started = time.perf_counter()
    for s in sorted(owned):
        store.search("bench", SearchRequest(subject=f"u{s}", mode="vector", top_k=1), q[0].tolist())
    build = time.perf_counter() - started
    latencies, hits = [], []
    for n in mine:
        request = SearchRequest(subject=f"u{qs[n]}", mode="vector", top_k=10)
        listed = q[n].tolist()
        t = time.perf_counter()
        found = store.search("bench", request, listed)
        latencies.append(time.perf_counter() - t)
        hits.append({ids[r.id] for r in found})
    hybrid = []
    for n in mine[:100]:
        request = SearchRequest(subject=f"u{qs[n]}", query="note on topic 3", top_k=10)
        listed = q[n].tolist()
        t = time.perf_counter()
        store.search("bench", request, listed)
        hybrid.append(time.perf_counter() - t)
    single = []
    for i in range(20):
        t = time.perf_counter()
        store.add(
            "bench",
            # A subject of its own: the other replica may still be answering queries.
            [(f"single-{args.replica}", RecordFields(text=f"one more {i}"))],
            [vectors[i].tolist()],
        )
        single.append(time.perf_counter() - t)
    return {
        "latencies": latencies,
        "hits": [sorted(h) for h in hits],
        "expected": [sorted(expected[n]) for n in mine],
        "hybrid": hybrid,
        "single": single,
        "index_build_s": build,
        "index_mb": store.index_bytes / 2**20,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_mem0(args: argparse.Namespace) -> dict[str, Any]:
    def pgvector(_tmp: str) -> dict[str, Any]:
        return {
            "provider": "pgvector",
            "config": {
                "connection_string": args.uri,
                "collection_name": "bench",
                "embedding_model_dims": DIM,
                # hnsw: mem0's default (approximate, filtered after the index); none:
                # exact search, mem0 at its best recall.
                "hnsw": args.mem0_index == "hnsw",
            },
        }

    return mem0_run(args, pgvector, _uuid, lambda uid: int(uid.replace("-", ""), 16))


def _uuid(i: int) -> str:
    """mem0's pgvector ids are UUIDs: the record's index, as one."""
    return str(__import__("uuid").UUID(int=i))


def child(role: str, args: argparse.Namespace, **extra: Any) -> subprocess.Popen[str]:
    command = [
        sys.executable, __file__, "--role", role, "--uri", args.uri,
        "--records", str(args.records), "--subjects", str(args.subjects),
        "--queries", str(args.queries), "--replicas", str(args.replicas),
        "--keys", str(args.keys), "--ids", str(args.ids), "--mem0-index", args.mem0_index,
    ]  # fmt: skip
    if args.no_affinity:
        command.append("--no-affinity")
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def result_of(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed")
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def server_sql(server: Any) -> Callable[[str], list[tuple[object, ...]]]:
    def run(sql: str) -> list[tuple[object, ...]]:
        lines = server.psql(sql).splitlines()
        return [(line.strip(),) for line in lines[2:-2]]

    return run


@contextlib.contextmanager
def _pgserver(where: Path) -> Iterator[Any]:
    import pgserver

    server = pgserver.get_server(where, cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()


def _run_ours(
    args: argparse.Namespace, sql: Callable[[str], list[tuple[object, ...]]]
) -> tuple[str, dict[str, Any]]:
    durable = [str(sql(f"SHOW {name}")[0][0]) for name in ("fsync", "synchronous_commit")]
    assert durable == ["on", "on"], durable
    version = str(sql("SELECT version()")[0][0]).split(" on ")[0]
    ingest = result_of(child("ingest", args), "ingest")
    # Searches are measured on a settled table, as a store lives: after a bulk load,
    # autovacuum would otherwise scan the fresh million rows while the searches run.
    started = time.perf_counter()
    sql(f"VACUUM (ANALYZE) {SCHEMA}.versions")
    vacuum_s = time.perf_counter() - started
    replicas = [child("replica", args, replica=n) for n in range(args.replicas)]
    parts = [result_of(p, "replica") for p in replicas]
    latencies = [x for p in parts for x in p["latencies"]]
    hits = [set(h) for p in parts for h in p["hits"]]
    expected = [set(e) for p in parts for e in p["expected"]]
    ours = summary(latencies, hits, expected)
    ours.update(
        ingest_per_s=ingest["ingest_per_s"],
        hybrid_p50_ms=percentile([x for p in parts for x in p["hybrid"]], 50) * 1000,
        single_add_p50_ms=percentile([x for p in parts for x in p["single"]], 50) * 1000,
        index_build_s=max(p["index_build_s"] for p in parts),
        vacuum_after_ingest_s=vacuum_s,
        rss_mb=max(p["rss_mb"] for p in parts),
        index_mb=max(p["index_mb"] for p in parts),
    )
    return version, ours


def main() -> None:  # noqa: PLR0915 (one run, read top to bottom)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--role", choices=["ingest", "replica", "mem0"])
    parser.add_argument("--replica", type=int, default=0)
    parser.add_argument("--uri")
    parser.add_argument("--keys", type=Path)
    parser.add_argument("--ids", type=Path)
    parser.add_argument("--skip-mem0", action="store_true")
    parser.add_argument(
        "--no-affinity", action="store_true", help="every replica answers every subject"
    )
    parser.add_argument("--mem0-index", choices=["hnsw", "none"], default="hnsw")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.role == "ingest":
        print(json.dumps(ingest_ours(args)))
        return
    if args.role == "replica":
        print(json.dumps(replica_ours(args)))
        return
    if args.role == "mem0":
        print(json.dumps(run_mem0(args)))
        return

    sys.path.insert(0, str(ROOT))
    from tests.pg_server import available, postgres_server

    with tempfile.TemporaryDirectory() as tmp:
        args.keys = Path(tmp) / "store.key"
        args.ids = Path(tmp) / "ids.json"
        # Ours on the machine's PostgreSQL (Debian's, as the tests use), else pgserver's.
        if available():
            with postgres_server() as pg:
                args.uri = pg.dsn()
                version, ours = _run_ours(args, pg.sql)
        else:
            with _pgserver(Path(tmp) / "ours") as server:
                args.uri = server.get_uri()
                version, ours = _run_ours(args, server_sql(server))
        peer: dict[str, Any] = {}
        peer_version = ""
        if not args.skip_mem0:
            # mem0's pgvector store needs pgvector: pgserver's PostgreSQL has it.
            with _pgserver(Path(tmp) / "mem0") as server:
                args.uri = server.get_uri()
                peer_version = server.psql("SELECT version();").splitlines()[2].strip()
                peer = result_of(child("mem0", args), "mem0")
    print(f"{args.records} records, {args.subjects} subjects, {args.queries} queries, dim {DIM}")
    print(f"freehold on {version}, {args.replicas} replicas")
    if peer:
        print(f"mem0 on {peer_version}, index: {args.mem0_index}")
    print(f"{'':22}{'freehold':>12}{'mem0':>12}")
    for key in (
        "p50_ms", "p99_ms", "qps", "recall10", "hybrid_p50_ms", "ingest_per_s",
        "single_add_p50_ms", "index_build_s", "vacuum_after_ingest_s", "rss_mb", "index_mb",
    ):  # fmt: skip
        mine, theirs = ours.get(key, float("nan")), peer.get(key, float("nan"))
        print(f"{key:22}{mine:>12.3f}{theirs:>12.3f}")
    if peer:
        print(
            f"vector search: {peer['p50_ms'] / ours['p50_ms']:.1f}x mem0's speed (p50), "
            f"recall@10 {ours['recall10']:.3f} vs {peer['recall10']:.3f}"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "freehold": ours,
                    "mem0": peer,
                    "mem0_index": args.mem0_index,
                    "postgres": version,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
