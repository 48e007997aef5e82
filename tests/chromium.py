"""Headless Chromium (Debian's package) for tests that look at rendered pages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from PIL import Image

# Without the background-networking flags Chromium tries Google's hosts at every start;
# the machines this runs on have no network beyond loopback.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def screenshot(page: Path, out: Path, width: int = 900, height: int = 2400) -> Image.Image:
    binary = shutil.which("chromium")
    if binary is None:
        raise AssertionError(
            "Debian's chromium is needed to render reports: apt-get install chromium "
            "(scripts/test installs it)"
        )
    profile = out.parent / f"{out.stem}-profile"
    subprocess.run(
        [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Image.open(out).convert("RGB")


def pixels_near(image: Image.Image, colour: str, tolerance: int = 24) -> int:
    """How many pixels are within `tolerance` (per channel) of a #rrggbb colour."""
    want = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    data = image.getdata()
    return sum(
        1
        for px in data
        if all(abs(int(a) - b) <= tolerance for a, b in zip(px, want, strict=False))
    )
