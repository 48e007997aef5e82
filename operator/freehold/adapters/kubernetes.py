"""The operator's only door to the Kubernetes API (the official `kubernetes` client).

Writes are JSON merge patches (they work on every API server, and on the test
emulator), made three-way with a last-applied annotation: a field we stop setting is
removed, a field someone else edited is put back, and fields others own are left alone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

LAST_APPLIED = "freehold.dev/last-applied"
MERGE_PATCH = "application/merge-patch+json"
RETRIED_STATUSES = {409, 429, 500, 502, 503, 504}
T = TypeVar("T")

# The kinds the operator writes: (apiVersion, kind) -> plural.
PLURALS = {
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("ray.io/v1", "RayService"): "rayservices",
    ("freehold.dev/v1alpha1", "ModelDeployment"): "modeldeployments",
}


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Ref:
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])

    def path(self, *, named: bool = True, sub: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        plural = PLURALS[(self.api_version, self.kind)]
        path = f"{prefix}/namespaces/{self.namespace}/{plural}"
        if named:
            path += f"/{self.name}"
        if sub:
            path += f"/{sub}"
        return path


class KubeError(Exception):
    """An API error: `status` says whether retrying can help."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status in RETRIED_STATUSES or self.status == 0


def _error(exc: ApiException) -> KubeError:
    message = exc.reason or ""
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message", message)
    except (ValueError, TypeError):
        pass
    return KubeError(int(exc.status or 0), str(exc.reason or ""), str(message))


def load_client() -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def _contains(actual: Any, desired: Any) -> bool:
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(_contains(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


def _removals(before: Any, after: Any) -> dict[str, Any]:
    """Merge-patch nulls for keys that were applied before and are gone now."""
    out: dict[str, Any] = {}
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in before.items():
            if key not in after:
                out[key] = None
            else:
                nested = _removals(value, after[key])
                if nested:
                    out[key] = nested
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        elif key not in merged:
            merged[key] = value
    return merged


Outcome = Literal["created", "updated", "unchanged"]


class KubeApi:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        retries: int = 4,
        backoff: float = 0.2,
        discovery_ttl: float = 60.0,
        timeout: float = 30.0,
    ) -> None:
        self._api = api
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._discovery_ttl = discovery_ttl
        self._discovered: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    # -- raw calls ---------------------------------------------------------------------

    def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        verb, url, headers, payload, form = self._api.param_serialize(
            method,
            path,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                verb, url, headers, payload, form, _request_timeout=self._timeout
            )
            raw: bytes = response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise _error(exc) from None
        except OSError as exc:  # connection refused, reset, timeout: the server is away
            raise KubeError(0, type(exc).__name__, str(exc)) from None
        if not 200 <= response.status < 300:
            raise _error(
                ApiException(
                    status=response.status,
                    reason=response.reason,
                    body=raw.decode("utf-8", "replace") if raw else "",
                )
            )
        return json.loads(raw) if raw else {}

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                return call()
            except KubeError as exc:
                if not exc.transient or attempt == self._retries:
                    raise
                log.info("%s: %s; retrying in %.1fs", what, exc, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # -- reads -------------------------------------------------------------------------

    def get(self, ref: Ref) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._retrying(
                f"get {ref.path()}", lambda: self._call("GET", ref.path())
            )
            return result
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        probe = Ref(api_version, kind, namespace or "_", "_")
        path = probe.path(named=False)
        if namespace is None:
            path = path.replace("/namespaces/_", "")
        result = self._retrying(f"list {path}", lambda: self._call("GET", path))
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    def post_event(self, about: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on an object, as `kubectl describe` shows them."""
        meta = about["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": about["apiVersion"],
                "kind": about["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "freehold-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "freehold-operator",
            "reportingInstance": "freehold-operator",
        }
        ref = Ref("v1", "Event", meta["namespace"], "_")
        try:
            self._call("POST", ref.path(named=False), event)
        except KubeError as exc:  # events are best effort; never fail a reconcile on them
            log.debug("event not posted: %s", exc)

    def serves(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (e.g. KubeRay's rayservices)."""
        key = f"{group_version}/{plural}"
        with self._lock:
            cached = self._discovered.get(key)
            if cached is not None and time.monotonic() - cached[0] < self._discovery_ttl:
                return cached[1]
        try:
            listing = self._call("GET", f"/apis/{group_version}")
            found = any(r.get("name") == plural for r in listing.get("resources", []))
        except KubeError as exc:
            if exc.status != 404:
                raise
            found = False
        with self._lock:
            self._discovered[key] = (time.monotonic(), found)
        return found

    # -- writes ------------------------------------------------------------------------

    def apply(self, desired: dict[str, Any]) -> Outcome:
        """Make the object match `desired`, creating it if needed. Idempotent."""
        ref = Ref.of(desired)
        record = json.dumps(desired, sort_keys=True, separators=(",", ":"))
        wanted = _deep_merge(desired, {"metadata": {"annotations": {LAST_APPLIED: record}}})
        current = self.get(ref)
        if current is None:
            try:
                self._retrying(
                    f"create {ref.path()}",
                    lambda: self._call("POST", ref.path(named=False), wanted),
                )
                return "created"
            except KubeError as exc:
                if exc.status != 409:  # created meanwhile: fall through to patch
                    raise
                current = self.get(ref) or {}
        if _contains(current, wanted):
            return "unchanged"
        previous = (current.get("metadata", {}).get("annotations") or {}).get(LAST_APPLIED)
        patch = dict(wanted)
        if previous:
            try:
                patch = _deep_merge(wanted, _removals(json.loads(previous), desired))
            except ValueError:
                log.warning("%s: unreadable %s annotation", ref.path(), LAST_APPLIED)
        self._retrying(
            f"patch {ref.path()}", lambda: self._call("PATCH", ref.path(), patch, MERGE_PATCH)
        )
        return "updated"

    def delete(self, ref: Ref) -> bool:
        try:
            self._retrying(f"delete {ref.path()}", lambda: self._call("DELETE", ref.path()))
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    def set_finalizer(self, obj: dict[str, Any], finalizer: str, present: bool) -> None:
        """Add or remove one finalizer, leaving others' alone. The patch carries the
        resourceVersion it was computed from, so a real API server refuses it (409) if
        the list changed meanwhile; we then re-read and retry."""
        ref = Ref.of(obj)
        meta = obj.get("metadata") or {}
        for _ in range(self._retries + 1):
            current = list(meta.get("finalizers") or [])
            if (finalizer in current) == present:
                return
            wanted = [*current, finalizer] if present else [f for f in current if f != finalizer]
            patch: dict[str, Any] = {"metadata": {"finalizers": wanted}}
            if meta.get("resourceVersion"):
                patch["metadata"]["resourceVersion"] = meta["resourceVersion"]
            try:
                self._call("PATCH", ref.path(), patch, MERGE_PATCH)
                return
            except KubeError as exc:
                if exc.status != 409:
                    raise
                fresh = self.get(ref)
                if fresh is None:
                    return
                meta = fresh.get("metadata") or {}
        raise KubeError(409, "Conflict", f"finalizers of {ref.path()} keep changing")

    def patch_status(self, ref: Ref, status: dict[str, Any]) -> None:
        self._retrying(
            f"patch {ref.path(sub='status')}",
            lambda: self._call("PATCH", ref.path(sub="status"), {"status": status}, MERGE_PATCH),
        )
