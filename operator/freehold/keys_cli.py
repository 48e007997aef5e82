"""`freehold keys create | list | revoke | rotate`: a tenant's API keys, kept in Vault.

A key set is the KV v2 secret a resource's `spec.auth.apiKeys` names (`--of
modelrouter/NAME` reads it from the cluster, or `--mount`/`--path` name it). Each managed
key is stored as a record holding its SHA-256, never the key (key_records.py): the key is
shown once, on standard output, when it is created or rotated. Writes use Vault's
check-and-set, so two admins changing one set at once never lose each other's change.

Servers re-read their key set every 30 s: a revocation or a rotation takes effect on every
replica within that bound, without a restart; an expiry takes effect at its second.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from freehold_serving.key_records import (
    ID_PREFIX,
    KeyBudget,
    KeyRecord,
    new_key,
    now_rfc3339,
    record_for,
)
from freehold_serving.key_records import key_id as id_of  # `key_id`: the commands' argument

if TYPE_CHECKING:  # settings (pydantic-settings) load only when a command runs
    from freehold.settings import VaultCliSettings

keys = typer.Typer(help="Create, list, revoke and rotate API keys (kept in Vault).",
                   no_args_is_help=True)  # fmt: skip
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
EXIT_FAILED, EXIT_USAGE = 1, 2
# Check-and-set retries: with several admins (or a script) writing at once, a writer that
# retries at once can lose every round to the same faster peers, so each retry waits a random
# share of a doubling delay (full jitter) and gives up only after a generous number of rounds.
CAS_ATTEMPTS = 12
CAS_BACKOFF_S, CAS_BACKOFF_MAX_S = 0.05, 1.0
KINDS = {"modelrouter": "modelrouters", "modeldeployment": "modeldeployments",
         "memorystore": "memorystores"}  # fmt: skip


class KeysError(Exception):
    """What failed, for the admin; exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- pure: changes to a key set (field -> record or hand-written key) ----------------------


def find(fields: dict[str, Any], wanted: str) -> str:
    """The field of a key named by its id (with or without `key:`) or its field name."""
    for name in (wanted, ID_PREFIX + wanted.removeprefix(ID_PREFIX)):
        if name in fields:
            return name
    raise KeysError(f"KEY_ID: no key {wanted!r} in this key set (see `freehold keys list`)",
                    EXIT_USAGE)  # fmt: skip


def rotated(fields: dict[str, Any], old: str, key: str, overlap: float) -> dict[str, Any]:
    """The set after rotating `old` to `key`: the new key keeps the old one's tenant,
    name, allowlist and budget; the old one ends after `overlap` seconds (0: now)."""
    field = find(fields, old)
    value = fields[field]
    if not isinstance(value, dict):
        raise KeysError(
            f"KEY_ID: {field} was written by hand, not by `freehold keys`; create a managed "
            "key for its tenant and revoke this one",
            EXIT_USAGE,
        )
    previous = KeyRecord.model_validate(value)
    fresh = record_for(
        key,
        previous.tenant,
        name=previous.name,
        models=previous.models,
        budget=previous.budget,
    )
    changed = {k: v for k, v in fields.items() if k != field}
    if overlap > 0:
        ends = now_rfc3339(overlap)
        if previous.expires is None or previous.expires > ends:
            previous = previous.model_copy(update={"expires": ends})
        changed[field] = previous.model_dump(exclude_none=True)
    changed[fresh.id] = fresh.model_dump(exclude_none=True)
    return changed


