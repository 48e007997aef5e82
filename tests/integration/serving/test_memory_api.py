"""The memory API on the real data plane: Ray Serve, the built-in all-MiniLM-L6-v2 embedder,
SmolLM2 extracting with JSON-schema output, SQLite on disk, two tenants' API keys.
Also the crash-safety of the store under kill -9."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.serving.conftest import MEMORY_KEYS, MODEL, Stack

pytestmark = pytest.mark.slow


def client(stack: Stack, tenant: str = "acme") -> httpx.Client:
    return httpx.Client(
        base_url=stack.memory,
        headers={"Authorization": f"Bearer {MEMORY_KEYS[tenant]}"},
        timeout=120,
    )


def add(c: httpx.Client, subject: str, *texts: str, **fields: Any) -> list[str]:
    answer = c.post(
        "/records", json={"records": [{"subject": subject, "text": t, **fields} for t in texts]}
    )
    assert answer.status_code == 201, answer.text
    return [r["id"] for r in answer.json()["data"]]


def search(c: httpx.Client, subject: str, query: str, **kw: Any) -> list[dict[str, Any]]:
    answer = c.post("/search", json={"subject": subject, "query": query, **kw})
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def error(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_semantic_search_and_supersede(stack: Stack) -> None:
    with client(stack) as c:
        rid, *_ = add(
            c,
            "u-search",
            "Alice lives in Lyon",
            "Alice's favourite sport is cycling",
            "Alice has a cat named Miso",
            type="fact",
        )
        found = search(c, "u-search", "Which city does she live in?")
        assert found[0]["text"] == "Alice lives in Lyon"
        assert search(c, "u-search", "pet animal")[0]["text"] == "Alice has a cat named Miso"
        updated = c.put(
            f"/records/{rid}",
            json={"subject": "u-search", "text": "Alice moved to Geneva", "type": "fact"},
        )
        assert updated.status_code == 200 and updated.json()["version"] == 2
        assert (
            search(c, "u-search", "Which city does she live in?")[0]["text"]
            == "Alice moved to Geneva"
        )
        history = c.get(f"/records/{rid}/history").json()["data"]
        assert [h["text"] for h in history] == ["Alice lives in Lyon", "Alice moved to Geneva"]
        past = search(c, "u-search", "city", as_of=history[0]["valid_from"], top_k=1)
        assert past[0]["text"] == "Alice lives in Lyon"


def test_tenants_are_isolated(stack: Stack) -> None:
    with client(stack, "acme") as acme, client(stack, "globex") as globex:
        (rid,) = add(acme, "shared-name", "acme's user prefers tea")
        assert globex.get(f"/records/{rid}").status_code == 404
        assert error(globex.delete(f"/records/{rid}"))["code"] == "not_found"
        assert search(globex, "shared-name", "tea") == []
        assert globex.post("/export", json={"subject": "shared-name"}).status_code == 404
        assert acme.get(f"/records/{rid}").json()["text"] == "acme's user prefers tea"
        unauthenticated = httpx.post(f"{stack.memory}/search", json={"subject": "x", "query": "q"})
        assert (
            unauthenticated.status_code == 401
            and error(unauthenticated)["code"] == "missing_api_key"
        )


def test_bad_input_is_refused_and_changes_nothing(stack: Stack) -> None:
    with client(stack) as c:
        before = c.get("/stats").json()["records"]["total"]
        wrong_dim = c.post(
            "/records",
            json={
                "records": [
                    {"subject": "u-bad", "text": "fine"},
                    {"subject": "u-bad", "text": "bad", "embedding": [0.1, 0.2]},
                ]
            },
        )
        assert wrong_dim.status_code == 400
        assert "384" in error(wrong_dim)["message"]
        oversize = c.post(
            "/records", json={"records": [{"subject": "u-bad", "text": "x" * 16_001}]}
        )
        assert oversize.status_code == 400 and error(oversize)["param"] == "records[0].text"
        bad_subject = c.post("/records", json={"records": [{"subject": "a\nb", "text": "t"}]})
        assert (
            bad_subject.status_code == 400 and error(bad_subject)["param"] == "records[0].subject"
        )
        malformed = c.post(
            "/records", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert c.get("/records/not-an-id").status_code == 400
        assert c.get("/stats").json()["records"]["total"] == before


def unpack(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive}  # type: ignore[union-attr]


def repack(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def test_bundle_round_trip_tamper_and_erasure(stack: Stack) -> None:
    canary = "okapi-canary-55120"
    with client(stack) as c:
        rid, _ = add(c, "u-bundle", f"Bruno's locker code is {canary}", "Bruno likes chess")
        c.put(
            f"/records/{rid}",
            json={"subject": "u-bundle", "text": f"Bruno's locker code is {canary}!"},
        )
        exported = c.post("/export", json={"subject": "u-bundle", "include_embeddings": True})
        assert exported.status_code == 200
        bundle = exported.content
        files = unpack(bundle)
        manifest = json.loads(files["manifest.json"])
        assert manifest["counts"] == {"records": 2, "versions": 3, "embeddings": 3}
        assert manifest["embedding"] == {"model": "all-minilm-l6-v2", "dimension": 384}
        # Tampered (a record edited), truncated, re-signed by a stranger: refused, nothing changes.
        edited = dict(
            files, **{"records.jsonl": files["records.jsonl"].replace(b"chess", b"poker")}
        )
        for bad, why in ((repack(edited), "sha256"), (bundle[: len(bundle) // 2], "truncated")):
            refused = c.post("/import", content=bad)
            assert refused.status_code == 400 and why in error(refused)["message"], refused.text
        # Erase, then the raw files hold no trace; importing the bundle brings it all back.
        erased = c.post("/erase", json={"subject": "u-bundle"})
        assert erased.json()["erased_versions"] == 3
        assert search(c, "u-bundle", "chess") == []
        for path in stack.memory_dir.glob("memory.db*"):
            assert canary.encode() not in path.read_bytes()
        imported = c.post("/import", content=bundle)
        assert imported.status_code == 200, imported.text
        assert imported.json()["imported"] == 3
        assert search(c, "u-bundle", "chess")[0]["text"] == "Bruno likes chess"
        again = c.post("/export", json={"subject": "u-bundle", "include_embeddings": True})
        assert again.content == bundle  # bit-exact re-export
        # The audit trail names what happened, by pseudonym, chained and signed.
        from freehold_serving.audit import verify

        trail = stack.memory_dir / "audit" / "memory.jsonl"
        # Against the key the store publishes (its /status), never one the log names.
        published = httpx.get(f"{stack.memory}/status", timeout=30).json()["signerPublicKey"]
        verdict = verify(trail, {base64.b64decode(published)})
        assert verdict.problems == [] and verdict.warnings == [], verdict
        text = trail.read_text()
        assert canary not in text and "u-bundle" not in text
        kinds = [json.loads(line)["type"] for line in text.splitlines()]
        assert {"memory.export", "memory.erase", "memory.import"} <= set(kinds)
        assert c.post("/import", content=bundle).json() == {
            "imported": 0,
            "skipped": 3,
            "signer": json.loads(files["signature.json"])["keyId"],
        }


def test_mem0_and_jsonl_imports(stack: Stack) -> None:
    mem0 = {
        "results": [
            {
                "id": "a1",
                "memory": "Likes spicy food",
                "hash": "h1",
                "metadata": {"type": "preference"},
                "created_at": "2026-01-02T03:04:05Z",
                "user_id": "u-mem0",
            },
            {
                "id": "a2",
                "memory": "Works as a nurse",
                "hash": "h2",
                "metadata": None,
                "user_id": "u-mem0",
            },
        ]
    }
    with client(stack) as c:
        result = c.post("/import?format=mem0", content=json.dumps(mem0))
        assert result.json()["imported"] == 2
        hit = search(c, "u-mem0", "what food does she like")[0]
        assert hit["type"] == "preference" and hit["provenance"]["source"] == "import:mem0"
        lines = (
            b'{"subject": "u-jsonl", "text": "Speaks Welsh", "type": "fact"}\n'
            b'{"subject": "u-jsonl"}\n'
        )
        refused = c.post("/import?format=jsonl", content=lines)
        assert refused.status_code == 400 and "line 2: text" in error(refused)["message"]
        assert search(c, "u-jsonl", "language") == []


def test_extraction_with_provenance(stack: Stack) -> None:
    with client(stack) as c:
        answer = c.post(
            "/extract",
            json={
                "subject": "u-extract",
                "messages": [{"role": "user", "content": "I am vegetarian and I live in Cardiff."}],
            },
        )
        assert answer.status_code == 200, answer.text
        records = answer.json()["data"]
        assert records, "the model extracted nothing"
        for record in records:
            assert record["provenance"]["source"] == "extraction"
            assert record["provenance"]["model"] == "smollm2-135m-instruct"
            assert len(record["provenance"]["model_digest"]) == 64
            assert record["type"] in {
                "preference",
                "fact",
                "task",
                "episode",
                "entity",
                "relation",
                "note",
            }
        assert search(c, "u-extract", records[0]["text"])[0]["id"] == records[0]["id"]


def test_memory_in_chat(stack: Stack) -> None:
    with client(stack) as c:
        (rid,) = add(c, "u-chat", "The user's name is Zoltan and he is a beekeeper", type="fact")
    llm = openai.OpenAI(base_url=stack.base(), api_key=MEMORY_KEYS["acme"])
    raw = llm.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is my job?"}],
        max_tokens=8,
        extra_body={"memory": {"store": "assistant-memory", "subject": "u-chat", "top_k": 1}},
    )
    assert raw.headers["x-freehold-memory-records"] == rid
    body = json.loads(raw.http_response.text)
    assert body["memory"] == {"store": "assistant-memory", "subject": "u-chat", "records": [rid]}
    # the recalled memory is in the prompt: the prompt is longer than without it
    plain = llm.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is my job?"}], max_tokens=8
    )
    assert body["usage"]["prompt_tokens"] > plain.usage.prompt_tokens + 8  # type: ignore[union-attr]
    other_tenant = openai.OpenAI(base_url=stack.base(), api_key=MEMORY_KEYS["globex"])
    raw = other_tenant.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is my job?"}],
        max_tokens=4,
        extra_body={"memory": {"store": "assistant-memory", "subject": "u-chat"}},
    )
    assert raw.headers["x-freehold-memory-records"] == ""
    with pytest.raises(openai.BadRequestError, match="not available to this model"):
        llm.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            extra_body={"memory": {"store": "nope", "subject": "u-chat"}},
        )


def test_openapi_documents_the_memory_api(stack: Stack) -> None:
    schema = httpx.get(f"{stack.memory}/openapi.json").json()
    assert {"/records", "/search", "/export", "/import", "/erase", "/extract"} <= set(
        schema["paths"]
    )
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("SearchRequest")


WRITER = """
import sys
from pathlib import Path
from freehold_serving.memory import crypto
from freehold_serving.memory.records import RecordFields
from freehold_serving.memory.store import Store
root = Path(sys.argv[1])
key = crypto.FileKeyWrapper(root / "k")
store = Store(root / "memory.db", key, embedding_model="m", dimension=4)
n = 0
while True:
    batch = [("crash", RecordFields(text=f"record {n + i}")) for i in range(5)]
    for record in store.add("t", batch, [[1.0, 0.0, 0.0, float(n + i)] for i in range(5)]):
        print(record.id, flush=True)  # acknowledged: committed with synchronous=FULL
    n += 5
