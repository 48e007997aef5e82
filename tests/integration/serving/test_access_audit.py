"""Inference access records on a real model replica: one hash-chained, signed event per
request answered or refused (key id, tenant, model digest, tokens, latency, status), shipped
over OTLP as logs; and a canary in prompts and in the API key never reaches the audit file,
the metrics, the spans or the exported logs (captureContent is off).

The OTLP receiver stands in for a collector (tests/otlp_receiver.py); the exporters are the
OpenTelemetry SDK's own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from freehold_serving.audit import verify
from freehold_serving.key_records import key_id
from freehold_serving.signing import FileSigner
from tests.integration.serving.conftest import API_KEY, Stack

pytestmark = pytest.mark.slow
CANARY = "canary-5c1e-pii"


def access_events(stack: Stack) -> list[dict[str, Any]]:
    events = []
    for path in sorted((stack.audit_dir / "access").glob("*.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines()]
    return events


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_access_records_are_chained_signed_shipped_and_hold_no_content(stack: Stack) -> None:
    base = stack.base("locked")
    good = {"Authorization": f"Bearer {API_KEY}"}
    chat = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": f"My id is {CANARY}. Say hi."}],
        "max_tokens": 6,
    }
    before = len(access_events(stack))
    assert httpx.post(f"{base}/chat/completions", json=chat, headers=good, timeout=120).is_success
    with httpx.stream(
        "POST",
        f"{base}/completions",
        json={"model": "gemma-3-270m", "prompt": CANARY, "max_tokens": 4, "stream": True},
        headers=good,
        timeout=120,
    ) as streamed:
        assert streamed.status_code == 200
        for _ in streamed.iter_lines():
            pass
    wrong = {"Authorization": f"Bearer {CANARY}"}  # a "secret" presented as a key
    assert httpx.post(f"{base}/chat/completions", json=chat, headers=wrong).status_code == 401
    assert httpx.post(f"{base}/chat/completions", json=chat).status_code == 401
    unknown = {**chat, "model": "nope"}
    assert httpx.post(f"{base}/chat/completions", json=unknown, headers=good).status_code == 404

    events = wait_for(
        lambda: (
            [e for e in access_events(stack)[before:] if e["type"] == "inference.access"][-5:]
            if len([e for e in access_events(stack)[before:] if e["type"] == "inference.access"])
            >= 5
            else None
        )
    )
    assert events, access_events(stack)[before:]
    answered, streamed_rec, bad_key, no_key, unknown_model = events
    mine = key_id(API_KEY)
    assert (
        answered["data"]["keyId"] == mine and answered["data"]["tenant"] == "primary"
    )  # the Vault field
    assert answered["data"]["status"] == 200 and answered["data"]["operation"] == "chat"
    assert answered["data"]["outputTokens"] > 0 and answered["data"]["inputTokens"] > 0
    assert answered["data"]["modelDigest"].startswith("sha256:")
    assert answered["data"]["latencyMs"] > 0 and answered["data"]["ttftMs"] > 0
    assert streamed_rec["data"]["operation"] == "text_completion"
    assert streamed_rec["data"]["status"] == 200 and streamed_rec["data"]["outputTokens"] > 0
    assert bad_key["data"]["status"] == 401 and bad_key["data"]["keyId"] == key_id(CANARY)
    assert bad_key["data"]["tenant"] is None
    assert no_key["data"]["status"] == 401 and no_key["data"]["keyId"] is None
    assert unknown_model["data"]["status"] == 404 and unknown_model["data"]["keyId"] == mine

    # The chain verifies and a checkpoint signed with the replica's key covers it all.
    files = sorted((stack.audit_dir / "access").glob("*.jsonl"))
    trusted = {FileSigner(stack.audit_key).public_key()}
    assert wait_for(lambda: all(verify(f, trusted).exit_code == 0 for f in files)), [
        verify(f, trusted).warnings for f in files
    ]

    # Shipped over OTLP as log records whose body is the event itself.
    hashes = {e["hash"] for e in events}
    shipped = wait_for(
        lambda: (
            {
                json.loads(r.body.string_value)["hash"]
                for r in stack.otlp.logs()
                if r.event_name == "freehold.audit.inference.access"
            }
            >= hashes
        )
    )
    assert shipped, "access events were not exported as OTLP logs"

    # No prompt text and no key anywhere: audit files, metrics, spans, exported logs.
    assert wait_for(lambda: len(stack.otlp.spans()) > 0), "no spans exported"
    for path in files:
        assert CANARY not in path.read_text() and API_KEY not in path.read_text()
    metrics = httpx.get(f"{stack.root}/locked/metrics").text
    assert "freehold_audit_events_total" in metrics
    assert CANARY not in metrics and API_KEY not in metrics
    exported = stack.otlp.raw()
    assert CANARY.encode() not in exported and API_KEY.encode() not in exported


def test_a_restarted_writer_resumes_the_chain(tmp_path: Path) -> None:
    """Unit-sized, but here beside its subject: a second writer on the same slot (a
    restarted replica) continues the chain instead of starting a new one."""
    from freehold_serving.access import AccessLog
    from tests.integration.serving.conftest import example_args, with_updates

    audit = {"directory": str(tmp_path), "signing_key_file": str(tmp_path / "k.pem")}
    args = with_updates(example_args(), audit=audit)
    assert args.audit is not None
    for _ in range(2):
        log = AccessLog(args, args.audit)
        log.record(operation="chat", model="m", key=None, tenant=None, status=200, latency_s=0.1)
        log.close()
    (path,) = (tmp_path / "access").glob("*.jsonl")
    verdict = verify(path, {FileSigner(tmp_path / "k.pem").public_key()})
    # log.opened, two events, two checkpoints: one chain, no file set aside
    assert verdict.exit_code == 0 and verdict.events == 5
    assert list((tmp_path / "access").glob("*.rejected-*")) == []


def test_memory_audit_events_are_shipped_over_otlp_too(stack: Stack) -> None:
    from tests.integration.serving.conftest import MEMORY_KEYS

    with httpx.Client(
        base_url=stack.memory,
        headers={"Authorization": f"Bearer {MEMORY_KEYS['acme']}"},
        timeout=120,
    ) as c:
        added = c.post("/records", json={"records": [{"subject": "u-otlp", "text": CANARY}]})
        assert added.is_success, added.text
        assert c.post("/erase", json={"subject": "u-otlp"}).is_success
    log = stack.memory_dir / "audit" / "memory.jsonl"
    erased = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if json.loads(line)["type"] == "memory.erase"
    ][-1]

    def shipped() -> bool:
        return any(
            json.loads(r.body.string_value)["hash"] == erased["hash"]
            for r in stack.otlp.logs()
            if r.event_name == "freehold.audit.memory.erase"
        )

    assert wait_for(shipped), "the erasure was not exported as an OTLP log"
    assert CANARY.encode() not in stack.otlp.raw() and CANARY not in log.read_text()
