"""Subject affinity between a PostgreSQL store's replicas: each subject's searches reach
one replica, which alone needs that subject's indexes in memory.

Why: any replica can answer any search (it builds the subject's indexes from the
database and follows other replicas' writes), but then every replica ends up holding
every searched subject (4.5 GB per replica at a million records), and scale-out adds
CPU but not memory. With affinity, N replicas hold about 1/N of the indexes each.

How:
- Membership lives in the database the replicas already share: each replica writes a
  row (name, address) every BEAT seconds, stamped with the database's clock (no trust in
  pod clocks), and counts the rows seen within TTL seconds as live.
- A subject's owner is the live replica with the highest hash of (replica, subject tag)
  (rendezvous hashing): every replica computes the same owner from the same rows, and
  a replica joining or leaving moves only the subjects it gains or held.
- A search for a subject owned elsewhere is sent to the owner's pod address with the
  query's vector already computed, as a peer request MACed with a key derived from the
  store key (which only the store's replicas hold): the owner trusts the tenant named in
  it and answers from its indexes. If the owner cannot be reached, this replica answers
  itself (correct, only colder) and leaves that owner out until its row expires.
Writes go to any replica: the owner follows them through the subject revision as before.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freehold_serving.memory.database import Database

log = logging.getLogger(__name__)

BEAT = 5.0  # seconds between a replica's membership writes
TTL = 15.0  # a replica not seen for this long is not a member (three missed beats)
PEER_PATH = "/v1/memory/peer/search"
REPLICA_HEADER = "X-Freehold-Memory-Replica"  # on a search answer: whose indexes answered
PEER_WINDOW = 30.0  # seconds a peer request's MAC is accepted for
_NOW_MICROS = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"


@dataclass(frozen=True, order=True)
class Member:
    name: str
    address: str  # host:port of the replica's HTTP server


def owner(tag: str, members: list[Member]) -> Member | None:
    """The member that owns the subject `tag` (rendezvous hashing), or None without
    members."""
    if not members:
        return None
    return max(
        members,
        key=lambda m: (hashlib.sha256(f"{m.name}\0{tag}".encode()).digest()[:8], m.name),
    )


class Membership:
    """This replica's row in the shared `replicas` table and its view of the others."""

    def __init__(
        self,
        database: Database,
        address: str,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A name per process: a restarted pod is a new member, its old row expires.
        self.me = Member(name or f"{os.uname().nodename}-{os.urandom(4).hex()}", address)
        self._db = database
        self._clock = clock
        self._lock = threading.Lock()
        self._members: list[Member] = []
        self._unreachable: dict[str, float] = {}  # name -> until (clock)

    def beat(self) -> list[Member]:
        """Say this replica is here and read who else is (every BEAT seconds)."""
        self._db.execute(
            f"INSERT INTO replicas (name, address, seen_at) VALUES (?, ?, {_NOW_MICROS})"
            " ON CONFLICT (name) DO UPDATE SET address = excluded.address,"
            " seen_at = excluded.seen_at",
            (self.me.name, self.me.address),
        )
        rows = self._db.rows(
            f"SELECT name, address FROM replicas WHERE seen_at > {_NOW_MICROS} - ? ORDER BY name",
            (int(TTL * 1_000_000),),
        )
        # Rows long gone (a day) are removed by whoever sees them.
        self._db.execute(
            f"DELETE FROM replicas WHERE seen_at < {_NOW_MICROS} - ?", (86_400_000_000,)
        )
        members = [Member(str(r["name"]), str(r["address"])) for r in rows]
        with self._lock:
            self._members = members
        return members

    def leave(self) -> None:
        self._db.execute("DELETE FROM replicas WHERE name = ?", (self.me.name,))

    def members(self) -> list[Member]:
        now = self._clock()
        with self._lock:
            return [
                m
                for m in self._members
                if m == self.me or self._unreachable.get(m.name, 0.0) <= now
            ]

    def owner_of(self, tag: str) -> Member | None:
        """The replica a search of `tag` belongs to, or None when it is this one (or no
        membership has been read yet)."""
        found = owner(tag, self.members())
        return None if found is None or found == self.me else found

    def unreachable(self, member: Member) -> None:
        """Leave `member` out until its row would expire."""
        log.warning(
            "memory replica %s (%s) did not answer: searching here", member.name, member.address
        )
        with self._lock:
            self._unreachable[member.name] = self._clock() + TTL


def peer_url(address: str) -> str:
    """The peer search URL of a replica at host:port (an IPv6 host in brackets)."""
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{PEER_PATH}"


def sign_peer(key: bytes, tenant: str, body: bytes, now: float) -> dict[str, str]:
    stamp = f"{now:.3f}"
    mac = hmac.new(key, _message(stamp, tenant, body), hashlib.sha256).hexdigest()
    return {
        "x-freehold-peer-tenant": tenant,
        "x-freehold-peer-time": stamp,
        "x-freehold-peer-mac": mac,
    }


def verify_peer(key: bytes, headers: Any, body: bytes, now: float) -> str | None:
    """The tenant a peer request speaks for, or None if its MAC or time is not good."""
    tenant = headers.get("x-freehold-peer-tenant")
    stamp = headers.get("x-freehold-peer-time")
    mac = headers.get("x-freehold-peer-mac")
    if not tenant or not stamp or not mac:
        return None
    try:
        age = abs(now - float(stamp))
    except ValueError:
        return None
    expected = hmac.new(key, _message(stamp, tenant, body), hashlib.sha256).hexdigest()
    if age > PEER_WINDOW or not hmac.compare_digest(expected, mac):
        return None
    return str(tenant)


def _message(stamp: str, tenant: str, body: bytes) -> bytes:
    return b"\n".join((stamp.encode(), tenant.encode(), hashlib.sha256(body).digest()))
