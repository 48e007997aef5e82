"""Bring memory from elsewhere: a mem0 export, or plain JSONL.

Both become new records (new ids, embedded by this store's model) with provenance
naming where they came from; the original id and hash are kept in metadata.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from freehold_serving.memory.records import RECORD_TYPES, NewRecord, Provenance


class ImportFormatError(Exception):
    """The file is not in the format named; the message names the entry and field."""


# Foreign imports are parsed whole (mem0's export is one JSON document), so their size is
# bounded before parsing: Python objects take about ten times the bytes they came from.
# 8 MiB of mem0 JSON and 20,000 records per import keep one import's parse within about
# 256 MiB (tests/unit/test_hardening.py measures the worst case). Split larger exports.
MAX_MEM0_BYTES = 8 * 1024 * 1024
MAX_IMPORT_RECORDS = 20_000


def _too_many(n: int) -> ImportFormatError:
    return ImportFormatError(
        f"more than {MAX_IMPORT_RECORDS} records in one import (record {n}): split the file"
    )


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFormatError(f"line {line}: not UTF-8 (byte offset {exc.start})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number: use finite numbers")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        # The C decoder stops at the interpreter's recursion limit (about a thousand
        # levels): refused as bad input, and metadata is held to far less afterwards.
        raise ImportFormatError(f"{where}nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ImportFormatError(
            f"{where}not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise ImportFormatError(f"{where}{exc}") from None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def from_mem0(data: bytes, subject: str | None = None) -> list[NewRecord]:
    """mem0's `get_all()` output, `{"results": [...]}`, or a bare list of its memories:
    `{"id", "memory", "hash", "metadata", "created_at", "updated_at", "user_id",
    "agent_id", "run_id"}`."""
    if len(data) > MAX_MEM0_BYTES:
        raise ImportFormatError(
            f"a mem0 export larger than {MAX_MEM0_BYTES} bytes: split it (one user per file)"
        )
    parsed = _json(_text(data), "")
    items = parsed.get("results") if isinstance(parsed, dict) else parsed
    if not isinstance(items, list):
        raise ImportFormatError('expected {"results": [...]} or a list of mem0 memories')
    if len(items) > MAX_IMPORT_RECORDS:
        raise _too_many(len(items))
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("memory"), str):
            raise ImportFormatError(f"results[{n}].memory: expected a string")
        if not isinstance(item.get("metadata") or {}, dict):
            raise ImportFormatError(f"results[{n}].metadata: expected an object")
        metadata = dict(item.get("metadata") or {})
        kind = metadata.pop("type", None)
        extra = {k: item[k] for k in ("id", "hash") if item.get(k)}
        who = subject or item.get("user_id")
        if not who:
            raise ImportFormatError(f"results[{n}].user_id: missing (or name a subject)")
        created = _when(item.get("created_at"))
        if created is not None:
            extra["created_at"] = created.isoformat()
        try:
            out.append(
                NewRecord(
                    subject=str(who),
                    type=kind if kind in RECORD_TYPES else "note",
                    text=item["memory"],
                    metadata={**metadata, "mem0": extra},
                    agent_id=item.get("agent_id") or None,
                    session_id=item.get("run_id") or None,
                    provenance=Provenance(source="import:mem0"),
                )
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ImportFormatError(f"results[{n}].{field}: {first['msg']}") from None
    return out


def from_jsonl(data: bytes, subject: str | None = None) -> list[NewRecord]:
    """One record per line, in the API's add shape (`subject`, `text`, `type`, ...)."""
    out: list[NewRecord] = []
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        if len(out) >= MAX_IMPORT_RECORDS:
            raise _too_many(len(out) + 1)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportFormatError(
                f"line {n}: not UTF-8 (byte {exc.start + 1} of the line)"
            ) from None
        item = _json(line, f"line {n}: ")
        try:
            if subject is not None and isinstance(item, dict):
                item = {**item, "subject": subject}
            if isinstance(item, dict):
                item.setdefault("provenance", {"source": "import:jsonl"})
            out.append(NewRecord.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ImportFormatError(f"line {n}: {field}: {first['msg']}") from None
    return out
