"""e2e: a real Kubernetes API server is the judge of CRDs, CEL, RBAC, finalizers, garbage
collection and watches.

Which cluster: FREEHOLD_E2E_KUBECONFIG if set (kind, k3d, any cluster you may create
namespaces and CRDs in); otherwise ../shared/kube/start (etcd + kube-apiserver +
kube-controller-manager on loopback, like envtest: pods are admitted but never run),
started here when the script exists; otherwise the suite is skipped, saying why.

    kind create cluster && FREEHOLD_E2E_KUBECONFIG=~/.kube/config scripts/test tests/e2e

The operator runs as a subprocess with the chart's ServiceAccount token, so every call it
makes is checked against exactly the chart's RBAC. Vault is tests/vault_server.py (Vault
cannot be installed here; the same flows run on a real Vault in tests/integration).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.paths import CHART, CRDS, EXAMPLES, ROOT
from tests.ports import free_port
from tests.tools import binary
from tests.vault_server import VaultServer

KUBE_START = ROOT.parent / "shared" / "kube" / "start"
# The cluster's admin kubeconfig, once the session fixture has found or started it.
_CLUSTER: dict[str, str] = {}


def kubectl(
    *args: str,
    check: bool = True,
    input: str | None = None,
    timeout: float = 120,
    kubeconfig: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig or _CLUSTER.get("kubeconfig", "")}
    result = subprocess.run(
        [str(binary("kubectl")), *args],
        check=False,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


def get(kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    result = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr or "not found" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s (last: {last!r})")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def example(namespace: str, name: str = "gemma-270m", **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"]["network"]["allowFrom"] = [
        {"namespaceSelector": {"kubernetes.io/metadata.name": namespace}}
    ]
    doc["spec"].update(spec)
    return doc


def set_status(kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
    """Write a child's status as its own controller would (none runs pods here)."""
    kubectl(
        "patch",
        kind,
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def apply(doc: dict[str, Any] | list[dict[str, Any]]) -> None:
    docs = doc if isinstance(doc, list) else [doc]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


@pytest.fixture(scope="session")
def cluster() -> str:
    config = os.environ.get("FREEHOLD_E2E_KUBECONFIG")
    if not config:
        if not KUBE_START.exists():
            pytest.skip(
                "no cluster for the e2e suite: set FREEHOLD_E2E_KUBECONFIG (kind, k3d), "
                f"or provide {KUBE_START}"
            )
        # `start` reuses a running plane. One left in node mode (the real-pods suite, or a run
        # killed before its cleanup) holds another release's cluster-wide objects and runs
        # pods: this suite wants a plane where pods never run, so it starts a fresh one.
        tmp = os.environ.get("TMPDIR", "/tmp")
        state = os.environ.get("FREEHOLD_KUBE_STATE") or f"{tmp}/freehold-kube"
        mode = Path(state) / "run" / "mode"
        if mode.exists() and mode.read_text().strip() == "node":
            subprocess.run(
                ["bash", str(KUBE_START.with_name("stop"))],
                check=False,
                capture_output=True,
                timeout=180,
            )
        started = subprocess.run(
            ["bash", str(KUBE_START)], check=False, capture_output=True, text=True, timeout=300
        )
        if started.returncode != 0:
            raise AssertionError(f"{KUBE_START} failed: {started.stderr[-2000:]}")
        config = started.stdout.strip().rsplit("export KUBECONFIG=", 1)[-1].strip()
    _CLUSTER["kubeconfig"] = config
    if kubectl("version", "--request-timeout=10s", check=False).returncode != 0:
        raise AssertionError(f"the cluster in {config} does not answer")
    if not os.environ.get("FREEHOLD_E2E_KUBECONFIG"):
        # Our own test plane: start without KubeRay, so the suite covers the Deployment
        # backend first and test_rayservice.py the switch to RayService.
        kubectl("delete", "crd", "rayservices.ray.io", "--ignore-not-found", "--wait=true")
    return config


def kuberay_served() -> bool:
    return "rayservices" in kubectl("api-resources", "--api-group=ray.io", "-o", "name").stdout


@pytest.fixture
def deployment_backend(cluster: str) -> None:
    if kuberay_served():
        pytest.skip("KubeRay is installed on this cluster: the operator serves RayServices")


@pytest.fixture(scope="session")
def crds(cluster: str) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for crd in ("modeldeployments", "memorystores", "evaljobs", "modelrouters"):
        eventually(  # right after an apply a CRD may have no status yet to wait on
            lambda c=crd: (
                kubectl(
                    "wait",
                    "--for=condition=Established",
                    f"crd/{c}.freehold.dev",
                    "--timeout=5s",
                    check=False,
                ).returncode
                == 0
            )
        )


def new_namespace(prefix: str = "fh-e2e") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    return name


@pytest.fixture(scope="session")
def namespace(crds: None) -> Iterator[str]:
    name = new_namespace()
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def operator_kubeconfig(cluster: str, namespaces: list[str], tmp: Path) -> Path:
    """The chart's ServiceAccount and RBAC for these namespaces, and a kubeconfig with
    a real token for that ServiceAccount: the operator gets exactly the chart's rights."""
    system = f"fh-system-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", system)
    rendered = subprocess.run(
        [
            str(binary("helm")),
            "template",
            "e2e",
            str(CHART),
            "-n",
            system,
            "--set",
            f"watch.namespaces={{{','.join(namespaces)}}}",
            "--set",
            "networkPolicy.apiServerCIDR=127.0.0.1/32",
            "-s",
            "templates/rbac.yaml",
            "-s",
            "templates/serviceaccount.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kubectl("apply", "-f", "-", input=rendered)
    token = kubectl(
        "create", "token", "freehold-operator", "-n", system, "--duration=6h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(cluster).read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == current["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": server["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "operator"}}],
        "current-context": "e2e",
    }
    path = tmp / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


class Operator:
    """`freehold operator` as a subprocess; tests may kill and restart it."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], log: Path, **env: str) -> None:
        self.log = log
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "FREEHOLD_OPERATOR_NAMESPACES": json.dumps(namespaces),
            "FREEHOLD_OPERATOR_DISCOVERY_SECONDS": "1",
            "FREEHOLD_OPERATOR_LIVENESS_HOST": "127.0.0.1",
            "FREEHOLD_OPERATOR_LIVENESS_PORT": str(free_port()),
            "FREEHOLD_OPERATOR_METRICS_HOST": "127.0.0.1",
            "FREEHOLD_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "FREEHOLD_OPERATOR_SERVING_IMAGE": "registry.local/freehold-serving:e2e",
            "PYTHONWARNINGS": "ignore::Warning",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freehold", "operator"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def vault() -> Iterator[VaultServer]:
    with VaultServer() as server:
        yield server


@pytest.fixture(scope="session")
def operator(
    cluster: str, namespace: str, vault: VaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    tmp = tmp_path_factory.mktemp("operator")
    proc = Operator(
        operator_kubeconfig(cluster, [namespace], tmp),
        [namespace],
        tmp / "operator.log",
        FREEHOLD_OPERATOR_VAULT_ADDRESS=vault.url,
        FREEHOLD_OPERATOR_VAULT_TOKEN=vault.state.root_token,
        FREEHOLD_OPERATOR_AUDIT_DIR=str(tmp / "audit"),
    )
    proc.start()
    yield proc
    proc.stop()
    # Our code must never die with a traceback (kopf's own reconnect notices are fine).
    ours = [
        line for line in proc.output().splitlines() if "/freehold/" in line and 'File "' in line
    ]
    assert not ours, proc.output()[-4000:]
