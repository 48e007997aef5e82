"""Conditions as users read them (the metav1.Condition shape). Pure: the clock is passed in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def condition(type_: str, status: bool | None, reason: str, message: str) -> Condition:
    value = "Unknown" if status is None else ("True" if status else "False")
    return Condition(type_, value, reason, message)


def merge_conditions(
    previous: Sequence[dict[str, Any]],
    new: Sequence[Condition],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new conditions with observedGeneration; lastTransitionTime is kept when a
    condition's status did not change, so an unchanged status is byte-for-byte the same."""
    before = {c.get("type"): c for c in previous}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    merged = []
    for cond in new:
        old = before.get(cond.type)
        changed_at = stamp
        if old is not None and old.get("status") == cond.status:
            changed_at = old.get("lastTransitionTime", stamp)
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message[:32768],
            "lastTransitionTime": changed_at,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged.append(entry)
    return merged


def condition_of(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition of this type in an object's status, as the API server returned it."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(obj: Mapping[str, Any] | None, type_: str) -> bool:
    return (condition_of(obj, type_) or {}).get("status") == "True"
