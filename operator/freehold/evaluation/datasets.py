"""Pinned datasets: located without any download, checked against their sha256 before a
single item is read."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

BUILTIN_PACKAGE = "freehold"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "evals"


class DatasetError(Exception):
    """The dataset cannot be used; the message names the file, line or digest."""


@dataclass(frozen=True)
class Item:
    index: int
    data: dict[str, Any]


def _confined(uri: str, path: Path, root: Path) -> Path:
    """`path` with every symlink and `..` resolved, refused by name unless it stays inside
    `root` (itself resolved): a dataset name never reaches a file outside its root."""
    real_root = root.resolve()
    real = path.resolve()
    if not real.is_relative_to(real_root):
        raise DatasetError(f"{uri}: the path leaves its root {root}; refused")
    return real


def locate(uri: str, pvc_root: Path = Path("/data"), file_root: Path | None = None) -> Path:
    """file:// paths (only inside `file_root`: `freehold eval run --data-root`),
    pvc://CLAIM/path (mounted at <pvc_root>/CLAIM in the Job's pod) and
    package://freehold/evals/NAME (the built-in suites). Nothing is fetched; every path is
    confined to its root after symlinks are resolved."""
    parsed = urlparse(uri)
    relative = unquote(parsed.path.lstrip("/"))
    if parsed.scheme == "file":
        if file_root is None:
            raise DatasetError(
                f"{uri}: file:// datasets are read only by `freehold eval run` (under "
                "--data-root); in a Job use pvc:// or package://"
            )
        return _confined(uri, Path("/") / relative, file_root)
    if parsed.scheme == "package":
        if parsed.netloc != BUILTIN_PACKAGE or not relative.startswith("evals/"):
            raise DatasetError(f"{uri}: only package://freehold/evals/... is shipped")
        return _confined(uri, BUILTIN_DIR / relative.removeprefix("evals/"), BUILTIN_DIR)
    if parsed.scheme == "pvc":
        claim = unquote(parsed.netloc)
        if not claim or "/" in claim or claim in (".", ".."):
            raise DatasetError(f"{uri}: pvc://CLAIM/PATH needs a claim name")
        return _confined(uri, pvc_root / claim / relative, pvc_root / claim)
    raise DatasetError(
        f"{uri}: {parsed.scheme}:// datasets are not fetched by this runner (offline by "
        "design); use file://, pvc:// or package://"
    )


def load(
    uri: str, sha256: str, pvc_root: Path = Path("/data"), file_root: Path | None = None
) -> list[Item]:
    return parse(uri, read(uri, sha256, pvc_root, file_root)[1])


def read(
    uri: str, sha256: str, pvc_root: Path = Path("/data"), file_root: Path | None = None
) -> tuple[Path, bytes]:
    """The file's path and bytes, once its sha256 matched. A mismatch never shows the
    file's own digest (it would tell the caller what an unknown file holds)."""
    path = locate(uri, pvc_root, file_root)
    return path, read_pinned(uri, path, sha256)


MAX_DATASET_BYTES = 256 * 1024 * 1024


def read_pinned(where: str, path: Path, sha256: str) -> bytes:
    try:
        if path.stat().st_size > MAX_DATASET_BYTES:
            raise DatasetError(f"{where}: larger than {MAX_DATASET_BYTES} bytes; refused")
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read {path.name}: {exc.strerror}") from None
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise DatasetError(
            f"{where}: sha256 mismatch: {path.name} is not the file the spec pins ({sha256}). "
            "Nothing was evaluated."
        )
    return raw


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(uri: str, raw: bytes) -> list[Item]:
    """One JSON object a line. Bad bytes, deep nesting and NaN are refused naming the
    line (exit code 2 in `freehold eval run`: bad input, never a failed gate)."""
    items: list[Item] = []
    for n, raw_line in enumerate(raw.splitlines(), 1):
        if not raw_line.strip():
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{uri} line {n}: not UTF-8 (byte {exc.start + 1})") from None
        try:
            data = json.loads(line, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{uri} line {n}: not JSON ({exc.msg})") from None
        except RecursionError:
            raise DatasetError(f"{uri} line {n}: nested too deeply") from None
        except ValueError as exc:
            raise DatasetError(f"{uri} line {n}: {exc}") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{uri} line {n}: expected a JSON object")
        items.append(Item(len(items), data))
    if not items:
        raise DatasetError(f"{uri}: no items")
    return items