def rows(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """What `list` shows: never a key, never a digest."""
    found = []
    for field, value in sorted(fields.items()):
        if isinstance(value, dict):
            try:
                record = KeyRecord.model_validate(value)
            except ValidationError:
                found.append({"id": field, "tenant": "?", "managed": True, "valid": False})
                continue
            found.append(
                {
                    "id": record.id,
                    "tenant": record.tenant,
                    "name": record.name,
                    "models": record.models,
                    "budget": None if record.budget is None else record.budget.model_dump(),
                    "created": record.created,
                    "expires": record.expires,
                    "managed": True,
                    "valid": True,
                }
            )
        else:
            found.append(
                {"id": field, "tenant": field.split(".", 1)[0], "managed": False, "valid": True}
            )
    return found


# -- Vault (the adapter) ---------------------------------------------------------------------


class VaultKeySet:
    """One KV v2 secret, changed with check-and-set."""

    def __init__(self, settings: VaultCliSettings, mount: str, path: str) -> None:
        import hvac

        if not settings.address or settings.token is None:
            raise KeysError("VAULT_ADDR and VAULT_TOKEN must name Vault and a token that may "
                            f"read and write {mount}/data/{path}", EXIT_USAGE)  # fmt: skip
        self.where = f"{mount}/data/{path}"
        self._mount, self._path = mount, path
        self._settings = settings
        self._client = hvac.Client(
            url=settings.address,
            token=settings.token.get_secret_value(),
            verify=settings.ca_cert or True,
            timeout=15,
        )

    def sibling(self, mount: str, path: str) -> VaultKeySet:
        """Another secret, with the same Vault and token."""
        return VaultKeySet(self._settings, mount, path)

    def read(self) -> tuple[dict[str, Any], int]:
        import hvac

        try:
            secret = self._client.secrets.kv.v2.read_secret_version(
                path=self._path, mount_point=self._mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return {}, 0
        except Exception as exc:
            raise KeysError(f"reading {self.where} from Vault failed: {_why(exc)}") from None
        data = secret.get("data") or {}
        return dict(data.get("data") or {}), int((data.get("metadata") or {}).get("version") or 0)

    def change(self, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Apply `edit` to the current set and write it only if nobody wrote in between
        (check-and-set), retrying on a concurrent write."""
        import hvac

        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(CAS_BACKOFF_MAX_S, CAS_BACKOFF_S * 2**attempt)))
            fields, version = self.read()
            changed = edit(dict(fields))
            try:
                self._client.secrets.kv.v2.create_or_update_secret(
                    path=self._path, secret=changed, cas=version, mount_point=self._mount
                )
                return changed
            except hvac.exceptions.InvalidRequest as exc:
                if "check-and-set" in str(exc):
                    continue  # another admin wrote first: redo the edit on their set
                raise KeysError(f"writing {self.where} failed: {_why(exc)}") from None
            except Exception as exc:
                raise KeysError(f"writing {self.where} failed: {_why(exc)}") from None
        raise KeysError(
            f"{self.where} kept changing under us ({CAS_ATTEMPTS} check-and-set rounds lost "
            "to other writers); try again"
        )


def _why(exc: Exception) -> str:
    import hvac

    if isinstance(exc, hvac.exceptions.Forbidden):
        return "permission denied (the token's policies must allow it)"
    return type(exc).__name__


def _location(of: str | None, namespace: str, mount: str, path: str | None) -> tuple[str, str]:
    """(mount, path) of the key set: given, or read from a resource's spec.auth.apiKeys."""
    if (of is None) == (path is None):
        raise KeysError("--of or --path: name the key set by its resource (--of "
                        "modelrouter/NAME) or by its Vault path (--path)", EXIT_USAGE)  # fmt: skip
    if path is not None:
        return mount, path
    assert of is not None
    kind, _, name = of.partition("/")
    plural = KINDS.get(kind.lower().removesuffix("s"))
    if plural is None or not name:
        raise KeysError(f"--of: {of!r} is not KIND/NAME with KIND one of {', '.join(KINDS)}",
                        EXIT_USAGE)  # fmt: skip
    from freehold.adapters.kubernetes import KubeApi, KubeError, Ref, ResourceType, load_client

    kind_name = {"modelrouters": "ModelRouter", "modeldeployments": "ModelDeployment",
                 "memorystores": "MemoryStore"}[plural]  # fmt: skip
    type_ = ResourceType("freehold.dev/v1alpha1", kind_name, plural, namespaced=True)
    try:
        obj = KubeApi(load_client(1), [type_]).get(
            Ref(type_.api_version, kind_name, namespace, name)
        )
    except KubeError as exc:
        raise KeysError(f"--of: cannot read {kind}/{name} in {namespace}: {exc}") from None
    except Exception as exc:  # no kubeconfig, no cluster
        raise KeysError(f"--of: cannot reach the cluster: {type(exc).__name__}") from None
    if obj is None:
        raise KeysError(f"--of: there is no {kind}/{name} in namespace {namespace}", EXIT_USAGE)
    api_keys = ((obj.get("spec") or {}).get("auth") or {}).get("apiKeys")
    if not api_keys:
        raise KeysError(f"--of: {kind}/{name} has no spec.auth.apiKeys: it takes no keys",
                        EXIT_USAGE)  # fmt: skip
    return str(api_keys.get("mount") or "secret"), str(api_keys["path"])


# -- commands ------------------------------------------------------------------------------

Of = Annotated[
    str | None,
    typer.Option("--of", help="The resource whose key set it is: modelrouter/NAME, "
                 "modeldeployment/NAME or memorystore/NAME."),
]  # fmt: skip
Namespace = Annotated[str, typer.Option("--namespace", "-n", help="The resource's namespace.")]
Mount = Annotated[str, typer.Option("--mount", help="KV v2 mount (with --path).")]
Path_ = Annotated[str | None, typer.Option("--path", help="KV v2 path of the key set.")]


Into = Annotated[
    str | None,
    typer.Option("--into", metavar="MOUNT/PATH[#FIELD]",
                 help="Write the new key into this KV v2 secret's field (default api_key) "
                 "instead of printing it: a ModelRouter's own key for a keyed model "
                 "(spec.targets[].apiKey)."),
]  # fmt: skip


def _destination(into: str, store: VaultKeySet) -> tuple[VaultKeySet, str]:
    """The secret and field `--into` names (MOUNT/PATH[#FIELD])."""
    where, _, field = into.partition("#")
    mount, _, path = where.partition("/")
    if not mount or not path or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", mount):
        raise KeysError(f"--into: {into!r} is not MOUNT/PATH[#FIELD]", EXIT_USAGE)
    if "*" in path or "+" in path:
        raise KeysError(f"--into: {into!r}: no wildcards in a path", EXIT_USAGE)
    return store.sibling(mount, path), field or "api_key"


def _deliver(key: str, into: str | None, store: VaultKeySet) -> str:
    """Put the new key where it goes before its record makes it valid: into a secret
    (check-and-set, other fields kept) or, without --into, later on standard output."""
    if into is None:
        return ""
    secret, field = _destination(into, store)
    secret.change(lambda fields: {**fields, field: key})
    return f" and written to {secret.where}#{field} (not printed)"


def _run(work: Callable[[], None]) -> None:
    try:
        work()
    except KeysError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.code) from None


def _open(of: str | None, namespace: str, mount: str, path: str | None) -> VaultKeySet:
    where = _location(of, namespace, mount, path)
    from freehold.settings import VaultCliSettings

    return VaultKeySet(VaultCliSettings(), *where)


def _expiry(expires_in: str | None) -> float | None:
    if expires_in is None:
        return None
    try:
        from freehold.builders.memory_args import duration_seconds

        return duration_seconds(expires_in)
    except ValueError as exc:
        raise KeysError(f"--expires-in: {exc}", EXIT_USAGE) from None


@keys.command()
def create(
    tenant: Annotated[str, typer.Option("--tenant", help="Who the key acts for.")],
    of: Of = None,
    namespace: Namespace = "default",
    mount: Mount = "secret",
    path: Path_ = None,
    name: Annotated[str | None, typer.Option(help="A label (who holds the key).")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="A model the key may use (repeat); unset: every model. "
            "At a router: its served name, or a target's name.",
        ),
    ] = None,
    budget_tokens: Annotated[
        int | None, typer.Option(help="Tokens the key may use per period (at a router).")
    ] = None,
    budget_cost: Annotated[
        float | None, typer.Option(help="Cost the key may spend per period (at a router).")
    ] = None,
    budget_period: Annotated[str, typer.Option(help="hour, day or month.")] = "day",
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 90d or 12h; unset: no expiry.")
    ] = None,
    into: Into = None,
) -> None:
    """Make a key for TENANT; the key is printed once, on standard output (or, with --into,
    written into a Vault secret and never shown)."""

    def work() -> None:
        budget = None
        if budget_tokens is not None or budget_cost is not None:
            try:
                budget = KeyBudget.model_validate(
                    {"tokens": budget_tokens, "cost": budget_cost, "period": budget_period}
                )
            except ValidationError as exc:
                first = exc.errors()[0]
                raise KeysError(f"--budget-{first['loc'][0]}: {first['msg']}", EXIT_USAGE) from None
        lifetime = _expiry(expires_in)
        try:
            key = new_key()
            record = record_for(key, tenant, name=name, models=model or None, budget=budget,
                                expires_in=lifetime)  # fmt: skip
        except ValidationError as exc:
            first = exc.errors()[0]
            raise KeysError(f"--{first['loc'][0]}: {first['msg']}", EXIT_USAGE) from None
        store = _open(of, namespace, mount, path)
        delivered = _deliver(key, into, store)
        store.change(lambda fields: {**fields, record.id: record.model_dump(exclude_none=True)})
        if into is not None:
            err.print(f"created {record.id} for tenant {escape(tenant)} in {store.where}"
                      f"{delivered}", highlight=False)  # fmt: skip
            return
        err.print(f"created {record.id} for tenant {escape(tenant)} in {store.where}; the key "
                  "is shown only now", highlight=False)  # fmt: skip
        out.print(key, highlight=False)

    _run(work)


