"""Memory records and the memory API's request and response bodies.

A record belongs to a subject (the user it is about) inside a tenant (who may see it:
an API key's tenant). It may be narrowed to an agent and a session. An update never
overwrites: it closes the current version (valid_to) and opens a new one, so history and
"as of" queries see what was known when.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

RecordType = Literal["preference", "fact", "task", "episode", "entity", "relation", "note"]
RECORD_TYPES: tuple[RecordType, ...] = (
    "preference",
    "fact",
    "task",
    "episode",
    "entity",
    "relation",
    "note",
)
Sensitivity = Literal["public", "internal", "confidential", "restricted"]

MAX_TEXT_CHARS = 16_000
MAX_METADATA_BYTES = 16_384
MAX_BATCH = 512
# A subject, agent or session id: what a client already calls its user. Printable, short,
# no control characters (they end up in logs and audit pseudonyms).
Identifier = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
RecordId = Annotated[str, Field(pattern=r"^mem_[0-9a-f]{32}$")]


MAX_METADATA_DEPTH = 16


def _check_depth(value: Any) -> None:
    """Nesting deeper than any real metadata needs is refused before anything recurses
    into it (json.dumps would fail with a RecursionError: a 500, not a 400)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Bounded, finite JSON: raises ValueError saying what is wrong."""
    import json

    _check_depth(value)
    try:
        # allow_nan=False: NaN and Infinity are not JSON; stored, they would come back
        # as null and the store's own export would no longer re-import.
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except ValueError:
        raise ValueError("metadata holds NaN or Infinity: use finite numbers") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(Strict):
    """Where a record came from."""

    source: str = Field(
        default="api", max_length=256, description="api, extraction, import:mem0, ..."
    )
    model: str | None = Field(default=None, max_length=256, description="Extracting model.")
    model_digest: str | None = Field(
        default=None, max_length=71, description="sha256 of the extracting model's file."
    )


class RecordFields(Strict):
    """What a client may set on a record (on add, and on update)."""

    type: RecordType = Field(default="note", description="Kind of memory.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The memory itself.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form JSON object.")
    agent_id: Identifier | None = Field(default=None, description="Agent scope; unset: any.")
    session_id: Identifier | None = Field(default=None, description="Session scope; unset: any.")
    confidence: float = Field(default=1.0, ge=0, le=1, description="How sure the source is.")
    sensitivity: Sensitivity = Field(default="internal", description="Handling class.")
    provenance: Provenance = Field(default_factory=Provenance)
    expires_at: datetime | None = Field(
        default=None, description="Deleted after this time; unset: the store's retention."
    )
    embedding: list[FiniteFloat] | None = Field(
        default=None,
        description="A precomputed vector from the store's embedding model (its dimension "
        "is checked); unset: the store embeds the text.",
    )

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)


class NewRecord(RecordFields):
    subject: Identifier = Field(description="The user this memory belongs to.")


class AddRequest(Strict):
    records: list[NewRecord] = Field(min_length=1, max_length=MAX_BATCH)


class UpdateRequest(RecordFields):
    subject: Identifier


class Record(BaseModel):
    """One version of a record, as the API returns it."""

    id: str
    version: int
    subject: str
    type: RecordType
    text: str | None  # None on a deletion tombstone
    metadata: dict[str, Any] = Field(default_factory=dict)
    agent_id: str | None = None
    session_id: str | None = None
    confidence: float = 1.0
    sensitivity: Sensitivity = "internal"
    provenance: Provenance = Field(default_factory=Provenance)
    created_at: datetime
    updated_at: datetime
    valid_from: datetime
    valid_to: datetime | None = None
    expires_at: datetime | None = None
    deleted: bool = False
    score: float | None = None


class SearchRequest(Strict):
    subject: Identifier
    query: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    embedding: list[FiniteFloat] | None = None
    top_k: int = Field(default=10, ge=1, le=100)
    types: list[RecordType] | None = None
    agent_id: Identifier | None = None
    session_id: Identifier | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    as_of: datetime | None = Field(default=None, description="Search what was known then.")
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"


class EraseRequest(Strict):
    subject: Identifier


class ExportRequest(Strict):
    subject: Identifier
    include_embeddings: bool | None = None


class Message(Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class ExtractRequest(Strict):
    subject: Identifier
    messages: list[Message] = Field(min_length=1, max_length=64)
    agent_id: Identifier | None = None
    session_id: Identifier | None = None
    store: bool = Field(default=True, description="Add the extracted records to the store.")
    max_records: int = Field(default=8, ge=1, le=32)
