"""A real OCI registry (Debian's docker-registry, the CNCF distribution) on loopback, with
its storage in a temporary folder, for the oci:// model source tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.ports import free_port


@contextmanager
def registry(folder: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Yields host:port of a running registry (plain HTTP, no auth; loopback unless
    `host` names another address of this machine, e.g. the one pods reach)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise AssertionError(
            "Debian's docker-registry is needed for the OCI tests: apt-get install "
            "docker-registry (scripts/test installs it)"
        )
    port = free_port(host)
    config = folder / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: '{host}:{port}'}}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "registry.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{host}:{port}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError((folder / "registry.log").read_text())
        yield f"{host}:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def push(host: str, reference: str, file: Path, *more: Path) -> None:
    """Push files of one folder as an OCI artifact (as `oras push HOST/REF FILE...` does)."""
    import os

    import oras.client

    client = oras.client.OrasClient(hostname=host, insecure=True)
    here = Path.cwd()
    os.chdir(file.parent)  # oras names the layer by the path given
    try:
        names = [file.name, *(m.name for m in more)]
        assert client.push(target=f"{host}/{reference}", files=names).status_code == 201
    finally:
        os.chdir(here)