@keys.command("list")
def list_(
    of: Of = None,
    namespace: Namespace = "default",
    mount: Mount = "secret",
    path: Path_ = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """The keys of a key set: ids, tenants, allowlists, budgets, expiries (never a key)."""

    def work() -> None:
        fields, _ = _open(of, namespace, mount, path).read()
        found = [r for r in rows(fields) if tenant is None or r["tenant"] == tenant]
        if as_json:
            for row in found:
                out.print(json.dumps(row), highlight=False)
            return
        table = Table("id", "tenant", "name", "models", "budget", "created", "expires")
        for row in found:
            budget = row.get("budget")
            shown = "-"
            if budget:
                amounts = [f"{budget['tokens']} tokens" if budget.get("tokens") else "",
                           f"{budget['cost']} cost" if budget.get("cost") else ""]  # fmt: skip
                shown = " + ".join(a for a in amounts if a) + f" / {budget['period']}"
            table.add_row(
                row["id"] + ("" if row["managed"] else " (by hand)"),
                row["tenant"],
                row.get("name") or "-",
                ", ".join(row.get("models") or []) or "all",
                shown,
                row.get("created") or "-",
                row.get("expires") or ("invalid record" if not row["valid"] else "-"),
            )
        out.print(table)

    _run(work)


@keys.command()
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (key:...).")],
    of: Of = None,
    namespace: Namespace = "default",
    mount: Mount = "secret",
    path: Path_ = None,
) -> None:
    """Remove a key: every server refuses it within 30 s."""

    def work() -> None:
        store = _open(of, namespace, mount, path)
        removed: list[str] = []

        def edit(fields: dict[str, Any]) -> dict[str, Any]:
            field = find(fields, key_id)
            removed[:] = [field]
            return {k: v for k, v in fields.items() if k != field}

        store.change(edit)
        err.print(f"revoked {removed[0]} in {store.where}; servers refuse it within 30 s",
                  highlight=False)  # fmt: skip

    _run(work)


