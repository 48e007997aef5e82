"""Between kopf's watches and the reconciler: caches, a work queue, bounded workers.

controller-runtime's shape, in asyncio. kopf watches the parents and (server-side
filtered by our managed-by label) the children; its event handlers only update two
caches and put a key on the queue. The queue deduplicates keys and never hands one key
to two workers at once, so a burst of child events is one pass, and a resync can never
race a watch-triggered pass of the same object. Workers run the (blocking) reconciler
in a bounded thread pool. A slow resync re-queues every parent as a safety net.

Our own writes do not wake us: the reconciler reports the resourceVersions it wrote,
and an event carrying one of them is already known.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from freehold.reconciler import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ChildKey,
    KindController,
    Outcome,
    OwnedChild,
    Reconciler,
    controller_uid,
    shape_of,
)

if TYPE_CHECKING:
    from freehold.adapters.audit import OperatorAudit
    from freehold.adapters.metrics import OperatorMetrics
    from freehold.adapters.tracing import ReconcileTracing

log = logging.getLogger(__name__)
Key = tuple[str, str, str]  # (kind, namespace, name)
# What woke a key during a pass: a resourceVersion (a parent's event, or a deletion), or a
# child's event as (resourceVersion, child key, uid, shape), judged against the pass's writes.
Signal = str | tuple[str, ChildKey, str, str]


def _rv(body: Mapping[str, Any] | None) -> str:
    return str(((body or {}).get("metadata") or {}).get("resourceVersion") or "")


def _newer(candidate: str, current: str) -> bool:
    """resourceVersions are opaque, but every API server we know uses etcd's revision."""
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


