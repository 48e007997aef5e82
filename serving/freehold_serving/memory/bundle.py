"""The portable memory bundle: a signed, deterministic archive of one subject's memory.

The format is specified in docs/memory-bundle.md; this module is its reference
implementation. The same records give the same bytes (sorted members, zero times and
owners, canonical JSON, Ed25519's deterministic signatures), so a bundle can be
re-exported and compared bit for bit.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import math
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from freehold_serving.memory.records import Record, check_metadata
from freehold_serving.signing import (
    Signer,
    canonical,
    key_id,
    signature_block,
    trusted_signer,
    verifies,
)

FORMAT = "freehold.dev/memory-bundle"
FORMAT_VERSION = 1
MANIFEST, RECORDS, EMBEDDINGS, SIGNATURE = (
    "manifest.json",
    "records.jsonl",
    "embeddings.jsonl",
    "signature.json",
)
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
# What a bundle may expand to (its files, held while their digests and signature are
# checked): bounds an import's memory whatever the compression ratio.
MAX_EXPANDED_BYTES = 512 * 1024 * 1024


class BundleError(Exception):
    """The bundle is refused; nothing was imported. The message says what failed."""


@dataclass(frozen=True)
class Bundle:
    data: bytes
    manifest: dict[str, Any]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


def _vector_line(record: Record, vector: list[float]) -> dict[str, Any]:
    return {"id": record.id, "version": record.version, "vector": vector}


def _member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


def write(
    versions: list[tuple[Record, list[float] | None]],
    *,
    signer: Signer,
    subject_id: str,
    embedding: tuple[str, int] | None,
    producer: str,
) -> Bundle:
    """`embedding` (model, dimension) includes the vectors; None leaves them out.
    `subject_id`: the store's keyed pseudonym of the subject (never an unkeyed hash of the
    name, which anyone holding a candidate name could recompute)."""
    ordered = sorted(versions, key=lambda rv: (rv[0].id, rv[0].version))
    records = b"".join(
        canonical(r.model_dump(mode="json", exclude={"score"})) + b"\n" for r, _ in ordered
    )
    files = {RECORDS: records}
    if embedding is not None:
        files[EMBEDDINGS] = b"".join(
            canonical(_vector_line(r, v)) + b"\n" for r, v in ordered if v is not None
        )
    scopes = sorted(
        {
            "session" if r.session_id else "agent" if r.agent_id else "user"
            for r, _ in ordered
            if not r.deleted
        }
    )
    manifest = {
        "format": FORMAT,
        "formatVersion": FORMAT_VERSION,
        "producer": producer,
        "subject": subject_id,
        "scopes": scopes,
        "counts": {
            "records": len({r.id for r, _ in ordered}),
            "versions": len(ordered),
            "embeddings": sum(1 for _, v in ordered if v is not None) if embedding else 0,
        },
        "embedding": None
        if embedding is None
        else {"model": embedding[0], "dimension": embedding[1]},
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
    }
    manifest_bytes = canonical(manifest)
    signature = signature_block(signer, manifest_bytes)
    files[MANIFEST] = manifest_bytes
    files[SIGNATURE] = canonical(signature)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in (MANIFEST, SIGNATURE, RECORDS, EMBEDDINGS):
            if name in files:
                _member(archive, name, files[name])
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return Bundle(out.getvalue(), manifest)


@dataclass(frozen=True)
class Contents:
    manifest: dict[str, Any]
    signer_key_id: str
    versions: list[tuple[Record, list[float] | None]]


class _Gunzip(io.RawIOBase):
    """gzip decompressed as it is read, never past `limit` bytes of output: a bundle of a
    few MB that expands to GBs is refused after at most `limit` bytes, not after it was
    all in memory. One gzip member only (what `write` makes); nothing may follow it."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._zlib = zlib.decompressobj(wbits=31)
        self._pending = b""
        self._limit = limit
        self.expanded = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        while len(self._pending) < want and not self._zlib.eof:
            if self._zlib.unconsumed_tail:
                chunk = self._zlib.unconsumed_tail
            elif self._at < len(self._data):
                chunk = bytes(self._data[self._at : self._at + 65536])
                self._at += len(chunk)
            else:
                raise BundleError("not a gzip file, or truncated: the stream ends early")
            try:
                out = self._zlib.decompress(chunk, max(want, 65536))
            except zlib.error as exc:
                raise BundleError(f"not a gzip file, or corrupt: {exc}") from None
            self.expanded += len(out)
            if self.expanded > self._limit:
                raise BundleError(f"the bundle expands to more than {self._limit} bytes")
            self._pending += out
        if self._zlib.eof and (self._zlib.unused_data or self._at < len(self._data)):
            raise BundleError("data follows the end of the bundle's gzip stream")
        taken, self._pending = self._pending[:want], self._pending[want:]
        buffer[: len(taken)] = taken
        return len(taken)


