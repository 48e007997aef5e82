"""Issue 25: what an outside test broke, kept fixed (marker `security`). One test per case of
each class: audit logs verified only against a key the verifier supplies; decoders of
untrusted input bounded while they read; bad bytes refused naming the line; dataset paths
confined to their root; keyed pseudonyms; per-tenant views; private file modes; expired
records gone at read time. All on real files, real SQLite and the real CLI."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from freehold_serving.audit import AuditLog, verify
from freehold_serving.memory import bundle, crypto
from freehold_serving.memory.bundle import BundleError
from freehold_serving.memory.importers import ImportFormatError, from_jsonl, from_mem0
from freehold_serving.memory.records import NewRecord, RecordFields, SearchRequest
from freehold_serving.memory.store import ImportConflictError, NotFoundError
from freehold_serving.signing import FileSigner, canonical
from tests.unit.test_memory_store import DIM, Clock, add, open_store, vec

pytestmark = pytest.mark.security


def freehold(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def public(signer: FileSigner) -> str:
    return base64.b64encode(signer.public_key()).decode()


def rechain(lines: list[dict[str, object]]) -> bytes:
    """Rewrite a log as a forger with disk access would: renumbered, re-hashed."""
    from freehold_serving.audit import GENESIS, _hash

    prev, out = GENESIS, b""
    for seq, given in enumerate(lines, 1):
        event = {k: v for k, v in given.items() if k != "hash"}
        event["seq"], event["prev"] = seq, prev
        event["hash"] = prev = _hash(event)
        out += canonical(event) + b"\n"
    return out


def signed_log(tmp_path: Path, events: int = 3) -> tuple[Path, FileSigner]:
    signer = FileSigner(tmp_path / "keys" / "audit.pem")
    log = AuditLog(tmp_path / "audit" / "memory.jsonl", "memory/ns/notes", signer)
    for i in range(events):
        log.record("memory.erase", subject=f"p{i}", versions=i)
    log.close()
    return log.path, signer


# -- 1. audit logs: trust comes from the verifier ---------------------------------------


def test_a_rewritten_log_re_signed_with_another_key_is_tampered_for_the_trusted_key(
    tmp_path: Path,
) -> None:
    path, signer = signed_log(tmp_path)
    forger = FileSigner(tmp_path / "forger.pem")
    events = [json.loads(line) for line in path.read_bytes().splitlines()]
    kept = [e for e in events if e["type"] != "checkpoint"][:-1]  # drop the last erasure
    path.write_bytes(rechain(kept))
    forged = AuditLog(path, "memory/ns/notes", forger)  # the forger "resumes" and signs
    forged.checkpoint()
    forged.close()
    trusted = verify(path, {signer.public_key()})
    assert trusted.exit_code == 1 and any("untrusted key" in p for p in trusted.problems)
    assert verify(path).exit_code == 4  # no anchor given: never "intact"
    done = freehold("audit", "verify", str(path))
    assert done.returncode == 4 and "unverified" in done.stderr, done.stderr
    done = freehold("audit", "verify", str(path), "--trusted-key", public(signer))
    assert done.returncode == 1 and "untrusted key" in done.stderr
    keys = tmp_path / "trusted.keys"
    keys.write_text(f"# the store's signer\n{public(signer)}\n")
    assert freehold("audit", "verify", str(path), "--trusted-keys-file", str(keys)).returncode == 1


def test_the_intact_log_verifies_only_with_its_key_and_audit_key_prints_it(
    tmp_path: Path,
) -> None:
    path, signer = signed_log(tmp_path)
    printed = freehold("audit", "key", str(tmp_path / "keys" / "audit.pem"))
    assert printed.returncode == 0 and printed.stdout.strip() == public(signer)
    ok = freehold("audit", "verify", str(path), "--trusted-key", printed.stdout.strip())
    assert ok.returncode == 0, ok.stderr
    bad = freehold("audit", "verify", str(path), "--trusted-key", "bm90IGEga2V5")
    assert bad.returncode == 3 and "--trusted-key" in bad.stderr


def test_an_empty_log_is_never_intact(tmp_path: Path) -> None:
    path, signer = signed_log(tmp_path)
    path.write_bytes(b"")
    verdict = verify(path, {signer.public_key()})
    assert verdict.exit_code == 1 and "no event" in verdict.problems[0]
    assert freehold("audit", "verify", str(path), "--trusted-key", public(signer)).returncode == 1


@pytest.mark.parametrize(
    "damage", ["checkpoints removed", "appended", "someone else's log", "cut back"]
)
def test_a_component_never_resumes_history_its_own_checkpoints_do_not_cover(
    tmp_path: Path, damage: str
) -> None:
    path, signer = signed_log(tmp_path)
    events = [json.loads(line) for line in path.read_bytes().splitlines()]
    if damage == "checkpoints removed":
        path.write_bytes(rechain([e for e in events if e["type"] != "checkpoint"]))
    elif damage == "appended":
        events.append(
            {
                "time": "2026-01-01T00:00:00+00:00",
                "component": "memory/ns/notes",
                "type": "memory.erase",
                "data": {"subject": "x", "versions": 9},
            }
        )
        path.write_bytes(rechain(events))
    elif damage == "cut back":  # to an earlier checkpoint: covered, but shorter than its anchor
        rows = path.read_bytes().splitlines(keepends=True)
        assert json.loads(rows[4])["type"] == "checkpoint"
        path.write_bytes(b"".join(rows[:5]))
    else:
        other, _ = signed_log(tmp_path / "other")
        path.write_bytes(other.read_bytes())
    before = path.read_bytes()
    resumed = AuditLog(path, "memory/ns/notes", signer)
    resumed.record("memory.export", subject="p9", records=1)
    resumed.close()
    assert not resumed.resumed_intact and resumed.rejected is not None
    assert resumed.rejected.read_bytes() == before  # kept, as found, for the investigation
    assert oct(resumed.rejected.stat().st_mode & 0o777) == "0o600"
    fresh = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert fresh[0]["type"] == "log.opened" and fresh[0]["seq"] == 1
    link = fresh[0]["data"]["previous"]
    assert link["file"] == resumed.rejected.name
    assert link["sha256"] == hashlib.sha256(before).hexdigest()
    # The new log holds nothing of the old one and is whole under the store's own key.
    assert verify(path, {signer.public_key()}).exit_code == 0
    # The rejected file does not verify clean: by itself, or (cut back) against the anchor
    # the component kept for it.
    anchors = []
    kept = resumed.rejected.with_name(resumed.rejected.name + ".anchor")
    if kept.exists():
        seq, _, digest = kept.read_text().strip().partition(":")
        anchors.append((int(seq), digest))
    assert verify(resumed.rejected, {signer.public_key()}, anchors).exit_code != 0


def test_a_clean_restart_resumes_the_same_log(tmp_path: Path) -> None:
    path, signer = signed_log(tmp_path)
    again = AuditLog(path, "memory/ns/notes", signer)
    again.record("memory.export", subject="p9", records=1)
    again.close()
    assert again.resumed_intact and again.rejected is None
    assert verify(path, {signer.public_key()}).exit_code == 0
    assert list(path.parent.glob("*.rejected-*")) == []


def test_audit_report_without_a_trusted_key_says_unverified(tmp_path: Path) -> None:
    path, signer = signed_log(tmp_path)
    html = tmp_path / "r.html"
    done = freehold("audit", "report", str(path.parent), "-o", str(html))
    assert done.returncode == 4 and "UNVERIFIED" in html.read_text()
    assert "every event signed" not in html.read_text()
    done = freehold(
        "audit", "report", str(path.parent), "-o", str(html), "--trusted-key", public(signer)
    )
    assert done.returncode == 0 and "signed by a trusted key" in html.read_text()


def test_eval_verify_without_a_public_key_accepts_nothing(tmp_path: Path) -> None:
    from freehold.evaluation.signing import sign

    signer = FileSigner(tmp_path / "eval.pem")
    result = tmp_path / "r.json"
    result.write_text(json.dumps(sign({"suites": [], "digest": "x"}, signer)))
    done = freehold("eval", "verify", str(result))
    assert done.returncode == 2 and "--public-key" in done.stderr
    assert freehold("eval", "verify", str(result), "--public-key", public(signer)).returncode == 0


# -- 2. bounded decoders ------------------------------------------------------------------


def _tar_gz(members: dict[str, bytes], declared: dict[str, int] | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _bomb(expanded: int) -> bytes:
    """A tar.gz whose records.jsonl claims (and holds) `expanded` bytes of zeros: a few MB
    compressed. Written as a stream, so the test itself never holds it expanded."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        info = tarfile.TarInfo(bundle.RECORDS)
        info.size = expanded
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        block = bytes(1 << 20)
        for _ in range(expanded >> 20):
            gz.write(block)
    return out.getvalue()


