"""Importing a library without one of the optional modules it probes for."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def without_optional(*names: str) -> Iterator[None]:
    """Inside the block, `import NAME` raises ImportError for each name not imported yet,
    as if it were not installed (Python's own rule for a None entry in sys.modules); after
    it, the module imports normally for anyone else."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