@keys.command()
def rotate(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (key:...).")],
    of: Of = None,
    namespace: Namespace = "default",
    mount: Mount = "secret",
    path: Path_ = None,
    overlap: Annotated[
        str, typer.Option(help="How long the old key still works (0s: it stops now).")
    ] = "1h",
    into: Into = None,
) -> None:
    """Replace a key with a new one of the same tenant, allowlist and budget (printed once,
    on standard output); the old one works for --overlap more, so clients can switch."""

    def work() -> None:
        try:
            from freehold.builders.memory_args import duration_seconds

            seconds = 0.0 if overlap in ("0", "0s") else duration_seconds(overlap)
        except ValueError as exc:
            raise KeysError(f"--overlap: {exc}", EXIT_USAGE) from None
        store = _open(of, namespace, mount, path)
        key = new_key()
        if into is not None:
            fields, _ = store.read()
            find(fields, key_id)  # an unknown id fails before anything is written
        delivered = _deliver(key, into, store)
        store.change(lambda fields: rotated(fields, key_id, key, seconds))
        ends = f"ends in {overlap}" if seconds else "stops within 30 s"
        if into is not None:
            err.print(f"rotated {key_id} to {id_of(key)} in {store.where}{delivered}; the old "
                      f"key {ends}", highlight=False)  # fmt: skip
            return
        err.print(f"rotated {key_id} to {id_of(key)} in {store.where}; the old key {ends}; "
                  "the new key is shown only now", highlight=False)  # fmt: skip
        out.print(key, highlight=False)

    _run(work)