def test_a_bundle_bomb_is_refused_within_a_bounded_memory(tmp_path: Path) -> None:
    """A 2 GiB expansion (about 2 MB on the wire) is refused from its header; the process
    grows by less than 64 MiB (measured in a fresh interpreter: peak RSS after vs before)."""
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(_bomb(2 << 30))
    assert bomb.stat().st_size < 16 << 20
    script = textwrap.dedent(f"""
        import resource, sys, time
        from pathlib import Path
        from freehold_serving.memory import bundle
        data = Path({str(bomb)!r}).read_bytes()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.monotonic()
        try:
            bundle.read(data, [])
        except bundle.BundleError as exc:
            print("refused:", exc)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("grown_kib", grown, "seconds", round(time.monotonic() - start, 2))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert "refused: the bundle expands to more than" in done.stdout, done.stdout
    grown = int(done.stdout.split("grown_kib")[1].split()[0])
    assert grown < 64 * 1024, done.stdout
    assert float(done.stdout.split("seconds")[1]) < 5, done.stdout


def test_gzip_is_decompressed_as_read_and_stops_at_the_limit() -> None:
    # The decompressor itself stops at its limit, whatever the tar layer asks for.
    data = gzip.compress(bytes(8 << 20), compresslevel=1)
    with pytest.raises(BundleError, match="expands to more than 1048576 bytes"):
        io.BufferedReader(bundle._Gunzip(data, 1 << 20)).read()
    # Members whose declared sizes add up past the limit: refused from their headers.
    members = {bundle.MANIFEST: bytes(600 << 10), bundle.RECORDS: bytes(600 << 10)}
    with pytest.raises(BundleError, match="expands to more than 1048576 bytes"):
        bundle._members(_tar_gz(members), limit=1 << 20)
    with pytest.raises(BundleError, match="gzip"):
        bundle._members(b"not gzip at all")
    with pytest.raises(BundleError, match="follows the end"):
        bundle._members(gzip.compress(b"") + b"trailing")


# -- 3. bad bytes and non-finite numbers ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b'{"subject": "a", "text": "ok"}\n{"subject": "a", "text": "\xff\xfe"}\n',
            "line 2: not UTF-8",
        ),
        (b"[" * 200_000, "nested too deeply"),
        (b'{"subject": "a", "text": "x", "metadata": {"v": NaN}}', "NaN"),
        (b'{"subject": "a", "text": "x", "metadata": {"v": Infinity}}', "Infinity"),
        (
            b'{"subject": "a", "text": "x", "metadata": ' + b'{"a":' * 40 + b"1" + b"}" * 41,
            "nested deeper",
        ),
    ],
)
def test_jsonl_imports_refuse_bad_bytes_naming_the_line(data: bytes, message: str) -> None:
    with pytest.raises(ImportFormatError, match=message):
        from_jsonl(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"results": [{"memory": "\xc3\x28", "user_id": "u"}]}', "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"results": [{"memory": "m", "user_id": "u", "metadata": {"x": NaN}}]}', "NaN"),
        (b'{"results": [{"memory": "m", "user_id": "u", "metadata": [1]}]}', "metadata"),
    ],
)
def test_mem0_imports_refuse_bad_bytes(data: bytes, message: str) -> None:
    with pytest.raises(ImportFormatError, match=message):
        from_mem0(data)


def test_non_finite_numbers_are_refused_at_the_api() -> None:
    from pydantic import ValidationError

    from freehold_serving.memory.records import AddRequest

    for body in (
        '{"records": [{"subject": "a", "text": "x", "metadata": {"v": NaN}}]}',
        '{"records": [{"subject": "a", "text": "x", "embedding": [1.0, Infinity]}]}',
    ):
        with pytest.raises(ValidationError):
            AddRequest.model_validate_json(body)
    with pytest.raises(ValidationError):
        SearchRequest.model_validate_json('{"subject": "a", "embedding": [NaN]}')


def test_eval_datasets_with_bad_bytes_exit_2_naming_the_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"input": "a", "target": "b"}\n{"input": "\xff"}\n')
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        json.dumps(
            {
                "apiVersion": "freehold.dev/v1alpha1",
                "kind": "EvalJob",
                "metadata": {"name": "bad"},
                "spec": {
                    "target": {"endpoint": "http://127.0.0.1:9"},
                    "suites": [
                        {
                            "name": "s",
                            "task": "exact_match",
                            "dataset": {
                                "uri": f"file://{data}",
                                "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                            },
                            "metric": "exact_match",
                        }
                    ],
                },
            }
        )
    )
    done = freehold("eval", "run", "-f", str(manifest))
    assert done.returncode == 2, done.stderr
    assert "line 2: not UTF-8" in done.stderr and "Traceback" not in done.stderr
    # The endpoint named with /v1 is refused, saying why (it would become /v1/v1/...).
    done = freehold("eval", "run", "-f", str(manifest), "--endpoint", "http://127.0.0.1:9/v1/")
    assert done.returncode == 2 and "without /v1" in done.stderr


# -- 4. dataset paths confined to their root ---------------------------------------------------


def test_dataset_names_never_leave_their_root(tmp_path: Path) -> None:
    from freehold.evaluation.datasets import DatasetError, locate, read

    pvc = tmp_path / "data"
    (pvc / "claim").mkdir(parents=True)
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"input": "private"}\n')
    (pvc / "claim" / "link.jsonl").symlink_to(secret)
    for uri in (
        "pvc://../secret.jsonl",
        "pvc://claim/../../secret.jsonl",
        "pvc://claim/%2e%2e/%2e%2e/secret.jsonl",
        "pvc://claim/link.jsonl",
        "pvc://%2e%2e/secret.jsonl",
    ):
        with pytest.raises(DatasetError, match=r"leaves its root|claim name"):
            locate(uri, pvc)
    with pytest.raises(DatasetError, match=r"only by `freehold eval run`"):
        locate(f"file://{secret}", pvc)
    with pytest.raises(DatasetError, match="leaves its root"):
        locate(f"file://{secret}", pvc, file_root=pvc)
    # A digest mismatch names no digest of the file it read.
    inside = pvc / "claim" / "d.jsonl"
    inside.write_text('{"input": "x"}\n')
    with pytest.raises(DatasetError) as refused:
        read("pvc://claim/d.jsonl", "0" * 64, pvc)
    assert hashlib.sha256(inside.read_bytes()).hexdigest() not in str(refused.value)


def test_lm_eval_data_files_stay_beside_their_task(tmp_path: Path) -> None:
    from freehold.evaluation.datasets import DatasetError
    from freehold.evaluation.lm_eval_tasks import data_file

    task_yaml = tmp_path / "tasks" / "t.yaml"
    task_yaml.parent.mkdir()
    (tmp_path / "outside.jsonl").write_text("{}\n")
    (task_yaml.parent / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    for chosen in ("/etc/passwd", "../outside.jsonl", "link.jsonl"):
        task = {"dataset_kwargs": {"data_files": {"test": chosen}}}
        with pytest.raises(DatasetError, match="inside the task's folder"):
            data_file(task, task_yaml, "t")


def _templated(tmp_path: Path, doc_to_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from freehold.api.eval_job import Suite
    from freehold.evaluation import lm_eval_tasks

    monkeypatch.setattr(lm_eval_tasks, "RENDER_SECONDS", 3.0)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"q": "a" * 40 + "!", "a": "x"}) + "\n")
    task = {
        "task": "t",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "d.jsonl"}},
        "output_type": "generate_until",
        "doc_to_text": doc_to_text,
        "doc_to_target": "a",
        "metric_list": [{"metric": "exact_match"}],
    }
    raw = json.dumps(task).encode()
    suite = Suite.model_validate(
        {
            "name": "t",
            "task": "exact_match",
            "dataset": {
                "uri": "pvc://c/t.yaml",
                "sha256": hashlib.sha256(raw).hexdigest(),
                "format": "lm-eval",
                "dataSha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            },
            "metric": "exact_match",
        }
    )
    lm_eval_tasks.load(suite, raw, tmp_path / "t.yaml", suite.dataset.data_sha256 or "")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ q | regex_replace('(a+)+$', 'b') }}", "longer than 3 s"),
        (
            "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
            "longer than 3 s",
        ),
        ("{% for i in range(99999) %}{{ q }}{% endfor %}", "rendered more than"),
        ("{{ q * 10**9 }}", "memory|rendered more than|failed"),
    ],
)
def test_templates_have_time_and_size_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str, message: str
) -> None:
    from freehold.evaluation.datasets import DatasetError

    start = time.monotonic()
    with pytest.raises(DatasetError, match=message):
        _templated(tmp_path, template, monkeypatch)
    assert time.monotonic() - start < 30


# -- 5. keyed pseudonyms -------------------------------------------------------------------


def test_pseudonyms_are_keyed_per_store(tmp_path: Path) -> None:
    clock = Clock()
    one, two = open_store(tmp_path / "one", clock), open_store(tmp_path / "two", clock)
    name = "patient-17"
    unkeyed = hashlib.sha256(f"freehold-subject\0{name}".encode()).hexdigest()[:32]
    assert one.pseudonym("subject", name) == one.pseudonym("subject", name)
    assert one.pseudonym("subject", name) != two.pseudonym("subject", name)
    assert unkeyed not in (one.pseudonym("subject", name), two.pseudonym("subject", name))
    add(one, name, "Allergic to penicillin")
    versions = one.subject_versions("acme", name)
    made = bundle.write(
        versions,
        signer=FileSigner(tmp_path / "s.pem"),
        subject_id=one.pseudonym("subject", name),
        embedding=None,
        producer="test",
    )
    assert made.manifest["subject"] == one.pseudonym("subject", name)
    one.erase_subject("acme", name)
    # After erasure the pseudonym still names the trail's events, but only this store's
    # key (wrapped by its KEK) can link a candidate name to it.
    assert one.pseudonym("subject", name) == made.manifest["subject"]


# -- 6. per-tenant views ------------------------------------------------------------------------


def test_counts_are_per_tenant_and_conflicts_never_name_another_tenants_ids(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path, Clock())
    add(store, "alice", "Alice likes tea", tenant="acme")
    add(store, "alice", "Alice likes coffee", tenant="acme")
    add(store, "bob", "Bob likes rain", tenant="globex")
    assert store.counts("acme").records == 2 and store.counts("acme").subjects == 1
    assert store.counts("globex").records == 1
    assert store.counts().records == 3 and store.counts().subjects == 2
    theirs = store.subject_versions("acme", "alice")
    with pytest.raises(ImportConflictError) as refused:
        store.import_versions("globex", theirs)
    message = refused.value.message
    assert "2 record version(s) use ids this store already holds" in message
    assert not any(record.id in message for record, _ in theirs)


# -- 7. private files -----------------------------------------------------------------------


def test_data_and_logs_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = open_store(tmp_path / "store", Clock())
        add(store, "alice", "Alice likes tea")
        path, _ = signed_log(tmp_path / "logs")
    finally:
        os.umask(old)
    db = tmp_path / "store" / "memory.db"
    assert store.counts().records == 1
    for file in (db, path, *db.parent.glob("memory.db-*")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    for folder in (db.parent, path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


# -- 8. smaller ------------------------------------------------------------------------------


def test_an_expired_record_is_gone_before_the_sweep(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    clock = Clock()
    store = open_store(tmp_path, clock)
    soon = datetime.fromtimestamp(clock.t + 60, UTC)
    rid = add(store, "alice", "Alice parks on level 3", expires_at=soon)
    add(store, "alice", "Alice parks her bike outside")
    clock.t += 120  # past its expiry; the hourly sweep has not run
    with pytest.raises(NotFoundError):
        store.get("acme", rid)
    with pytest.raises(NotFoundError):
        store.history("acme", rid)
    found = store.search("acme", SearchRequest(subject="alice", query="parks"), vec("parks"))
    assert [r.id for r in found if r.id == rid] == []
    assert all(r.id != rid for r, _ in store.subject_versions("acme", "alice"))


def test_record_fields_refuse_nan_metadata() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="NaN"):
        RecordFields(text="x", metadata={"v": float("nan")})
    with pytest.raises(ValidationError):
        NewRecord(subject="a", text="x", embedding=[float("inf")] * DIM)


def test_a_bundle_with_nan_in_a_record_is_refused_not_a_500(tmp_path: Path) -> None:
    signer = FileSigner(tmp_path / "s.pem")
    store = open_store(tmp_path, Clock())
    add(store, "alice", "Alice likes tea")
    made = bundle.write(
        store.subject_versions("acme", "alice"),
        signer=signer,
        subject_id="x",
        embedding=None,
        producer="test",
    )
    members = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(made.data))) as archive:
        for info in archive:
            handle = archive.extractfile(info)
            assert handle is not None
            members[info.name] = handle.read()
    records = members[bundle.RECORDS].replace(b'"metadata":{}', b'"metadata":{"v":NaN}')
    manifest = json.loads(members[bundle.MANIFEST])
    manifest["files"][bundle.RECORDS] = {
        "sha256": hashlib.sha256(records).hexdigest(),
        "bytes": len(records),
    }
    manifest_bytes = canonical(manifest)
    signature = json.loads(members[bundle.SIGNATURE])
    signature["signature"] = base64.b64encode(signer.sign(manifest_bytes)).decode()
    data = _tar_gz(
        {
            bundle.MANIFEST: manifest_bytes,
            bundle.SIGNATURE: canonical(signature),
            bundle.RECORDS: records,
        }
    )
    with pytest.raises(BundleError, match=r"records\.jsonl line 1: metadata holds NaN"):
        bundle.read(data, [signer.public_key()])


def test_crypto_tag_is_what_pseudonyms_use() -> None:
    # The keyed pseudonym is HMAC-SHA256 (crypto.tag): 128 bits, hex.
    assert len(crypto.tag(b"k" * 32, "x")) == 32


def _peak_growth_kib(script: str) -> tuple[int, str]:
    """Run `script` in a fresh interpreter; peak RSS growth across it, in KiB."""
    wrapped = (
        "import resource\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"{script}\n"
        "print('grown_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=300, check=True
    )
    return int(done.stdout.split("grown_kib")[1].split()[0]), done.stdout


@pytest.mark.parametrize(
    "setup",
    [
        # The largest mem0 document accepted, all tiny memories: the most objects per byte.
        'one = b\'{"memory":"a","user_id":"u"},\'\n'
        "n = (importers.MAX_MEM0_BYTES - 64) // len(one) - 1\n"
        "data = b'{\"results\":[' + one * n + one[:-1] + b']}'\n"
        "fn = importers.from_mem0",
        # A 64 MiB JSONL body (the API's limit): refused at the record limit.
        'line = b\'{"subject":"u","text":"\' + b\'x\' * 100 + b\'"}\\n\'\n'
        "data = line * ((64 << 20) // len(line))\n"
        "fn = importers.from_jsonl",
    ],
    ids=["mem0", "jsonl"],
)
def test_foreign_imports_parse_within_bounded_memory(setup: str) -> None:
    """Stated limit: one import's parse grows the process by less than 256 MiB."""
    script = (
        "from freehold_serving.memory import importers\n"
        f"{setup}\n"
        "try:\n"
        "    print('records', len(fn(data)))\n"
        "except importers.ImportFormatError as exc:\n"
        "    print('refused', exc)\n"
    )
    grown, printed = _peak_growth_kib(script)
    assert grown < 256 * 1024, printed
    assert "records" in printed or "more than 20000 records" in printed, printed


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\ndataset_path: json\n', "aliases"),
        (b"doc_to_text: \xff\n", "not UTF-8"),
        (b"x: " + b"[" * 5000, "not YAML"),
        (b"# " + b"x" * (300 * 1024), "larger than"),
    ],
    ids=["billion-laughs", "bad-bytes", "nesting", "size"],
)
def test_lm_eval_task_files_are_read_within_limits(raw: bytes, says: str) -> None:
    from freehold.evaluation.datasets import DatasetError
    from freehold.evaluation.lm_eval_tasks import read_task

    with pytest.raises(DatasetError, match=says):
        read_task(raw, "t.yaml")


