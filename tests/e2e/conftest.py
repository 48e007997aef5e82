"""e2e: against the cluster in KUBECONFIG (kind, k3d, or a real one). Skipped without.

Run on kind:
    kind create cluster && KUBECONFIG=~/.kube/config scripts/test tests/e2e
Set FREEHOLD_E2E_SERVING_IMAGE to a serving image the nodes can pull to also wait for
Ready=True (the model is then really served); without it, the suite checks everything
up to the pods (CRDs, admission, children, status, cleanup). The example pins residency
to region eu-central: pods stay Pending (by design) until a node carries that label,
e.g. `kubectl label node --all topology.kubernetes.io/region=eu-central`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import CRDS
from tests.tools import binary


def kubectl(
    *args: str, check: bool = True, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("kubectl")), *args],
        capture_output=True,
        text=True,
        check=check,
        input=input,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cluster() -> str:
    config = os.environ.get("KUBECONFIG")
    if not config:
        pytest.skip("no KUBECONFIG: the e2e suite needs a real cluster (kind or k3d works)")
    if kubectl("version", "--request-timeout=10s", check=False).returncode != 0:
        pytest.skip(f"the cluster in KUBECONFIG={config} does not answer")
    return config


@pytest.fixture(scope="session")
def namespace(cluster: str) -> Iterator[str]:
    name = f"freehold-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "--server-side", "-f", str(CRDS))
    for crd in ("modeldeployments", "memorystores", "evaljobs"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.freehold.dev", "--timeout=60s")
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        **os.environ,
        "FREEHOLD_OPERATOR_NAMESPACES": f'["{namespace}"]',
        "FREEHOLD_OPERATOR_RESYNC_SECONDS": "5",
        "FREEHOLD_OPERATOR_LIVENESS_PORT": "18080",
    }
    if image := os.environ.get("FREEHOLD_E2E_SERVING_IMAGE"):
        env["FREEHOLD_OPERATOR_SERVING_IMAGE"] = image
    with Path(log).open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "freehold", "operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(30)
