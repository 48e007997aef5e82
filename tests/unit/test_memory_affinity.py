"""Subject affinity's pure parts (memory/affinity.py): who owns a subject, and the MAC on
requests between replicas."""

from __future__ import annotations

from collections import Counter

from freehold_serving.memory.affinity import (
    PEER_WINDOW,
    Member,
    owner,
    peer_url,
    sign_peer,
    verify_peer,
)

TAGS = [f"tag-{i}" for i in range(3000)]


def members(n: int) -> list[Member]:
    return [Member(f"replica-{i}", f"10.0.0.{i}:8000") for i in range(n)]


def test_every_replica_owns_a_fair_share_and_agrees_on_the_owner() -> None:
    three = members(3)
    shares = Counter(owner(tag, three) for tag in TAGS)
    assert set(shares) == set(three)
    assert all(800 < count < 1200 for count in shares.values()), shares
    # The order a replica lists its members in does not matter.
    assert all(owner(t, three) == owner(t, list(reversed(three))) for t in TAGS[:200])
    assert owner("tag-1", []) is None


def test_a_replica_joining_or_leaving_moves_only_its_own_subjects() -> None:
    three, four = members(3), members(4)
    newcomer = four[3]
    for tag in TAGS:
        before, after = owner(tag, three), owner(tag, four)
        assert after in (before, newcomer)
    gone = three[1]
    for tag in TAGS:
        before, after = owner(tag, three), owner(tag, [three[0], three[2]])
        assert before in (after, gone)


def test_a_peer_request_is_trusted_only_with_its_mac_body_tenant_and_time() -> None:
    key, body = b"k" * 32, b'{"subject":"alice"}'
    headers = sign_peer(key, "acme", body, 1000.0)
    assert verify_peer(key, headers, body, 1000.0 + PEER_WINDOW - 1) == "acme"
    assert verify_peer(key, headers, body, 1000.0 + PEER_WINDOW + 1) is None  # too old
    assert verify_peer(b"x" * 32, headers, body, 1000.0) is None  # another store's key
    assert verify_peer(key, headers, b'{"subject":"bob"}', 1000.0) is None
    assert verify_peer(key, {**headers, "x-freehold-peer-tenant": "other"}, body, 1000.0) is None
    assert verify_peer(key, {**headers, "x-freehold-peer-time": "soon"}, body, 1000.0) is None
    assert verify_peer(key, {}, body, 1000.0) is None


def test_peer_urls_bracket_ipv6_hosts() -> None:
    assert peer_url("10.1.2.3:8000") == "http://10.1.2.3:8000/v1/memory/peer/search"
    assert peer_url("fd00::7:8000") == "http://[fd00::7]:8000/v1/memory/peer/search"
    assert peer_url("[fd00::7]:8000") == "http://[fd00::7]:8000/v1/memory/peer/search"
