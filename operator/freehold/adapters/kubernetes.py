"""The operator's only door to the Kubernetes API (the official `kubernetes` client).

Children are written with server-side apply under one field manager: the API server
decides what changed (quantities canonicalised, defaults filled in), an unchanged object
is not written at all (no new resourceVersion), a field we stop setting is removed, and
another manager's fields are visible in managedFields. This adapter does not retry: an
error goes back to the reconciler, whose work queue retries with backoff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

FIELD_MANAGER = "freehold"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
MERGE_PATCH = "application/merge-patch+json"
# Worth retrying (with backoff, by the work queue): the server or the network, or a
# conflict with a concurrent writer. Everything else needs a different request.
TRANSIENT_STATUSES = {0, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ResourceType:
    """One resource the operator reads or writes, as the API server names it."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


EVENTS = ResourceType("v1", "Event", "events")
# Read for PolicyCompliant when a SovereigntyPolicy selects namespaces by label.
NAMESPACE = ResourceType("v1", "Namespace", "namespaces", namespaced=False)


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    namespace: str | None  # None: a cluster-scoped object
    name: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Ref:
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


class KubeError(Exception):
    """An API error: `transient` says whether retrying the same request can help."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES


def _error(exc: ApiException) -> KubeError:
    message = exc.reason or ""
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message", message)
    except (ValueError, TypeError):
        pass
    return KubeError(int(exc.status or 0), str(exc.reason or ""), str(message))


def load_client(pool_size: int = 4) -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


@dataclass(frozen=True)
class Applied:
    """What the API server answered to an apply: the object, whether it is new, and
    whether our fields changed (the server writes nothing for an unchanged apply)."""

    body: dict[str, Any]
    created: bool
    changed: bool


def _our_apply_time(body: dict[str, Any]) -> str:
    for entry in body.get("metadata", {}).get("managedFields") or []:
        if (
            entry.get("manager") == FIELD_MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            return str(entry.get("time") or "")
    return ""


class KubeApi:
    def __init__(
        self,
        api: client.ApiClient,
        types: Iterable[ResourceType],
        *,
        discovery_ttl: float = 60.0,
        timeout: float = 30.0,
    ) -> None:
        self._api = api
        self._timeout = timeout
        # The kinds this adapter may touch, derived from the registered kinds: a request
        # for anything else is a programming error, not an API call.
        self._plurals = {(t.api_version, t.kind): t.plural for t in [*types, EVENTS]}
        self._discovery_ttl = discovery_ttl
        self._discovered: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def _path(self, ref: Ref, *, named: bool = True, sub: str | None = None) -> str:
        prefix = "/api/v1" if ref.api_version == "v1" else f"/apis/{ref.api_version}"
        plural = self._plurals[(ref.api_version, ref.kind)]
        path = (
            f"{prefix}/namespaces/{ref.namespace}/{plural}"
            if ref.namespace
            else f"{prefix}/{plural}"
        )
        if named:
            path += f"/{ref.name}"
        if sub:
            path += f"/{sub}"
        return path

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> tuple[int, Any]:
        verb, url, headers, payload, form = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
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
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            # Refused, reset, timed out, retries exhausted: the server is away.
            raise KubeError(0, type(exc).__name__, str(exc)) from None
        if not 200 <= response.status < 300:
            raise _error(
                ApiException(
                    status=response.status,
                    reason=response.reason,
                    body=raw.decode("utf-8", "replace") if raw else "",
                )
            )
        return int(response.status), (json.loads(raw) if raw else {})

    # -- reads -------------------------------------------------------------------------

    def get(self, ref: Ref, *, cached: bool = False) -> dict[str, Any] | None:
        """One object; `cached`: as the API server's watch cache holds it (no etcd read,
        at most as old as a watch event), for a check a watch would also settle."""
        query = [("resourceVersion", "0")] if cached else []
        try:
            _, result = self._call("GET", self._path(ref), query=query)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        body: dict[str, Any] = result
        return body

    def list(
        self, type_: ResourceType, namespace: str | None, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Objects of a type in a namespace (None: cluster-scoped), by label selector
        (equality only), from the API server's watch cache (resourceVersion 0), as an
        informer lists: no etcd read of every object of the type, and no fresher than what
        the watches bring, which wake the next pass anyway."""
        ref = Ref(type_.api_version, type_.kind, namespace if type_.namespaced else None, "_")
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        query = [("resourceVersion", "0")]
        if selector:
            query.append(("labelSelector", selector))
        _, listing = self._call("GET", self._path(ref, named=False), query=query)
        items: list[dict[str, Any]] = listing.get("items") or []
        for item in items:  # list items carry no apiVersion/kind of their own
            item.setdefault("apiVersion", type_.api_version)
            item.setdefault("kind", type_.kind)
        return items

    def serves(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (e.g. KubeRay's rayservices).
        Cached: one discovery call per TTL, not one per object."""
        key = f"{group_version}/{plural}"
        with self._lock:
            cached = self._discovered.get(key)
            if cached is not None and time.monotonic() - cached[0] < self._discovery_ttl:
                return cached[1]
        try:
            _, listing = self._call("GET", f"/apis/{group_version}")
            found = any(r.get("name") == plural for r in listing.get("resources", []))
        except KubeError as exc:
            if exc.status != 404:
                raise
            found = False
        with self._lock:
            self._discovered[key] = (time.monotonic(), found)
        return found

    # -- writes ------------------------------------------------------------------------

    def apply(self, desired: dict[str, Any]) -> Applied:
        """Server-side apply under our field manager, taking over fields others changed
        (drift repair). Callers check ownership first: never apply onto a stranger."""
        ref = Ref.of(desired)
        # managedFields times have one-second resolution; our entry's time moves only
        # when a field we apply changed value.
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status, body = self._call(
            "PATCH",
            self._path(ref),
            desired,
            APPLY_PATCH,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        created = status == 201
        return Applied(body, created=created, changed=created or _our_apply_time(body) >= started)

    def delete(self, ref: Ref, uid: str) -> bool:
        """Delete exactly the object with this uid (never a namesake created since);
        dependents go in the background through the garbage collector."""
        options = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            self._call("DELETE", self._path(ref), options)
            return True
        except KubeError as exc:
            if exc.status in (404, 409):  # gone, or replaced by a namesake: not ours
                return False
            raise

    def patch_metadata(self, obj: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of metadata guarded by the resourceVersion it was computed from:
        a concurrent change answers 409 instead of being overwritten."""
        ref = Ref.of(obj)
        guard = {"resourceVersion": obj["metadata"]["resourceVersion"]}
        _, body = self._call(
            "PATCH", self._path(ref), {"metadata": {**metadata, **guard}}, MERGE_PATCH
        )
        result: dict[str, Any] = body
        return result

    def patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Replace our status, guarded by the resourceVersion it was computed from."""
        ref = Ref.of(obj)
        patch = {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "status": status,
        }
        _, body = self._call("PATCH", self._path(ref, sub="status"), patch, MERGE_PATCH)
        result: dict[str, Any] = body
        return result

    def post_event(self, about: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on an object, as `kubectl describe` shows them. Best effort."""
        meta = about["metadata"]
        # Events about cluster-scoped objects live in "default", as kubectl looks for them.
        namespace = meta.get("namespace") or "default"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": about["apiVersion"],
                "kind": about["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace") or "",
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
        ref = Ref("v1", "Event", namespace, "_")
        try:
            self._call("POST", self._path(ref, named=False), event)
        except KubeError as exc:  # never fail a reconcile on an Event
            log.debug("event not posted: %s", exc)