class WorkQueue:
    """Keys to reconcile: deduplicated, delayed adds, one worker per key at a time.
    A key added while it is being processed is processed once more afterwards."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}

    def add(self, key: Key, delay: float = 0.0) -> None:
        if delay > 0:
            loop = asyncio.get_running_loop()
            due = loop.time() + delay
            timer = self._timers.get(key)
            if timer is not None:
                if timer[0] <= due:
                    return  # an earlier look is already planned
                timer[1].cancel()
            self._timers[key] = (due, loop.call_later(delay, self._fire, key))
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()

    def active(self, key: Key) -> bool:
        return key in self._active

    async def get(self) -> Key:
        key = await self._queue.get()
        self._pending.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Key) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._pending)


class Controller:
    def __init__(
        self,
        reconciler: Reconciler,
        kinds: list[KindController[Any]],
        *,
        workers: int,
        resync_seconds: float,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        metrics: OperatorMetrics | None = None,
        tracing: ReconcileTracing | None = None,
        audit: OperatorAudit | None = None,
    ) -> None:
        self._reconciler = reconciler
        self._metrics = metrics
        self._tracing = tracing
        self._audit = audit
        self._kinds = {k.api.kind: k for k in kinds}
        self._status_from = {c for k in kinds for c in k.status_from}
        self._workers = workers
        self._resync_seconds = resync_seconds
        self._backoff = (backoff_base, backoff_max)
        self._parents: dict[Key, dict[str, Any]] = {}
        # The keys of each (kind, namespace): a pass's lookups and wake-ups by place need
        # not walk every parent (with thousands of resources, that was every pass's cost).
        self._places: dict[tuple[str, str], set[Key]] = {}
        self._keys: dict[str, Key] = {}  # parent uid -> key
        # Parents owned by another parent (the EvalJobs a ModelDeployment's promotion
        # makes): owner uid -> their keys, woken when the owner changes.
        self._dependents: dict[str, set[Key]] = {}
        self._owned: dict[str, dict[ChildKey, OwnedChild]] = {}  # parent uid -> children
        self._seen: dict[Key, set[Signal]] = {}  # events that arrived during a pass
        self._deleted: set[str] = set()  # child uids we deleted (their DELETED is ours)
        self._failures: dict[Key, int] = {}
        self._full: set[Key] = set()  # keys the resync asked for: apply every child
        self._queue = WorkQueue()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self._tasks: list[asyncio.Task[None]] = []

    # -- watch events (on the event loop) -----------------------------------------------

    def parent_event(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: Key = (kind, str(meta.get("namespace")), str(meta.get("name")))
        uid = str(meta.get("uid"))
        if self._audit is not None:
            self._audit.resource(kind, event_type, body)
        owner = controller_uid(body)
        if owner is not None and (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
            # One of our kinds made by another (watched once, as a parent; a second,
            # label-filtered watch of the same resource would hide the users' own).
            self.child_event(event_type, body)
            if event_type == "DELETED":
                self._dependents.get(owner, set()).discard(key)
            else:
                self._dependents.setdefault(owner, set()).add(key)
        if getattr(self._kinds.get(kind), "judges_others", False):
            self._rejudge(kind, body, event_type)
        woken = getattr(self._kinds.get(kind), "wakes", ())
        if woken:
            self._wake_others(kind, body, event_type, woken)
        if event_type == "DELETED":
            self._parents.pop(key, None)
            self._places.get(key[:2], set()).discard(key)
            self._keys.pop(uid, None)
            self._owned.pop(uid, None)
            self._failures.pop(key, None)
            self._queue.forget(key)
            return
        rv = _rv(body)
        known = self._parents.get(key)
        if known is not None and _rv(known) == rv:
            return  # our own write, already in the cache
        if known is None or _newer(rv, _rv(known)) or _uid(known) != uid:
            self._parents[key] = copy.deepcopy(dict(body))
            self._places.setdefault(key[:2], set()).add(key)
        self._keys[uid] = key
        self._wake(key, rv)
        for dependent in self._dependents.get(uid, ()):
            self._queue.add(dependent)

    def _rejudge(self, kind: str, body: Mapping[str, Any], event_type: str | None) -> None:
        """A SovereigntyPolicy came, changed or went: every other resource is judged
        again (its PolicyCompliant). Only on a change of what is wanted, not on status."""
        if not self._wants_changed(kind, body, event_type):
            return
        for other in list(self._parents):
            if other[0] != kind:
                self._queue.add(other)

    def _wants_changed(self, kind: str, body: Mapping[str, Any], event_type: str | None) -> bool:
        """Whether an event changes what a resource wants (it came, went, or its spec's
        generation moved), as the cache held it before the event: not a status write."""
        meta = body.get("metadata") or {}
        known = self._parents.get((kind, str(meta.get("namespace")), _name(body)))
        return (
            event_type == "DELETED"
            or known is None
            or (known.get("metadata") or {}).get("generation") != meta.get("generation")
        )

    def _wake_others(
        self, kind: str, body: Mapping[str, Any], event_type: str | None, kinds: tuple[str, ...]
    ) -> None:
        """A resource others build from changed what it wants (or went): the resources of
        `kinds` in its namespace are reconciled again (a budgeted ModelRouter decides who
        may call its target ModelDeployments). Not on status-only changes."""
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace"))
        known = self._parents.get((kind, namespace, _name(body))) or {}
        going = bool((known.get("metadata") or {}).get("deletionTimestamp")) != bool(
            meta.get("deletionTimestamp")
        )
        if not going and not self._wants_changed(kind, body, event_type):
            return
        for other_kind in kinds:
            for other in list(self._places.get((other_kind, namespace), ())):
                self._queue.add(other)

    def watched(self, kind: str, namespace: str) -> list[dict[str, Any]] | None:
        """The objects of one of our kinds in a namespace, as the watch holds them (read
        from worker threads: one atomic copy); None for a kind this controller does not
        watch."""
        if kind not in self._kinds:
            return None
        keys = list(self._places.get((kind, namespace), ()))
        found = (self._parents.get(key) for key in keys)
        return [body for body in found if body is not None]

    def policies(self) -> list[dict[str, Any]]:
        """The SovereigntyPolicies held (read from worker threads: one atomic copy)."""
        return self.watched("SovereigntyPolicy", "None") or []  # cluster-scoped: no namespace

    def child_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
            return
        owner = controller_uid(body)
        if owner is None:
            return
        child_uid = str(meta.get("uid"))
        ck: ChildKey = (str(body.get("apiVersion")), str(body.get("kind")), str(meta.get("name")))
        children = self._owned.setdefault(owner, {})
        rv = _rv(body)
        if event_type == "DELETED":
            if children.get(ck) is not None and children[ck].uid == child_uid:
                del children[ck]
            if child_uid in self._deleted:
                self._deleted.discard(child_uid)
                return  # we deleted it (pruned)
            signal: Signal = f"deleted:{child_uid}"
        else:
            previous = children.get(ck)
            if previous is not None and previous.resource_version == rv:
                return  # what we wrote ourselves
            shape = shape_of(body)
            if (
                previous is None
                or previous.uid != child_uid
                or _newer(rv, previous.resource_version)
            ):
                # Our intent outlives a newer version of the same shape (another controller
                # wrote its status): the next recheck need not apply the same intent again.
                same = (
                    previous is not None and previous.uid == child_uid and previous.shape == shape
                )
                intent = previous.intent if previous is not None and same else ""
                children[ck] = OwnedChild(ck[0], ck[1], ck[2], child_uid, rv, shape, intent)
            if (
                previous is not None
                and previous.uid == child_uid
                and previous.shape == shape
                and ck[1] not in self._status_from
            ):
                return  # another controller's status update: nothing to repair or read
            signal = (rv, ck, child_uid, shape)
        key = self._keys.get(owner)
        if key is not None:
            self._wake(key, signal)

    def _wake(self, key: Key, signal: Signal) -> None:
        if self._queue.active(key):
            # Decided after the pass: our own writes are not a reason to look again.
            self._seen.setdefault(key, set()).add(signal)
        else:
            self._queue.add(key)

    # -- workers ------------------------------------------------------------------------

    async def start(self) -> None:
        for n in range(self._workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"reconcile-{n}"))
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._audit is not None:
            self._audit.close()  # flush and sign what is queued

    async def _resync(self) -> None:
        # A safety net only: watches bring changes within a second. This catches what a
        # watch cannot see (an object changed outside our label selector, say).
        while True:
            await asyncio.sleep(self._resync_seconds)
            for key in list(self._parents):
                self._full.add(key)
                self._queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            try:
                await self._process(key)
            except Exception:  # a bug must not stop the worker: log, back off, go on
                log.exception("reconcile of %s %s/%s failed", *key)
                self._retry(key)
            finally:
                self._queue.done(key)

    def _retry(self, key: Key) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        base, cap = self._backoff
        self._queue.add(key, min(cap, base * 2 ** (failures - 1)))

    async def _process(self, key: Key) -> None:
        body = self._parents.get(key)
        if body is None:
            return
        kind = self._kinds[key[0]]
        uid = _uid(body)
        owned = list(self._owned.get(uid, {}).values())
        if key in self._full:  # the safety net trusts no cached intent: every child applied
            self._full.discard(key)
            owned = [replace(child, intent="") for child in owned]
        self._seen[key] = set()
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        with contextlib.ExitStack() as traced:
            span = traced.enter_context(self._tracing.span(*key)) if self._tracing else None
            try:
                outcome = await loop.run_in_executor(
                    self._pool, self._reconciler.reconcile, kind, copy.deepcopy(body), owned
                )
            except Exception:
                if self._metrics is not None:
                    self._metrics.observe(key[0], time.perf_counter() - began, "error", None, [])
                raise
            finally:
                seen = self._seen.pop(key, set())
            if span is not None and self._tracing is not None:
                self._tracing.record(span, outcome)
        self._observe(key, outcome, time.perf_counter() - began)
        children = self._owned.setdefault(uid, {})
        ours = set()
        for child in outcome.applied:
            ck = (child.api_version, child.kind, child.name)
            current = children.get(ck)
            if (
                current is None
                or current.uid != child.uid
                or not _newer(current.resource_version, child.resource_version)
            ):
                children[ck] = child  # (the same version as a watch saw: with our intent)
            ours.add(child.resource_version)
        for gone in outcome.deleted:
            self._deleted.add(gone)
            for ck, child in list(children.items()):
                if child.uid == gone:
                    del children[ck]
            ours.add(f"deleted:{gone}")
        if outcome.parent is not None:
            written = _rv(outcome.parent)
            ours.add(written)
            cached = self._parents.get(key)
            if cached is not None and _uid(cached) == uid and _newer(written, _rv(cached)):
                self._parents[key] = outcome.parent
        if not all(self._settled(signal, ours, outcome.applied) for signal in seen):
            self._queue.add(key)  # something else changed during the pass
        if outcome.retry:
            self._retry(key)
        else:
            self._failures.pop(key, None)
            if outcome.requeue_after is not None:
                self._queue.add(key, outcome.requeue_after)

    def _settled(self, signal: Signal, ours: set[str], applied: list[OwnedChild]) -> bool:
        """Whether an event seen during a pass needs no further pass: our own write, a
        child version our apply superseded, or another controller's status update of a
        child whose status we do not read (the PodDisruptionBudget controller's, say:
        under load it lands while the pass that created the child is still running)."""
        if isinstance(signal, str):
            return signal in ours
        rv, ck, uid, shape = signal
        if rv in ours:
            return True
        mine = next(
            (c for c in applied if (c.api_version, c.kind, c.name) == ck and c.uid == uid), None
        )
        if mine is None:
            return False
        if not _newer(rv, mine.resource_version):
            return True  # our apply came after it
        return mine.shape == shape and ck[1] not in self._status_from

    def _observe(self, key: Key, outcome: Outcome, seconds: float) -> None:
        """What a pass did, for the metrics and the audit log."""
        if self._metrics is not None:
            problem = outcome.problem
            result = "retry" if outcome.retry else ("problem" if problem else "ok")
            self._metrics.observe(
                key[0], seconds, result, problem.reason if problem else None, outcome.repaired
            )
        if self._audit is not None:
            self._audit.outcome(key, outcome)

    # -- introspection (tests, metrics) --------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def resources(self) -> list[tuple[str, dict[str, Any]]]:
        """(kind, body) of every resource held, as last seen or written: read from the
        metrics thread, so a copy of the list is taken in one step (atomic under the GIL)."""
        return [(key[0], body) for key, body in list(self._parents.items())]


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name"))


def _uid(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid"))
