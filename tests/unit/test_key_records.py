"""Managed keys: the records `freehold keys` writes, and how servers read them back."""

from __future__ import annotations

import hashlib
import time

import pytest

from freehold.keys_cli import KeysError, find, rotated, rows
from freehold_serving.auth import ApiKeys
from freehold_serving.key_records import KeyBudget, KeyRecord, key_id, new_key, record_for
from freehold_serving.vault_keys import parse_key_set


def test_a_record_holds_the_digest_never_the_key() -> None:
    key = new_key()
    record = record_for(key, "acme", models=["assistant"], budget=KeyBudget(tokens=500))
    stored = record.model_dump_json()
    assert key not in stored and key[3:] not in stored
    assert record.sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert record.id == key_id(key)  # the id the access records carry
    assert key.startswith("fh_") and len(key) > 40


def test_servers_accept_managed_and_hand_written_keys_and_honour_expiry() -> None:
    managed, soon = new_key(), new_key()
    fields = {
        record_for(managed, "acme", models=["assistant"]).id: record_for(
            managed, "acme", models=["assistant"]
        ).model_dump(exclude_none=True),
        key_id(soon): record_for(soon, "acme", expires_in=60).model_dump(exclude_none=True),
        "globex.ci": "hand-written-key-1",
    }
    keys = ApiKeys(parse_key_set(fields))
    info = keys.lookup(managed)
    assert info is not None and info.tenant == "acme" and info.id == key_id(managed)
    assert info.allows("assistant") and not info.allows("other") and info.allows(None, "assistant")
    hand = keys.lookup("hand-written-key-1")
    assert hand is not None and hand.tenant == "globex" and hand.allows("anything")
    assert keys.lookup(soon) is not None
    assert keys.lookup(soon, now=time.time() + 61) is None  # exact, not at the next refresh
    assert keys.lookup("fh_unknown") is None


def test_a_damaged_record_revokes_that_key_only() -> None:
    good = new_key()
    fields = {
        key_id(good): record_for(good, "acme").model_dump(exclude_none=True),
        "key:000000000000": {"sha256": "not-hex", "tenant": "acme"},
    }
    keys = ApiKeys(parse_key_set(fields))
    assert len(keys) == 1 and keys.lookup(good) is not None


def test_rotation_keeps_tenant_allowlist_and_budget_and_ends_the_old_key() -> None:
    old, fresh = new_key(), new_key()
    record = record_for(old, "acme", name="ci", models=["a"], budget=KeyBudget(tokens=9))
    fields = {record.id: record.model_dump(exclude_none=True), "other": "x"}
    overlapping = rotated(fields, record.id, fresh, 3600)
    kept = KeyRecord.model_validate(overlapping[key_id(fresh)])
    assert (kept.tenant, kept.name, kept.models, kept.budget) == (
        "acme",
        "ci",
        ["a"],
        record.budget,
    )
    assert overlapping[record.id]["expires"] and overlapping["other"] == "x"
    at_once = rotated(fields, record.id.removeprefix("key:"), fresh, 0)
    assert record.id not in at_once and key_id(fresh) in at_once
    with pytest.raises(KeysError, match="written by hand"):
        rotated(fields, "other", fresh, 0)
    with pytest.raises(KeysError, match="no key"):
        find(fields, "key:ffffffffffff")


def test_listing_shows_no_key_and_no_digest() -> None:
    key = new_key()
    record = record_for(key, "acme", budget=KeyBudget(cost=2.5, period="month"))
    listed = rows({record.id: record.model_dump(exclude_none=True), "globex.ci": "secret-1"})
    text = repr(listed)
    assert key not in text and record.sha256 not in text and "secret-1" not in text
    assert sorted(r["tenant"] for r in listed) == ["acme", "globex"]
    assert {r["managed"] for r in listed} == {True, False}
