"""Prefix-aware routing for llama.cpp replicas, on Ray Serve's request-router interface.

A llama.cpp replica keeps the KV states of the conversations it served
(engines/prompt_states.py); a conversation's next turn is cheap only on that replica.
The router remembers, per block of prompt text (a chat message; a stretch of a
completion's prompt), which replica last received it, and
sends a request to the replica holding the longest remembered prefix of its text, unless
that replica is busier than the least loaded one by more than `imbalance` requests.
Requests sharing nothing remembered but what many share (a new conversation, with
the common system prompt) go to the least loaded replica, so load spreads.

The memory is per router (one per calling process: the front has one replica), kept in
the caller's process: no actor call on the routing path.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from freehold_serving.engines.base import GenerationJob

PROMPT_BLOCK_CHARS = 64  # a completion's prompt is remembered in blocks of this size
MAX_BLOCKS = 512  # beyond that, a longer match changes nothing
CLASS_PATH = "freehold_serving.engines.prefix_routing:PrefixAffinityRouter"


def request_blocks(job: GenerationJob) -> list[str]:
    """The text the engine's prompt is made from, in blocks: a chat's messages (roles
    included) one by one; a completion's prompt in whole blocks of PROMPT_BLOCK_CHARS."""
    if job.messages is not None:
        return [f"{role}\x1f{content}\x1e" for role, content in job.messages[:MAX_BLOCKS]]
    prompt = job.prompt or ""
    size = PROMPT_BLOCK_CHARS
    whole = min(len(prompt) // size, MAX_BLOCKS)
    return [prompt[i * size : (i + 1) * size] for i in range(whole)]


def block_hashes(blocks: list[str]) -> Iterator[tuple[bytes, int]]:
    """One hash per block, covering every block before it too, with the characters
    covered so far."""
    digest = b""
    covered = 0
    for block in blocks:
        digest = hashlib.blake2b(digest + block.encode("utf-8"), digest_size=12).digest()
        covered += len(block)
        yield digest, covered


@dataclass
class _Block:
    owner: str
    # The blocks seen right after this one (at most two kept: two means a branch).
    following: set[bytes] = field(default_factory=set)


class PrefixMemory:
    """Which replica last received each remembered prefix, least recently used first
    out (within `capacity` blocks).

    A conversation grows in a line: each turn extends the last. A prefix many
    conversations share (a system prompt) is where the line branches; holding it says
    nothing about where a new conversation belongs, so a match that ends at a branch is
    not followed."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()
        self._capacity = capacity

    def remember(self, blocks: list[str], replica: str) -> None:
        previous: _Block | None = None
        for digest, _ in block_hashes(blocks):
            block = self._blocks.get(digest)
            if block is None:
                block = self._blocks[digest] = _Block(replica)
            else:
                block.owner = replica
                self._blocks.move_to_end(digest)
            if previous is not None and len(previous.following) < 2:
                previous.following.add(digest)
            previous = block
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)

    def longest(self, blocks: list[str], replicas: set[str]) -> tuple[str | None, int]:
        """The replica (among `replicas`) holding the longest prefix, and its length in
        characters; (None, 0) when nothing is held past a branch."""
        found: str | None = None
        matched = 0
        last: _Block | None = None
        for digest, covered in block_hashes(blocks):
            block = self._blocks.get(digest)
            if block is None:
                break  # later blocks cover this one: none of them can be remembered
            last = block
            if block.owner in replicas:
                found, matched = block.owner, covered
        if last is None or len(last.following) > 1:
            return None, 0
        return found, matched

    def forget(self, replica: str) -> None:
        for digest in [d for d, b in self._blocks.items() if b.owner == replica]:
            del self._blocks[digest]


def _job(pending: PendingRequest | None) -> GenerationJob | None:
    if pending is None:
        return None
    for arg in pending.args:
        if isinstance(arg, GenerationJob):
            return arg
    return None


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve request router: prefix affinity with a load guard (see module doc).

    Requests are matched to routing results by their own id (Ray's default), not in
    FIFO order: which replica is right depends on the request."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._imbalance = int(kwargs.get("imbalance", 2))
        self._memory = PrefixMemory(int(kwargs.get("capacity_blocks", 100_000)))

    def _queue_len(self, replica: RunningReplica) -> int | None:
        value: int | None = self._replica_queue_len_cache.get(replica.replica_id)
        return value

    def _affine(
        self, job: GenerationJob, candidates: list[RunningReplica]
    ) -> RunningReplica | None:
        blocks = request_blocks(job)
        if not blocks:
            return None
        by_id = {r.replica_id.to_full_id_str(): r for r in candidates}
        owner, _ = self._memory.longest(blocks, set(by_id))
        if owner is None:
            return None
        chosen = by_id[owner]
        mine = self._queue_len(chosen)
        others = [
            q for r in candidates if r is not chosen and (q := self._queue_len(r)) is not None
        ]
        if mine is not None and others and mine - min(others) > self._imbalance:
            return None  # the holder is too busy: waiting would cost more than evaluating
        return chosen

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        job = _job(pending_request)
        chosen = self._affine(job, candidate_replicas) if job is not None else None
        rest = [r for r in candidate_replicas if r is not chosen]
        random.shuffle(rest)  # equal queue lengths: no replica is everyone's first pick
        if chosen is None:
            return [rest]  # the least loaded of all (Ray probes what it does not know)
        return [[chosen], rest]  # the holder, unless its queue is full

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        job = _job(pending_request)
        if job is not None:
            self._memory.remember(request_blocks(job), replica_id.to_full_id_str())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._memory.forget(replica_id.to_full_id_str())
