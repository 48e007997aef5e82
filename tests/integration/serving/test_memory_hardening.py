"""Issue 25 on the real memory API (Ray Serve, SQLite, the real embedder, two tenants'
keys): hostile bodies answer 4xx OpenAI-style errors naming the line or field, quickly; one
tenant sees only its own counts and transfers; a conflict never names another tenant's ids;
the store's files are private."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import time

import pytest

from tests.integration.serving.conftest import Stack
from tests.integration.serving.test_memory_api import add, client, error

pytestmark = [pytest.mark.slow, pytest.mark.security]


@pytest.mark.parametrize(
    ("fmt", "body", "says"),
    [
        ("jsonl", b'{"subject": "h", "text": "ok"}\n{"subject": "h", "text": "\xff"}\n', "line 2"),
        ("jsonl", b"[" * 100_000, "nested too deeply"),
        ("jsonl", b'{"subject": "h", "text": "x", "metadata": {"v": NaN}}\n', "NaN"),
        ("mem0", b'{"results": [{"memory": "\xc3\x28", "user_id": "u"}]}', "not UTF-8"),
        ("mem0", b'{"results": ' + b"[" * 50_000, "nested too deeply"),
    ],
)
def test_bad_bytes_answer_400_naming_where(stack: Stack, fmt: str, body: bytes, says: str) -> None:
    with client(stack) as c:
        answer = c.post(f"/import?format={fmt}", content=body)
        assert answer.status_code == 400, answer.text
        assert says in error(answer)["message"]


def test_non_finite_numbers_are_refused_at_the_api(stack: Stack) -> None:
    with client(stack) as c:
        for body in (
            b'{"records": [{"subject": "h", "text": "x", "metadata": {"v": Infinity}}]}',
            b'{"records": [{"subject": "h", "text": "x", "embedding": [NaN]}]}',
        ):
            answer = c.post("/records", content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, answer.text
            assert error(answer)["param"] is not None


def test_a_bundle_bomb_answers_4xx_quickly(stack: Stack) -> None:
    """1 GiB of zeros declared as records.jsonl, about 1 MB on the wire."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        info = tarfile.TarInfo("records.jsonl")
        info.size = 1 << 30
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        block = bytes(1 << 20)
        for _ in range(1 << 10):
            gz.write(block)
    with client(stack) as c:
        start = time.monotonic()
        answer = c.post("/import", content=out.getvalue())
        assert answer.status_code == 400, answer.text
        assert "expands to more than" in error(answer)["message"]
        assert time.monotonic() - start < 10


def test_each_tenant_sees_its_own_stats_and_conflicts_name_no_foreign_ids(stack: Stack) -> None:
    with client(stack, "acme") as acme, client(stack, "globex") as globex:
        before = globex.get("/stats").json()["records"]["total"]
        ids = add(acme, "h-stats", "Ada keeps bees", "Ada rows on Sundays")
        exported = acme.post("/export", json={"subject": "h-stats"})
        assert exported.status_code == 200
        mine, theirs = acme.get("/stats").json(), globex.get("/stats").json()
        assert mine["lastExport"]["digest"] == exported.headers["X-Freehold-Bundle-Digest"]
        assert theirs["lastExport"] is None or (
            theirs["lastExport"]["digest"] != mine["lastExport"]["digest"]
        )
        assert theirs["records"]["total"] == before  # acme's records are not counted
        # globex imports acme's bundle (a trusted signer: the store's own key): the ids
        # exist here under another tenant, so the import conflicts, naming none of them.
        refused = globex.post("/import", content=exported.content)
        assert refused.status_code == 409, refused.text
        message = error(refused)["message"]
        assert "use ids this store already holds" in message
        assert not any(rid in message for rid in ids)


def test_the_store_files_are_private(stack: Stack) -> None:
    for path in stack.memory_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
