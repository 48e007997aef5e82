"""Managed API keys: what `freehold keys` writes to Vault and the servers read back.

A key set is one KV v2 secret (the path a resource's `spec.auth.apiKeys` names). Each
managed key is one field, named by the key's id (`key:` + the first 12 hex digits of its
SHA-256, the same id the access records carry), whose value is a record holding the key's
SHA-256, never the key: a server only has to verify keys, so nobody who can read the
secret (an operator, a backup) can use them. The key itself is shown once, by `freehold
keys create|rotate`.

A field whose value is a plain string is a key written by hand (`TENANT.NAME: KEY`), still
accepted: it has no allowlist, budget or expiry.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "fh_"
ID_PREFIX = "key:"


def key_id(presented: str) -> str:
    """A stable, non-reversible name for a key in audit records and in the key set: the
    first 48 bits of its SHA-256 (keys are random; this names one without letting anyone
    rebuild it)."""
    return ID_PREFIX + hashlib.sha256(presented.encode()).hexdigest()[:12]


def new_key() -> str:
    """256 random bits, URL-safe, with a prefix secret scanners can match."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyBudget(BaseModel):
    """What one key may spend, per period, at a ModelRouter (beside its tenant's budget)."""

    model_config = ConfigDict(extra="forbid")

    tokens: int | None = Field(default=None, ge=1)
    cost: float | None = Field(default=None, gt=0)
    period: Literal["hour", "day", "month"] = "day"


class KeyRecord(BaseModel):
    """One managed key, as stored in Vault."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    models: list[str] | None = Field(
        default=None, description="Models the key may use; unset: every model."
    )
    budget: KeyBudget | None = None
    created: str
    expires: str | None = Field(default=None, description="RFC 3339; unset: never.")

    @property
    def id(self) -> str:
        return ID_PREFIX + self.sha256[:12]

    def expires_at(self) -> float | None:
        if self.expires is None:
            return None
        return datetime.datetime.fromisoformat(self.expires).timestamp()


def now_rfc3339(offset_seconds: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset_seconds)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def record_for(
    key: str,
    tenant: str,
    *,
    name: str | None = None,
    models: list[str] | None = None,
    budget: KeyBudget | None = None,
    expires_in: float | None = None,
) -> KeyRecord:
    return KeyRecord(
        sha256=hashlib.sha256(key.encode()).hexdigest(),
        tenant=tenant,
        name=name,
        models=models,
        budget=budget,
        created=now_rfc3339(),
        expires=None if expires_in is None else now_rfc3339(expires_in),
    )


@dataclass(frozen=True)
class KeyInfo:
    """Who a valid key is and what it may do."""

    id: str
    tenant: str
    models: frozenset[str] | None = None
    budget: KeyBudget | None = None
    expires: float | None = None

    def allows(self, *names: str | None) -> bool:
        """May this key use a model known by any of `names` (served name, target name)?"""
        return self.models is None or any(n in self.models for n in names if n)

    @classmethod
    def of(cls, record: KeyRecord) -> KeyInfo:
        return cls(
            id=record.id,
            tenant=record.tenant,
            models=None if record.models is None else frozenset(record.models),
            budget=record.budget,
            expires=record.expires_at(),
        )