def _members(data: bytes, limit: int = MAX_EXPANDED_BYTES) -> dict[str, bytes]:
    """The bundle's files, read as a stream: each member's declared size is checked
    against what is left of `limit` before a byte of it is read."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    found: dict[str, bytes] = {}
    total = 0
    try:
        stream = io.BufferedReader(_Gunzip(data, limit), buffer_size=65536)
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for info in archive:
                if not info.isfile() or info.name not in (MANIFEST, RECORDS, EMBEDDINGS, SIGNATURE):
                    raise BundleError(f"unexpected member {info.name!r} in the bundle")
                if info.name in found:
                    raise BundleError(f"{info.name} appears twice in the bundle")
                total += info.size
                if total > limit:
                    raise BundleError(f"the bundle expands to more than {limit} bytes")
                handle = archive.extractfile(info)
                assert handle is not None
                found[info.name] = handle.read()
    except tarfile.TarError as exc:
        raise BundleError(f"not a valid bundle archive (truncated?): {exc}") from None
    except (OSError, EOFError) as exc:
        raise BundleError(f"not a gzip file, or truncated: {exc}") from None
    for name in (MANIFEST, SIGNATURE, RECORDS):
        if name not in found:
            raise BundleError(f"the bundle has no {name}")
    return found


def read(data: bytes, trusted: Iterable[bytes]) -> Contents:
    """Verify and parse a bundle. `trusted` are the Ed25519 public keys whose signatures
    are accepted. Raises BundleError before anything is returned."""
    files = _members(data)
    try:
        signature = json.loads(files[SIGNATURE])
        public = base64.b64decode(signature["publicKey"], validate=True)
        sig = base64.b64decode(signature["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise BundleError("signature.json is malformed") from None
    if signature.get("algorithm") != "ed25519":
        raise BundleError(f"unsupported signature algorithm {signature.get('algorithm')!r}")
    if not trusted_signer(public, trusted):
        raise BundleError(
            f"the bundle is signed by {key_id(public)}, which is not a trusted signer"
        )
    if not verifies(public, sig, files[MANIFEST]):
        raise BundleError("the manifest's signature does not verify: the bundle was altered")
    manifest = json.loads(files[MANIFEST])
    if manifest.get("format") != FORMAT or manifest.get("formatVersion") != FORMAT_VERSION:
        raise BundleError(
            f"unsupported bundle format {manifest.get('format')!r} "
            f"version {manifest.get('formatVersion')!r}"
        )
    listed = manifest.get("files") or {}
    for name in (RECORDS, EMBEDDINGS):
        if (name in files) != (name in listed):
            raise BundleError(f"{name} is {'not ' if name not in listed else ''}in the manifest")
    for name, entry in listed.items():
        if name not in files:
            raise BundleError(f"{name} is listed in the manifest but missing")
        actual = hashlib.sha256(files[name]).hexdigest()
        if actual != entry.get("sha256") or len(files[name]) != entry.get("bytes"):
            raise BundleError(f"{name} does not match its sha256 in the manifest")
    versions = _parse(files, manifest)
    return Contents(manifest, key_id(public), versions)


def _parse(
    files: dict[str, bytes], manifest: dict[str, Any]
) -> list[tuple[Record, list[float] | None]]:
    records: list[Record] = []
    for n, line in enumerate(files[RECORDS].splitlines(), 1):
        try:
            record = Record.model_validate_json(line)
            check_metadata(record.metadata)
        except ValidationError as exc:
            raise BundleError(f"records.jsonl line {n}: {exc.errors()[0]['msg']}") from None
        except ValueError as exc:
            raise BundleError(f"records.jsonl line {n}: {exc}") from None
        records.append(record)
    vectors: dict[tuple[str, int], list[float]] = {}
    for n, line in enumerate(files.get(EMBEDDINGS, b"").splitlines(), 1):
        try:
            entry = json.loads(line)
            vector = [float(x) for x in entry["vector"]]
            if not all(math.isfinite(x) for x in vector):
                raise ValueError("a vector holds NaN or Infinity")
            vectors[(str(entry["id"]), int(entry["version"]))] = vector
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise BundleError(f"embeddings.jsonl line {n}: {exc}") from None
    counts = manifest.get("counts") or {}
    if counts.get("versions") != len(records) or counts.get("embeddings", 0) != len(vectors):
        raise BundleError("the record counts do not match the manifest")
    return [(r, vectors.get((r.id, r.version))) for r in records]
