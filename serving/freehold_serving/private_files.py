"""Files only this process's user may read: memory databases, audit logs, keys.

A store's data and trail are personal data; the default umask (0022) would leave them and
their folders readable by every local user. Folders are 0700 and files 0600, whatever the
umask, and folders that already exist are tightened, not only new ones.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents, also 0700) or tighten it to 0700."""
    missing = []
    walk = path
    while not walk.exists():
        missing.append(walk)
        walk = walk.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
    _tighten(path, DIR_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    # A volume's root belongs to root (the kubelet makes it, fsGroup gives us its group):
    # only what this user owns can be, and needs to be, tightened.
    if path.stat().st_uid == os.geteuid():
        os.chmod(path, mode)


def private_file(path: Path) -> Path:
    """Create `path` empty with 0600 if absent (its folder 0700), or tighten it to 0600."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)
    return path
