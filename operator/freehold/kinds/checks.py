"""Checks several kinds make at reconcile (what the CRD schema cannot express)."""

from __future__ import annotations

from collections.abc import Iterable

from freehold.api.model_deployment import Auth
from freehold.api.postgres import PostgresCredentials
from freehold.quantity import QuantityError, parse_quantity
from freehold.reconciler import SpecProblemError


def positive_quantities(fields: Iterable[tuple[str, str]]) -> None:
    """Each (field path, quantity) parses and is more than zero."""
    for field, value in fields:
        try:
            if parse_quantity(value) <= 0:
                raise QuantityError(f"{value!r} must be more than zero")
        except QuantityError as exc:
            raise SpecProblemError("InvalidSpec", f"{field}: {exc}") from None


def vault_paths_in_namespace(
    paths: Iterable[tuple[str, str | None]], kv_prefix: str, namespace: str
) -> None:
    """One team cannot name another team's Vault paths: each (field path, KV path) named
    must start with the namespace's prefix."""
    prefix = kv_prefix.format(namespace=namespace)
    for field, path in paths:
        if path is not None and not path.startswith(prefix):
            raise SpecProblemError(
                "InvalidSpec",
                f"{field}: {path!r} is outside this namespace's Vault paths: it must start "
                f"with {prefix!r}",
            )


def api_keys_in_namespace(auth: Auth, kv_prefix: str, namespace: str) -> None:
    """One team cannot name another team's Vault path for its API keys."""
    path = auth.api_keys.path if auth.api_keys is not None else None
    vault_paths_in_namespace([("spec.auth.apiKeys.path", path)], kv_prefix, namespace)


def postgres_credentials_in_namespace(
    creds: PostgresCredentials,
    kv_prefix: str,
    namespace: str,
    field: str = "spec.backend.postgres.credentials",
) -> None:
    """A store's database user comes from its own team's Vault paths: a KV path under the
    namespace's prefix, or a database-engine role named `<namespace>-...` (a role's name is
    all Vault's policy can tell apart)."""
    prefix = kv_prefix.format(namespace=namespace)
    if creds.kv_path is not None and not creds.kv_path.startswith(prefix):
        raise SpecProblemError(
            "InvalidSpec",
            f"{field}.kvPath: {creds.kv_path!r} is outside this "
            f"namespace's Vault paths: it must start with {prefix!r}",
        )
    role = creds.database_role
    if role is not None and not role.startswith(f"{namespace}-"):
        raise SpecProblemError(
            "InvalidSpec",
            f"{field}.databaseRole: {role!r} must start with "
            f"{namespace + '-'!r} (this namespace's database roles)",
        )
