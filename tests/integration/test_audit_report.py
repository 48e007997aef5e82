"""`freehold audit report` over logs written by the real writers (the operator's audit,
a model replica's access log, a memory store's chain): the page answers who deployed which
digest where, what the gates said, which subjects were exported and erased, and what each
key used; it renders in Debian's headless Chromium; a tampered log is flagged at the top
and the exit code says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from freehold.adapters.audit import OperatorAudit
from freehold.audit_report import BAR, FAIL, PASS
from freehold_serving.access import AccessLog
from freehold_serving.args import AuditConfig
from freehold_serving.audit import AuditLog
from freehold_serving.key_records import key_id
from freehold_serving.signing import FileSigner
from tests.chromium import pixels_near, screenshot
from tests.integration.serving.conftest import example_args

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
# What a store writes for a subject: its keyed pseudonym (crypto.tag), never the name.
PATIENT = "5e1f0c2a9b7d4e3f8a6c1b0d2e4f6a8c"


def write_logs(root: Path) -> None:
    signer = FileSigner(root / "operator.pem")
    operator = OperatorAudit.open(root / "operator", signer)
    md = {
        "metadata": {
            "name": "gemma",
            "namespace": "health",
            "uid": "u1",
            "generation": 1,
            "managedFields": [{"manager": "kubectl-client-side-apply"}, {"manager": "kopf"}],
        },
        "spec": {"model": {"sha256": "a" * 64}, "residency": {"region": "eu-gov-1"}},
        "status": {"servedDigest": A, "backend": "Deployment"},
    }
    operator.resource("ModelDeployment", "ADDED", md)
    md["metadata"]["generation"] = 2
    md["spec"]["model"]["sha256"] = "b" * 64
    md["status"]["servedDigest"] = B  # promoted
    operator.resource("ModelDeployment", "MODIFIED", md)
    job = {
        "metadata": {"name": "gemma-eval", "namespace": "health", "uid": "u2", "generation": 1},
        "status": {
            "phase": "Succeeded",
            "modelDigest": B,
            "signer": "ed25519:0011",
            "gates": [
                {"suite": "capitals", "metric": "accuracy", "value": 0.35, "passed": False},
                {"suite": "json", "metric": "valid", "value": 1.0, "passed": True},
            ],
        },
    }
    operator.resource("EvalJob", "ADDED", job)
    operator.close()

    args = example_args()
    audit = AuditConfig(directory=str(root / "serving"), signing_key_file=str(root / "s.pem"))
    access = AccessLog(args, audit)
    for n in range(30):
        access.record(
            operation="chat",
            model="gemma-3-270m",
            key=key_id("fh-key-clinic") if n % 3 else key_id("fh-key-research"),
            tenant="clinic" if n % 3 else "research",
            status=200 if n % 10 else 401,
            latency_s=0.2 + n / 100,
            input_tokens=40,
            output_tokens=12,
        )
    access.close()

    memory = AuditLog(root / "memory" / "memory.jsonl", "memory/health/notes", signer)
    memory.record("memory.export", subject=PATIENT, records=4)
    memory.record("memory.erase", subject=PATIENT, versions=6)
    memory.close()


def trusted(root: Path) -> list[str]:
    """--trusted-key for each signer of write_logs: what the auditor was given."""
    import base64

    keys = [FileSigner(root / name).public_key() for name in ("operator.pem", "s.pem")]
    return [arg for key in keys for arg in ("--trusted-key", base64.b64encode(key).decode())]


def report(*args: str) -> subprocess.CompletedProcess[str]:
    logs = Path(args[0])
    return subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "report", *args, *trusted(logs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_report_answers_an_auditor_and_renders(tmp_path: Path) -> None:
    write_logs(tmp_path / "logs")
    page = tmp_path / "report.html"
    done = report(str(tmp_path / "logs"), "--since", "1h", "-o", str(page))
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert "<script" not in html and "src=" not in html and "href=" not in html
    assert "intact, every event signed" in html and "TAMPERED" not in html
    assert "health/gemma" in html and "eu-gov-1" in html
    assert "kubectl-client-side-apply" in html  # who changed it, not the operator
    assert "(was <code>sha256:aaaaaaaaaaaa" in html  # the promotion from A to B
    assert "1 of 2 gates failed" in html and "capitals.accuracy = 0.35" in html
    assert PATIENT in html and "patient-17" not in html
    assert key_id("fh-key-clinic") in html and "fh-key-clinic" not in html
    assert "2 x 401" in html and "1 x 401" in html  # refused requests, per key

    image = screenshot(page, tmp_path / "report.png", height=3000)
    assert pixels_near(image, BAR) > 2000  # the access timeline and per-key bars
    assert pixels_near(image, PASS) > 200  # intact logs, a passed gate
    assert pixels_near(image, FAIL) > 100  # the failed gate, refused requests

    # Nothing in a period before the events: the tables say so, the integrity stays.
    empty = report(str(tmp_path / "logs"), "--until", "2020-01-01", "-o", str(page))
    assert empty.returncode == 0 and "No deployment changes in this period." in page.read_text()


def test_a_tampered_log_heads_the_report_and_exits_1(tmp_path: Path) -> None:
    write_logs(tmp_path / "logs")
    (access,) = (tmp_path / "logs" / "serving" / "access").glob("*.jsonl")
    rows = access.read_text().splitlines()
    edited = json.loads(rows[3])
    edited["data"]["status"] = 500  # was 200
    rows[3] = json.dumps(edited)
    access.write_text("\n".join(rows) + "\n")
    page = tmp_path / "report.html"
    done = report(str(tmp_path / "logs"), "-o", str(page))
    assert done.returncode == 1
    html = page.read_text()
    assert "At least one log was tampered with" in html and "event 4" in html
    bad_time = report(str(tmp_path / "logs"), "--since", "yesterday", "-o", str(page))
    assert bad_time.returncode == 2 and "--since" in bad_time.stderr
