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


def locate(uri: str, pvc_root: Path = Path("/data")) -> Path:
    """file:// paths, pvc://CLAIM/path (mounted at <pvc_root>/CLAIM in the Job's pod) and
    package://freehold/evals/NAME (the built-in suites). Nothing is fetched."""
    parsed = urlparse(uri)
    relative = unquote(parsed.path.lstrip("/"))
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "package":
        if parsed.netloc != BUILTIN_PACKAGE or not relative.startswith("evals/"):
            raise DatasetError(f"{uri}: only package://freehold/evals/... is shipped")
        path = BUILTIN_DIR / relative.removeprefix("evals/")
    elif parsed.scheme == "pvc":
        path = pvc_root / parsed.netloc / relative
    else:
        raise DatasetError(
            f"{uri}: {parsed.scheme}:// datasets are not fetched by this runner (offline by "
            "design); use file://, pvc:// or package://"
        )
    if ".." in Path(relative).parts:
        raise DatasetError(f"{uri}: the path must not leave its root")
    return path


def load(uri: str, sha256: str, pvc_root: Path = Path("/data")) -> list[Item]:
    return parse(uri, read(uri, sha256, pvc_root)[1])


def read(uri: str, sha256: str, pvc_root: Path = Path("/data")) -> tuple[Path, bytes]:
    """The file's path and bytes, once its sha256 matched."""
    path = locate(uri, pvc_root)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{uri}: cannot read {path}: {exc.strerror}") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != sha256:
        raise DatasetError(
            f"{uri}: sha256 mismatch: the spec pins {sha256}, the file is {actual}. "
            "Nothing was evaluated."
        )
    return path, raw


def parse(uri: str, raw: bytes) -> list[Item]:
    items: list[Item] = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{uri} line {n}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{uri} line {n}: expected a JSON object")
        items.append(Item(len(items), data))
    if not items:
        raise DatasetError(f"{uri}: no items")
    return items
