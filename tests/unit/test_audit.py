"""The audit chain: every kind of tampering is named, a crash mid-write leaves a chain that
verifies up to the last complete event, and the CLI's exit codes say which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from freehold_serving.audit import AuditLog, verify
from freehold_serving.signing import FileSigner


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


def ours(tmp_path: Path) -> set[bytes]:
    """The trust anchor a verifier supplies: the writer's public key."""
    return {FileSigner(tmp_path / "k.pem").public_key()}


def cli(path: Path) -> subprocess.CompletedProcess[str]:
    import base64

    (key,) = ours(path.parent)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "freehold",
            "audit",
            "verify",
            str(path),
            "--trusted-key",
            base64.b64encode(key).decode(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_intact_signed_log_verifies(tmp_path: Path) -> None:
    path = log(tmp_path)
    verdict = verify(path, ours(tmp_path))
    # log.opened, then each event and the checkpoint after it
    assert verdict.problems == [] and verdict.warnings == [] and verdict.events == 11
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
    verdict = verify(path, ours(tmp_path))
    assert verdict.problems == [] and "come after the last valid checkpoint" in verdict.warnings[0]
    assert cli(path).returncode == 2


def test_a_write_cut_short_verifies_up_to_the_last_complete_event(tmp_path: Path) -> None:
    path = log(tmp_path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"seq": 5, "time": "2026-')  # kill -9 mid-write
    verdict = verify(path, ours(tmp_path))
    assert verdict.problems == [] and verdict.events == 5
    assert any("incomplete" in w for w in verdict.warnings)
    # The writer resumes the chain after a restart, dropping the partial line.
    resumed = AuditLog(path, "test", signer=FileSigner(tmp_path / "k.pem"))
    resumed.record("memory.erase", subject="after-restart")
    resumed.close()
    verdict = verify(path, ours(tmp_path))
    assert verdict.problems == [] and verdict.warnings == [] and verdict.events == 7
    assert resumed.resumed_intact  # every complete event was covered by its checkpoints


def test_forged_checkpoints_are_named(tmp_path: Path) -> None:
    import base64

    path = log(tmp_path, 2)
    rows = lines(path)
    forged = json.loads(rows[2])  # a checkpoint whose signature was made up
    forged["data"]["signature"] = base64.b64encode(b"\0" * 64).decode()
    write(path, [*rows[:2], json.dumps(forged), *rows[3:]])
    assert any("checkpoint 3" in p and "does not verify" in p for p in verify(path).problems)

    # A checkpoint validly signed by some other key counts only if that key is trusted.
    write(path, rows)
    other = tmp_path / "other"
    other.mkdir()
    intruder = AuditLog(path, "intruder")  # resumes: the chain itself holds together
    intruder.record("memory.export", subject="x")
    intruder._signer = FileSigner(other / "k.pem")  # and signs with a key of its own
    intruder.checkpoint()
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
    whole = verify(path, ours(tmp_path))
    seq, digest = whole.last
    assert seq == 11 and whole.exit_code == 0
    rows = lines(path)
    write(path, rows[:7])  # the last two events and their checkpoints cut off
    assert verify(path, ours(tmp_path)).exit_code == 0  # only an anchor shows the cut
    assert any("truncated" in p for p in verify(path, ours(tmp_path), [(seq, digest)]).problems)
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "verify", str(path), "--anchor",
         f"{seq}:{digest}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "ends at event 7" in done.stderr


WRITER = """
import sys
from pathlib import Path
from freehold_serving.audit import AuditLog
from freehold_serving.signing import FileSigner
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
    # Three crashes. Each restart resumes the chain, or, when the kill fell between an
    # event and its checkpoint, sets the file aside and starts a new, linked log: either
    # way no file has a broken chain.
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(tmp_path / "k.pem")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for file in [path, *tmp_path.glob("crash.rejected-*.jsonl")]:
            verdict = verify(file, ours(tmp_path))
            assert verdict.problems == [], verdict.problems
            assert verdict.events > 0