"""


def test_every_acknowledged_record_survives_kill_9(tmp_path: Path) -> None:
    """The store's process is killed with SIGKILL mid-write; after restart, every record it
    acknowledged is there and the database is intact."""
    from freehold_serving.memory import crypto
    from freehold_serving.memory.database import SqliteDatabase
    from freehold_serving.memory.store import Store

    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    acked = []
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    acked += [line.strip() for line in proc.stdout]
    proc.wait()
    store = Store(
        tmp_path / "memory.db",
        crypto.FileKeyWrapper(tmp_path / "k"),
        embedding_model="m",
        dimension=4,
    )
    assert isinstance(store.database, SqliteDatabase)
    assert store.database.integrity() == "ok"
    present = {r.id for r, _ in store.subject_versions("t", "crash")}
    assert set(acked) <= present


def cli(stack: Stack, *args: str, tenant: str = "acme") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", "memory", *args],
        env={
            **os.environ,
            "FREEHOLD_MEMORY_URL": stack.memory,
            "FREEHOLD_API_KEY": MEMORY_KEYS[tenant],
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_round_trip(stack: Stack, tmp_path: Path) -> None:
    added = cli(stack, "add", "Carla collects vinyl records", "-s", "u-cli", "-t", "preference")
    assert added.returncode == 0, added.stderr
    found = cli(stack, "search", "music hobby", "-s", "u-cli", "--json")
    assert json.loads(found.stdout)[0]["id"] == added.stdout.strip()
    bundle = tmp_path / "carla.tar.gz"
    exported = cli(stack, "export", "-s", "u-cli", "-o", str(bundle))
    assert exported.returncode == 0 and "1 record(s), sha256:" in exported.stdout
    assert cli(stack, "erase", "-s", "u-cli", "--yes").returncode == 0
    assert json.loads(cli(stack, "search", "music", "-s", "u-cli", "--json").stdout) == []
    imported = cli(stack, "import", str(bundle))
    assert imported.returncode == 0 and "imported 1 record version(s)" in imported.stdout
    bad = cli(stack, "add", "x" * 16_001, "-s", "u-cli")
    assert bad.returncode == 1 and "records[0].text" in bad.stderr
    wrong_key = cli(stack, "stats", tenant="acme")
    assert wrong_key.returncode == 0 and '"subjects"' in wrong_key.stdout


def test_the_operators_status_probe_reads_aggregate_counts_only(stack: Stack) -> None:
    from freehold.adapters.probe import HttpProbe
    from freehold.kinds.memory_store import observed_fields

    with client(stack) as c:
        add(c, "u-probe", "Dora plays the cello", session_id="s-1")
    observed = HttpProbe()(f"{stack.memory}/status")
    assert observed is not None
    fields = observed_fields(observed)
    assert fields["records"]["total"] >= 1 and fields["records"]["session"] >= 1
    assert fields["subjects"] >= 1 and fields["signer"].startswith("ed25519:")
    assert "cello" not in json.dumps(observed) and "u-probe" not in json.dumps(observed)
    assert HttpProbe()(f"{stack.root}/nowhere") is None


def test_retention_sweep_deletes_expired_records(stack: Stack) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    with client(stack) as c:
        (brief,) = add(c, "u-ttl", "The meeting is in room 4", type="episode", expires_at=soon)
        (kept,) = add(c, "u-ttl", "Eli prefers aisle seats", type="preference")
        assert c.get(f"/records/{brief}").status_code == 200
        deadline = time.monotonic() + 20
        while c.get(f"/records/{brief}").status_code != 404:
            assert time.monotonic() < deadline, "the expired record was not swept"
            time.sleep(0.5)
        assert c.get(f"/records/{brief}/history").status_code == 404  # every version went
        assert c.get(f"/records/{kept}").status_code == 200
        assert [r["id"] for r in search(c, "u-ttl", "room")] == [kept]
