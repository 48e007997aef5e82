"""The audit chain: every kind of tampering is named, a crash mid-write leaves a chain that
verifies up to the last complete event, and the CLI's exit codes say which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from freehold_serving.audit import AuditLog, verify
from freehold_serving.memory.bundle import FileSigner


def log(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "test", signer=FileSigner(tmp_path / "k.pem"), checkpoint_every=1)
    for i in range(n):
        audit.record("memory.erase", subject=f"pseudonym-{i}", versions=i)
    audit.close()
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write(path: Path, rows: list[str]) -> None:
    path.write_text("".join(r + "\n" for r in rows))


def cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_intact_signed_log_verifies(tmp_path: Path) -> None:
    path = log(tmp_path)
    verdict = verify(path)
    assert verdict.problems == [] and verdict.warnings == [] and verdict.events == 10
    assert cli(path).returncode == 0


def test_edited_deleted_reordered_and_appended_are_named(tmp_path: Path) -> None:
    path = log(tmp_path)
    rows = lines(path)
    edited = json.loads(rows[2])
    edited["data"]["versions"] = 99
    write(path, [*rows[:2], json.dumps(edited), *rows[3:]])
    assert any("event 3" in p and "edited" in p for p in verify(path).problems)
    assert cli(path).returncode == 1

    write(path, [*rows[:4], *rows[6:]])
    assert any("5-6 were deleted" in p for p in verify(path).problems)

    write(path, [rows[0], rows[2], rows[1], *rows[3:]])
    assert verify(path).problems

    # Appended after the last checkpoint by someone without the key: not covered.
    write(path, rows)
    appender = AuditLog(path, "intruder")
    appender.record("memory.export", subject="x")
    appender.close()
    verdict = verify(path)
    assert verdict.problems == [] and "come after the last valid checkpoint" in verdict.warnings[0]
    assert cli(path).returncode == 2


def test_a_write_cut_short_verifies_up_to_the_last_complete_event(tmp_path: Path) -> None:
    path = log(tmp_path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"seq": 5, "time": "2026-')  # kill -9 mid-write
    verdict = verify(path)
    assert verdict.problems == [] and verdict.events == 4
    assert any("incomplete" in w for w in verdict.warnings)
    # The writer resumes the chain after a restart, dropping the partial line.
    resumed = AuditLog(path, "test", signer=FileSigner(tmp_path / "k.pem"))
    resumed.record("memory.erase", subject="after-restart")
    resumed.close()
    verdict = verify(path)
    assert verdict.problems == [] and verdict.warnings == [] and verdict.events == 6


def test_forged_checkpoints_are_named(tmp_path: Path) -> None:
    import base64

    path = log(tmp_path, 2)
    rows = lines(path)
    forged = json.loads(rows[1])  # a checkpoint whose signature was made up
    forged["data"]["signature"] = base64.b64encode(b"\0" * 64).decode()
    write(path, [rows[0], json.dumps(forged), *rows[2:]])
    assert any("checkpoint 2" in p and "does not verify" in p for p in verify(path).problems)

    # A checkpoint validly signed by some other key counts only if that key is trusted.
    write(path, rows)
    other = tmp_path / "other"
    other.mkdir()
    intruder = AuditLog(path, "intruder", signer=FileSigner(other / "k.pem"))
    intruder.record("memory.export", subject="x")
    intruder.close()
    ours = FileSigner(tmp_path / "k.pem").public_key()
    assert any("untrusted key" in p for p in verify(path, trusted={ours}).problems)
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "verify", str(path), "--trusted-key",
         base64.b64encode(ours).decode()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "untrusted key" in done.stderr


def test_truncation_is_caught_by_an_anchor(tmp_path: Path) -> None:
    path = log(tmp_path, 5)
    whole = verify(path)
    seq, digest = whole.last
    assert seq == 10 and whole.exit_code == 0
    rows = lines(path)
    write(path, rows[:6])  # the last two events and their checkpoints cut off
    assert verify(path).exit_code == 0  # intact by itself: only an anchor shows the cut
    assert any("truncated" in p for p in verify(path, anchors=[(seq, digest)]).problems)
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "verify", str(path), "--anchor",
         f"{seq}:{digest}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "ends at event 6" in done.stderr


WRITER = """
import sys
from pathlib import Path
from freehold_serving.audit import AuditLog
from freehold_serving.memory.bundle import FileSigner
log = AuditLog(Path(sys.argv[1]), "crash", signer=FileSigner(Path(sys.argv[2])))
print("ready", flush=True)
n = 0
while True:
    n += 1
    log.record("memory.erase", subject="s" * (n % 4000), versions=n)
"""


def test_kill_9_while_writing_leaves_a_chain_that_verifies(tmp_path: Path) -> None:
    import os
    import signal
    import time

    path = tmp_path / "crash.jsonl"
    for _ in range(3):  # three crashes, three resumes of the same chain
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(tmp_path / "k.pem")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        verdict = verify(path)
        assert verdict.problems == [], verdict.problems
        assert verdict.events > 0
