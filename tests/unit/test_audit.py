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
