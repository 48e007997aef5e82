"""ONE reconciler for every kind: desired children -> server-side apply, prune by owner,
external resources behind a finalizer, Events, and status only when it changed.

A kind is a small module (freehold/kinds/) that says what it wants in pure functions;
everything that touches the API or Vault happens here, through adapters. A pass never
raises: it returns an `Outcome` that says when to look again, and the work queue
(freehold/controller.py) retries with backoff. It is level-based: it reads the parent it
is given and the children it owns, never the event that woke it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from freehold.adapters.kubernetes import KubeApi, KubeError, Ref, ResourceType
from freehold.adapters.vault import VaultUnavailableError
from freehold.api.kinds import Kind as ApiKind
from freehold.conditions import Condition, condition, merge_conditions
from freehold.validation import FieldError, defaulted, validate

# A judge adds a condition to any resource it has an opinion on (None: no opinion). It gets
# the resource as stored (defaulted) and a reader of its namespace's labels.
Judge = Callable[[dict[str, Any], Callable[[], Mapping[str, str]]], Condition | None]

log = logging.getLogger(__name__)
VALIDATED_CACHE = 4096  # resources whose current generation was judged valid or not

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "freehold-operator"
OWNER_UID_LABEL = "freehold.dev/owner-uid"
OWNER_KIND_LABEL = "freehold.dev/owner-kind"
# Delays, in seconds, of what is retried. Errors the user must fix are not retried
# until the spec changes (a watch event wakes the object then).
DEPENDENCY_DELAY = 15.0
SpecT = TypeVar("SpecT")
ChildKey = tuple[str, str, str]  # (apiVersion, kind, name)


@dataclass(frozen=True)
class Problem:
    """Why a pass could not make the cluster match the spec.

    `retry` False: the user must change something (a bad spec, a name taken by
    another object's owner, a feature this build lacks); True: a dependency is not ready
    or the API failed, and the work queue tries again with backoff."""

    reason: str
    message: str
    retry: bool


class WaitingError(Exception):
    """Raised by a kind's build: something it needs is not ready yet (a target that does
    not serve yet). Retried with backoff; nothing is applied or pruned meanwhile."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SpecProblemError(Exception):
    """Raised by a kind's `check`: the spec is valid for the schema but cannot be served."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Facts:
    """What the reconciler found out about the cluster, for builders that depend on it."""

    kuberay: bool
    # What a kind's probe read from its running workload this pass (None: not probed or
    # no answer). Only aggregate, non-secret data: it ends up in status.
    observed: Mapping[str, Any] | None = None
    # Objects the kind asked to read (its `lookups`), by the kind's own key: a list of
    # the objects found (empty: none). Read fresh every pass: level-based.
    related: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The parent's status as last written: for kinds whose outcome is a record (a
    # finished EvalJob's results outlive its pod).
    status: Mapping[str, Any] = field(default_factory=dict)

    def one(self, key: str) -> dict[str, Any] | None:
        found = self.related.get(key) or []
        return found[0] if found else None


@dataclass(frozen=True)
class Lookup:
    """An object (by name) or objects (by labels) in the parent's namespace that a kind
    reads to build or report (the ModelDeployment an EvalJob targets, a Job's pods)."""

    type: ResourceType
    name: str | None = None
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Probe:
    """A kind asks the reconciler to read `url` (JSON) for its status, every `every` s."""

    url: str
    every: float


class External(Protocol):
    """Something outside the cluster a resource needs (a Vault policy and role)."""

    @property
    def name(self) -> str: ...


class ExternalStore(Protocol):
    """The adapter that keeps externals: idempotent ensure and remove."""

    def check(self) -> None: ...
    def ensure(self, external: Any) -> bool: ...
    def remove(self, name: str) -> None: ...


@dataclass(frozen=True)
class Desired:
    """What a spec wants: child objects (plain manifests) and external resources."""

    children: list[dict[str, Any]]
    externals: list[Any] = field(default_factory=list)
    # Children that exist and stay as they are (not applied, not pruned): an immutable
    # child whose spec the builder would no longer reproduce (an EvalJob of the version
    # being served, made from an older template).
    keep: frozenset[ChildKey] = frozenset()


@dataclass(frozen=True)
class StatusReport:
    """A kind's own status: conditions (without times) and a few useful fields."""

    conditions: list[Condition]
    fields: dict[str, Any]
    # Look again in this many seconds though nothing we watch may change (a pod's
    # container restarting leaves its Deployment's status as it was).
    recheck_after: float | None = None


class KindController(Protocol, Generic[SpecT]):
    """One kind, as the reconciler sees it. Every method is pure."""

    api: ApiKind
    resource: ResourceType
    # The fixed prune scope: children of these types owned by the parent and not desired
    # are deleted. Never derived from the desired list (removing the last child of a type
    # would orphan it).
    child_types: tuple[ResourceType, ...]
    # Children whose status the kind's status reads (the serving workload): a status
    # change of another child (a PodDisruptionBudget's counters) is no reason for a pass.
    status_from: frozenset[str]
    finalizer: str | None  # only for externals; None when the kind has none

    def parse(self, manifest: dict[str, Any]) -> SpecT: ...
    def check(self, spec: SpecT, meta: Mapping[str, Any]) -> None: ...
    def build(self, spec: SpecT, meta: Mapping[str, Any], facts: Facts) -> Desired: ...
    # What to remove outside the cluster when the parent goes (given the whole parent:
    # what is removed may depend on its spec, as MemoryStore's deletionPolicy does).
    def external_names(self, parent: Mapping[str, Any]) -> list[str]: ...
    def status(
        self,
        spec: SpecT,
        meta: Mapping[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
    ) -> StatusReport: ...


@dataclass(frozen=True)
class OwnedChild:
    """A child the operator's watch cache saw with our owner reference. `shape` is what
    a pass would repair: generation (spec), labels, annotations and owner references."""

    api_version: str
    kind: str
    name: str
    uid: str
    resource_version: str
    shape: str = ""
    # A digest of what our apply sent, while the child is at the version that apply
    # returned (a watch event of any later version replaces it with none): the same intent
    # again needs no request.
    intent: str = ""


def shape_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    # The generation moves with every change of a spec; kinds without one (ConfigMap,
    # ServiceAccount, Service) have their content stand for it, so that an edit of a
    # ConfigMap's data is drift like any other.
    content = meta.get("generation")
    if content is None:
        rest = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
        content = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()
    return repr(
        (
            content,
            sorted((meta.get("labels") or {}).items()),
            sorted((meta.get("annotations") or {}).items()),
            [(r.get("uid"), r.get("controller")) for r in meta.get("ownerReferences") or []],
        )
    )


@dataclass
class Outcome:
    """What a pass did and when to look again (None: when something changes)."""

    requeue_after: float | None = None
    retry: bool = False  # a transient failure: back off
    applied: list[OwnedChild] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # uids
    parent: dict[str, Any] | None = None  # the parent as last written (status/finalizer)
    problem: Problem | None = None
    # Kinds of children created or changed back while the parent's spec had not changed
    # since the last pass (drift repaired): for the operator's metrics.
    repaired: list[str] = field(default_factory=list)
    # (created | updated | deleted, kind, name) of each child this pass changed, and
    # (written | removed, name) of each Vault policy and role: for the audit log.
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    vault: list[tuple[str, str]] = field(default_factory=list)


def intent_of(child: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()


def owner_reference(parent: Mapping[str, Any]) -> dict[str, Any]:
    meta = parent["metadata"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def stamp(child: dict[str, Any], parent: Mapping[str, Any]) -> dict[str, Any]:
    """Namespace, our labels and the one controller owner reference, on a built child."""
    meta = child.setdefault("metadata", {})
    if parent["metadata"].get("namespace"):  # a cluster-scoped parent has cluster children
        meta["namespace"] = parent["metadata"]["namespace"]
    labels = meta.setdefault("labels", {})
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    labels[OWNER_KIND_LABEL] = parent["kind"]
    labels[OWNER_UID_LABEL] = parent["metadata"]["uid"]
    meta["ownerReferences"] = [owner_reference(parent)]
    return child


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def child_key(obj: Mapping[str, Any]) -> ChildKey:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def invalid_spec_conditions(errors: Sequence[FieldError | str]) -> list[Condition]:
    message = "; ".join(str(e) for e in errors)
    return [
        condition("Ready", False, "InvalidSpec", f"fix the spec: {message}"),
        condition("Progressing", False, "InvalidSpec", "nothing is rolled out from it"),
        condition("Degraded", True, "InvalidSpec", message),
    ]


class Reconciler:
    def __init__(
        self,
        kube: KubeApi,
        externals: ExternalStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        prober: Callable[[str], Mapping[str, Any] | None] | None = None,
        judges: Sequence[Judge] = (),
        watched: Callable[[str, str], list[dict[str, Any]] | None] | None = None,
    ) -> None:
        self._kube = kube
        self._externals = externals
        self._clock = clock
        self._prober = prober
        # Extra conditions judged on every resource (PolicyCompliant: freehold.policy).
        self._judges = judges
        # (kind, namespace) -> the objects of one of our kinds the controller's watch holds,
        # or None when it holds none of that kind: a lookup of every object of a watched
        # kind is read there instead of listed from the API server on every pass.
        self._watched = watched
        self._validated: OrderedDict[tuple[str, int], list[FieldError]] = OrderedDict()
        self._validated_lock = threading.Lock()

    # -- the pass ----------------------------------------------------------------------

    def reconcile(
        self, kind: KindController[Any], parent: dict[str, Any], owned: Sequence[OwnedChild]
    ) -> Outcome:
        meta = parent["metadata"]
        outcome = Outcome(parent=None)
        try:
            if meta.get("deletionTimestamp"):
                self._finalize(kind, parent, outcome)
                return outcome
            errors = self._validate(parent)
            if errors:
                # Never prune or build from an invalid spec: what runs keeps running.
                self._write_status(parent, invalid_spec_conditions(errors), {}, outcome)
                self._event_on_ready_change(parent, outcome, "InvalidSpec", str(errors[0]))
                outcome.problem = Problem("InvalidSpec", "; ".join(map(str, errors)), False)
                return outcome
            spec = kind.parse(defaulted(parent))
            facts = Facts(
                kuberay=self._kube.serves("ray.io/v1", "rayservices"),
                status=parent.get("status") or {},
            )
            try:
                kind.check(spec, meta)
                facts = self._look_up(kind, spec, meta, facts)
                desired = kind.build(spec, meta, facts)
            except SpecProblemError as exc:
                refused = Problem(exc.reason, exc.message, retry=False)
                self._report(kind, spec, parent, facts, {}, refused, outcome)
                return outcome
            except WaitingError as exc:
                waiting = Problem(exc.reason, exc.message, retry=True)
                self._report(kind, spec, parent, facts, {}, waiting, outcome)
                return outcome
            problem = self._sync_externals(kind, parent, desired, outcome)
            if problem is not None:
                self._report(kind, spec, parent, facts, {}, problem, outcome)
                return outcome
            children, problem = self._apply_children(kind, parent, desired, owned, outcome)
            if problem is None:
                self._prune(parent, desired, owned, outcome)
            self._report(kind, spec, parent, facts, children, problem, outcome)
        except KubeError as exc:
            # The API server or the network: nothing the user can fix. Back off, retry.
            log.info("%s %s/%s: %s", parent["kind"], meta.get("namespace"), meta["name"], exc)
            outcome.retry = True
            outcome.problem = Problem("ApiError", str(exc), True)
        return outcome

    # -- steps -------------------------------------------------------------------------

    def _validate(self, parent: dict[str, Any]) -> list[FieldError]:
        """The CRD's schema and CEL rules, judged once per generation of a resource (a
        spec cannot change without a new generation; the rules cost a few ms a pass)."""
        meta = parent["metadata"]
        uid, generation = meta.get("uid"), meta.get("generation")
        if not uid or generation is None:
            return validate(parent)
        key = (str(uid), int(generation))
        with self._validated_lock:
            known = self._validated.get(key)
            if known is not None:
                self._validated.move_to_end(key)
                return known
        errors = validate(parent)
        with self._validated_lock:
            self._validated[key] = errors
            while len(self._validated) > VALIDATED_CACHE:
                self._validated.popitem(last=False)
        return errors

    def _judged(self, parent: dict[str, Any]) -> list[Condition]:
        """Conditions the registered judges add (PolicyCompliant, from the SovereigntyPolicy
        kind's judge): this pass knows no policy, only that judges see the resource as the
        API server stores it and may ask for its namespace's labels (read once a pass)."""
        if not self._judges:
            return []
        body = defaulted(parent)
        read: list[Mapping[str, str]] = []

        def namespace_labels() -> Mapping[str, str]:
            if not read:
                ns = self._kube.get(Ref("v1", "Namespace", None, parent["metadata"]["namespace"]))
                read.append(((ns or {}).get("metadata") or {}).get("labels") or {})
            return read[0]

        return [c for judge in self._judges if (c := judge(body, namespace_labels)) is not None]

    def _look_up(
        self, kind: KindController[Any], spec: Any, meta: Mapping[str, Any], facts: Facts
    ) -> Facts:
        lookups = getattr(kind, "lookups", None)  # optional: kinds that read other objects
        if lookups is None:
            return facts
        related: dict[str, list[dict[str, Any]]] = {}
        for key, lookup in lookups(spec, meta, facts).items():
            if lookup.name is not None:
                namespace = meta.get("namespace") if lookup.type.namespaced else None
                found = self._kube.get(
                    Ref(lookup.type.api_version, lookup.type.kind, namespace, lookup.name)
                )
                related[key] = [found] if found is not None else []
            else:
                held = (
                    self._watched(lookup.type.kind, str(meta.get("namespace")))
                    if self._watched is not None and not lookup.labels
                    else None
                )
                related[key] = (
                    held
                    if held is not None
                    else self._kube.list(lookup.type, meta.get("namespace"), lookup.labels or {})
                )
        return replace(facts, related=related)

    def _sync_externals(
        self, kind: KindController[Any], parent: dict[str, Any], desired: Desired, outcome: Outcome
    ) -> Problem | None:
        meta = parent["metadata"]
        has_finalizer = kind.finalizer in (meta.get("finalizers") or [])
        if not desired.externals:
            if has_finalizer:  # the spec stopped needing them: clean up now
                return self._remove_externals(kind, parent, outcome)
            return None
        if self._externals is None:
            return Problem(
                "VaultNotConfigured",
                f"this {parent['kind']} reads secrets from Vault, but the operator has no "
                "Vault address (chart value vault.address)",
                retry=True,
            )
        try:
            self._externals.check()
            if not has_finalizer and kind.finalizer:
                # Before anything exists outside the cluster, so a deletion always waits
                # for its cleanup.
                finalizers = [*(meta.get("finalizers") or []), kind.finalizer]
                outcome.parent = self._kube.patch_metadata(parent, {"finalizers": finalizers})
            for external in desired.externals:
                if self._externals.ensure(external):
                    outcome.vault.append(("written", external.name))
                    self._kube.post_event(
                        parent,
                        "Normal",
                        "VaultUpdated",
                        f"wrote Vault policy and role {external.name}",
                    )
        except VaultUnavailableError as exc:
            return Problem(exc.reason, exc.message, retry=True)
        return None

    def _remove_externals(
        self, kind: KindController[Any], parent: dict[str, Any], outcome: Outcome
    ) -> Problem | None:
        if self._externals is not None:
            try:
                for name in kind.external_names(parent):
                    self._externals.remove(name)
                    outcome.vault.append(("removed", name))
            except VaultUnavailableError as exc:
                return Problem(exc.reason, f"waiting for Vault to clean up: {exc.message}", True)
        current = outcome.parent or parent
        finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != kind.finalizer]
        outcome.parent = self._kube.patch_metadata(current, {"finalizers": finalizers})
        return None

    def _finalize(
        self, kind: KindController[Any], parent: dict[str, Any], outcome: Outcome
    ) -> None:
        """Deletion: children go through the garbage collector; we only clean up what lives
        outside the cluster, then let the object go. While Vault is down the finalizer
        holds, so nothing is left behind."""
        if kind.finalizer not in (parent["metadata"].get("finalizers") or []):
            return
        problem = self._remove_externals(kind, parent, outcome)
        if problem is not None:
            outcome.retry = True
            outcome.problem = problem
            log.info("finalizing %s: %s", parent["metadata"]["name"], problem.message)

    def _as_left(
        self,
        kind: KindController[Any],
        child: dict[str, Any],
        known: OwnedChild | None,
        intent: str,
    ) -> tuple[OwnedChild, dict[str, Any] | None] | None:
        """In a pass whose spec is unchanged: a child as our last apply left it, with our
        intent the same, needs no apply (a not-ready model's recheck writes nothing); one
        whose body is read for status is read from the API server's watch cache, where an
        apply of the same intent would cost the server a whole apply to say so. None: apply.
        (A new generation, and the controller's resync, apply every child: they catch what
        a missed watch event left in the cache.)"""
        if known is None or known.intent != intent:
            return None
        if child["kind"] not in kind.status_from:
            return known, None
        current = self._kube.get(Ref.of(child), cached=True)
        if (
            current is None
            or str(current["metadata"].get("uid")) != known.uid
            or shape_of(current) != known.shape
        ):
            return None  # gone, replaced or changed behind our back: apply
        rv = str(current["metadata"].get("resourceVersion", ""))
        return replace(known, resource_version=rv), current

    def _apply_children(
        self,
        kind: KindController[Any],
        parent: dict[str, Any],
        desired: Desired,
        owned: Sequence[OwnedChild],
        outcome: Outcome,
    ) -> tuple[dict[ChildKey, dict[str, Any]], Problem | None]:
        ours = {(c.api_version, c.kind, c.name): c for c in owned}
        uid = parent["metadata"]["uid"]
        live: dict[ChildKey, dict[str, Any]] = {}
        conflicts: list[str] = []
        changes: list[str] = []
        failures: list[str] = []
        transient = False
        # The spec is what the last pass saw: whatever it has to create or change now drifted.
        meta = parent["metadata"]
        steady = meta.get("generation") == (parent.get("status") or {}).get("observedGeneration")
        for child in desired.children:
            stamp(child, parent)
            key = child_key(child)
            known = ours.get(key)
            intent = intent_of(child)
            unchanged = self._as_left(kind, child, known, intent) if steady else None
            if unchanged is not None:
                owned_child, body = unchanged
                outcome.applied.append(owned_child)
                if body is not None:
                    live[key] = body
                continue
            if known is None:
                # Not in our cache: it may be a stranger's object with our name. Never
                # apply onto it (that would adopt it, and our deletion would take it away).
                # Read from the API server's watch cache: a stranger made in the same
                # instant could slip by, as it could between any read and write.
                existing = self._kube.get(Ref.of(child), cached=True)
                if existing is not None and controller_uid(existing) != uid:
                    conflicts.append(f"{key[1]} {key[2]}")
                    continue
            try:
                result = self._kube.apply(child)
            except KubeError as exc:
                # Keep going with the other children and report it in status: a 422 (an
                # immutable field, a limit) needs a different spec; a 500 (say, the
                # Service IP range is full) is retried with backoff.
                failures.append(f"{key[1]} {key[2]}: {exc.message}")
                transient = transient or exc.transient
                continue
            body = result.body
            live[key] = body
            rv = str(body["metadata"].get("resourceVersion", ""))
            outcome.applied.append(
                OwnedChild(
                    key[0],
                    key[1],
                    key[2],
                    str(body["metadata"].get("uid")),
                    rv,
                    shape_of(body),
                    intent,
                )
            )
            # Drift: our apply created the child again, or changed it (a new
            # resourceVersion where server-side apply of an unchanged intent is a no-op).
            if steady and (result.created or (known is not None and rv != known.resource_version)):
                outcome.repaired.append(key[1])
            if result.created:
                changes.append(f"created {key[1]} {key[2]}")
                outcome.changes.append(("created", key[1], key[2]))
            elif result.changed:
                changes.append(f"updated {key[1]} {key[2]}")
                outcome.changes.append(("updated", key[1], key[2]))
        if changes:
            self._kube.post_event(parent, "Normal", "Applied", "; ".join(changes))
        if conflicts:
            message = (
                f"{', '.join(conflicts)} already exist(s) and belong(s) to someone else: "
                f"rename this {parent['kind']} or remove the other object"
            )
            return live, Problem("NameConflict", message, retry=False)
        if failures:
            return live, Problem("ApplyFailed", "; ".join(failures), retry=transient)
        return live, None

    def _prune(
        self,
        parent: dict[str, Any],
        desired: Desired,
        owned: Sequence[OwnedChild],
        outcome: Outcome,
    ) -> None:
        wanted = {child_key(c) for c in desired.children} | desired.keep
        namespace = parent["metadata"].get("namespace")
        removed = []
        for child in owned:
            if (child.api_version, child.kind, child.name) in wanted:
                continue
            ref = Ref(child.api_version, child.kind, namespace, child.name)
            # Only what this call deleted: its DELETED event is ours. (404/409: already gone
            # or replaced; the watch brings that news itself.)
            if self._kube.delete(ref, child.uid):
                removed.append(f"{child.kind} {child.name}")
                outcome.deleted.append(child.uid)
                outcome.changes.append(("deleted", child.kind, child.name))
        if removed:
            self._kube.post_event(parent, "Normal", "Pruned", "deleted " + ", ".join(removed))

    def _report(
        self,
        kind: KindController[Any],
        spec: Any,
        parent: dict[str, Any],
        facts: Facts,
        children: Mapping[ChildKey, dict[str, Any]],
        problem: Problem | None,
        outcome: Outcome,
    ) -> None:
        probe = getattr(kind, "probe", None)  # optional: kinds with a workload to ask
        if probe is not None and self._prober is not None and problem is None:
            target: Probe | None = probe(spec, parent["metadata"], children, facts)
            if target is not None:
                facts = replace(facts, observed=self._prober(target.url))
                outcome.requeue_after = target.every
        report = kind.status(spec, parent["metadata"], facts, children, problem)
        judged = self._judged(parent)
        if judged:
            report = replace(report, conditions=[*report.conditions, *judged])
        if report.recheck_after is not None:
            outcome.requeue_after = min(
                outcome.requeue_after or report.recheck_after, report.recheck_after
            )
        self._write_status(
            parent if outcome.parent is None else outcome.parent,
            report.conditions,
            report.fields,
            outcome,
        )
        ready = next((c for c in report.conditions if c.type == "Ready"), None)
        if ready is not None:
            self._event_on_ready_change(parent, outcome, ready.reason, ready.message)
        if problem is not None:
            outcome.problem = problem
            outcome.retry = problem.retry

    def _write_status(
        self,
        parent: dict[str, Any],
        conditions: list[Condition],
        fields: dict[str, Any],
        outcome: Outcome,
    ) -> None:
        """Patch the status subresource only when it changed; lastTransitionTime moves
        only when a condition's status flips. No timestamps of our own: an unchanged
        object gets no write, no Event and no wake-up."""
        generation = parent["metadata"].get("generation")
        previous = parent.get("status") or {}
        merged = merge_conditions(
            previous.get("conditions") or [], conditions, generation, self._clock()
        )
        status = {
            **{k: v for k, v in fields.items() if v is not None},
            "conditions": merged,
            "observedGeneration": generation,
        }
        # Fields we no longer report are removed (null in a merge patch).
        patch = {**{k: None for k in previous if k not in status}, **status}
        if all(previous.get(k) == v for k, v in status.items()) and not any(
            k not in status for k in previous
        ):
            return
        outcome.parent = self._kube.patch_status(parent, patch)

    def _event_on_ready_change(
        self, parent: dict[str, Any], outcome: Outcome, reason: str, message: str
    ) -> None:
        before = _ready_status(parent.get("status") or {})
        after = _ready_status((outcome.parent or parent).get("status") or {})
        # A transition, or the first time it serves; not the first "not ready yet".
        if outcome.parent is not None and before != after and (before or after == "True"):
            self._kube.post_event(
                parent, "Normal" if after == "True" else "Warning", reason, message
            )


def _ready_status(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None