def test_the_memory_cli_prints_no_http_client_log_lines(tmp_path: Path) -> None:
    """A local HTTP server answering /stats (a stand-in for the memory API: the CLI's
    output is under test, not the store)."""
    import http.server
    import threading

    class Stats(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"records": {"total": 1}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/memory"
        done = freehold("memory", "stats", "--endpoint", url)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert '"total": 1' in done.stdout
    assert "HTTP Request" not in done.stdout + done.stderr


def test_the_evaluation_waits_for_an_endpoint_that_is_still_starting() -> None:
    """A candidate can be Ready a moment before its Service routes to it: the Job waits for
    the endpoint to answer instead of failing the evaluation. A local HTTP server that
    starts late stands in for the model server (what is under test is the waiting)."""
    import http.server
    import socket
    import threading

    from freehold.evaluation.client import Endpoint, EndpointError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"data": [{"id": "late-model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    servers: list[http.server.ThreadingHTTPServer] = []

    def start_late() -> None:
        time.sleep(1.5)
        servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", port), Models))
        servers[0].serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", None)  # asks nothing yet
    try:
        endpoint.wait_ready(30, interval=0.2)
        assert endpoint.model == "late-model"
    finally:
        endpoint.close()
        if servers:
            servers[0].shutdown()
    gone = Endpoint("http://127.0.0.1:9/v1", "m")
    with pytest.raises(EndpointError, match="did not answer within 1 s"):
        gone.wait_ready(1, interval=0.2)
