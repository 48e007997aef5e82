"""Reading manifests from YAML files, with positions for error messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ManifestError(Exception):
    """A file that cannot be read or parsed as YAML."""


@dataclass(frozen=True)
class Document:
    """One YAML document of a file."""

    source: str
    index: int
    body: Any

    @property
    def label(self) -> str:
        if isinstance(self.body, dict):
            kind = self.body.get("kind", "?")
            meta = self.body.get("metadata")
            name = meta.get("name", "?") if isinstance(meta, dict) else "?"
            return f"{self.source}#{self.index} {kind}/{name}"
        return f"{self.source}#{self.index}"


def load_documents(path: Path) -> Iterator[Document]:
    """The non-empty YAML documents of a file ('-' for standard input)."""
    try:
        import sys

        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{path}{where}: invalid YAML: {problem}") from exc
    for index, body in enumerate(docs):
        if body is not None:
            yield Document(str(path), index, body)
