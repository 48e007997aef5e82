"""Real pods on a real node: the images built here (scripts/images), the chart installed
with helm, and every kind's pods running on ../shared/kube/start --node (kubelet,
containerd, kube-proxy, CoreDNS, NetworkPolicies enforced by kube-router).

What stands in, and why (nothing else is a double):
- Vault: tests/vault_server.py in a pod of namespace `vault` (Vault and OpenBao cannot be
  installed here). It speaks Vault's HTTP API and checks every Kubernetes-auth login with
  the real API server's TokenReview (audience `vault`), as Vault does.
- The OpenTelemetry Collector: tests/otlp_receiver.py in a pod of namespace `otel`.
- The models' OCI registry: Debian's docker-registry on this machine's address (pods reach
  the node itself; nothing leaves the machine), as an air-gapped site's mirror.

The images are pushed to the node's registry (localhost:5000) and the chart refers to them
by digest, as values-airgap.yaml does. Each step's seconds go to .cache/node-report.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import _CLUSTER, apply, eventually, kubectl
from tests.paths import CHART, CRDS, ROOT, SHARED
from tests.pg_server import Postgres
from tests.registry import registry
from tests.tools import binary

KUBE = SHARED / "kube"
STATE = Path(
    os.environ.get("FREEHOLD_KUBE_STATE") or f"{os.environ.get('TMPDIR', '/tmp')}/freehold-kube"
)
REGISTRY = f"localhost:{os.environ.get('FREEHOLD_NODE_REGISTRY_PORT', '5000')}"
REPORT = ROOT / ".cache" / "node-report.json"
SYSTEM = "freehold-system"
MODELS = "fh-node-models"
OTHER = "fh-node-other"
ROOT_TOKEN = "root-node-suite"  # the stand-in lives only in this test cluster
REGION = "eu-central"
# Set to run engine vllm in a pod (tests/node/test_vllm_pod.py): builds the vLLM image too.
VLLM_OPT_IN = "FREEHOLD_NODE_VLLM"

_timings: dict[str, float] = {}


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Time a step for the report (a figure, never an assertion)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        _timings[step] = round(time.monotonic() - t0, 1)
        REPORT.parent.mkdir(exist_ok=True)
        REPORT.write_text(json.dumps(_timings, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _timings:
        terminalreporter.section("real pods: seconds per step")
        for step, seconds in _timings.items():
            terminalreporter.write_line(f"{seconds:8.1f}  {step}")


def diagnose(namespace: str) -> str:
    """Pods, events and the last logs of every container in a namespace, for a failure."""
    parts = [
        kubectl(
            "get", "pods,deploy,sts,jobs,svc", "-n", namespace, "-o", "wide", check=False
        ).stdout,
        kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout[
            -6000:
        ],
    ]
    pods = kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).stdout.split()
    for pod in pods:
        for previous in ("", "--previous"):
            logs = kubectl(
                "logs", pod, "-n", namespace, "--all-containers", "--tail=40", previous, check=False
            )
            if logs.stdout.strip():
                parts.append(f"--- {pod} {previous}\n{logs.stdout}")
    return "\n".join(parts)


def wait_for(
    check: Callable[[], Any], namespace: str, what: str, timeout: float = 180, interval: float = 1
) -> Any:
    """eventually(), but a failure shows the namespace's pods, events and logs."""
    try:
        return eventually(check, timeout=timeout, interval=interval)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}\n{diagnose(namespace)}") from None


def helm(*args: str, timeout: float = 360) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(binary("helm")), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "KUBECONFIG": _CLUSTER["kubeconfig"]},
    )
    assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr}"
    return done


def restricted_namespace(name: str, **labels: str) -> None:
    if kubectl("get", "namespace", name, check=False).returncode != 0:
        kubectl("create", "namespace", name)
    kubectl(
        "label",
        "namespace",
        name,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        *(f"{k}={v}" for k, v in labels.items()),
    )


def restricted() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def clean_slate() -> None:
    """Remove what an earlier run left (a developer's rerun on the same node): the models'
    namespaces first, while the operator can still release their Vault finalizers."""
    kubectl(
        "delete",
        "ns",
        MODELS,
        OTHER,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=90s",
        check=False,
        timeout=120,
    )
    for kind in ("modeldeployments", "memorystores", "evaljobs", "modelrouters"):
        for name in kubectl("get", kind, "-n", MODELS, "-o", "name", check=False).stdout.split():
            kubectl(
                "patch",
                name,
                "-n",
                MODELS,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
    subprocess.run(
        [str(binary("helm")), "uninstall", "freehold", "-n", SYSTEM, "--wait"],
        capture_output=True,
        check=False,
        timeout=120,
        env={**os.environ, "KUBECONFIG": _CLUSTER["kubeconfig"]},
    )
    kubectl(
        "delete",
        "ns",
        MODELS,
        OTHER,
        SYSTEM,
        "vault",
        "otel",
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
        check=False,
        timeout=150,
    )
    kubectl("delete", "pv", "-l", "freehold.dev/test=node", "--ignore-not-found", check=False)
    kubectl(
        "delete",
        "clusterrolebinding",
        "fh-node-vault-tokenreview",
        "--ignore-not-found",
        check=False,
    )


@pytest.fixture(scope="session")
def node() -> Iterator[str]:
    """A control plane with a real node (restarted in node mode if a plane-only one runs).
    Everything the suite installed is removed at the end (its cluster-wide RBAC would stop a
    later `helm install` of another release), unless FREEHOLD_NODE_REUSE keeps it."""
    start = KUBE / "start"
    if not start.exists():
        pytest.skip(f"no {start}: the real-pods suite needs ../shared/kube")
    mode = STATE / "run" / "mode"
    if mode.exists() and mode.read_text().strip() != "node":
        subprocess.run(["bash", str(KUBE / "stop")], check=False, capture_output=True, timeout=120)
    with timed("start the control plane and the node"):
        started = subprocess.run(
            ["bash", str(start), "--node"], check=False, capture_output=True, text=True, timeout=600
        )
    assert started.returncode == 0, started.stderr[-3000:]
    _CLUSTER["kubeconfig"] = started.stdout.strip().rsplit("export KUBECONFIG=", 1)[-1].strip()
    if not os.environ.get("FREEHOLD_NODE_REUSE"):  # keep what runs (a developer's rerun)
        clean_slate()
        shutil.rmtree(VOLUMES, ignore_errors=True)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    # ModelDeployments are pinned to a region: this node is in it.
    node_name = kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout
    kubectl("label", "node", node_name, "--overwrite", f"topology.kubernetes.io/region={REGION}")
    yield _CLUSTER["kubeconfig"]
    if not os.environ.get("FREEHOLD_NODE_REUSE"):
        clean_slate()


@pytest.fixture(scope="session")
def images(node: str) -> dict[str, Any]:
    """The images, built from the project's Dockerfiles (cached layers: scripts/test built
    them before pytest) and pushed to the node's registry; referred to by digest.
    FREEHOLD_NODE_IMAGES=FILE names an images.json already pushed (while iterating)."""
    given = os.environ.get("FREEHOLD_NODE_IMAGES")
    if given:
        pushed: dict[str, Any] = json.loads(Path(given).read_text())
        return pushed
    # The vLLM image (~5 GB unpacked) only for the opt-in vLLM pod test (test_vllm_pod.py).
    vllm = ["--vllm"] if os.environ.get(VLLM_OPT_IN) else []
    with timed("build (cached) and push the images"):
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "images"), "--push", REGISTRY, *vllm],
            check=False,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    assert done.returncode == 0, done.stderr[-4000:]
    found: dict[str, Any] = json.loads((ROOT / ".cache" / "images" / "images.json").read_text())
    return found


@pytest.fixture(scope="session")
def host_address(node: str) -> str:
    """This machine's address as pods see it (they reach the node itself, nothing else)."""
    return kubectl(
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.addresses[?(@.type=='InternalIP')].address}",
    ).stdout.strip()


def serving_pod(
    name: str, namespace: str, image: str, command: list[str], **extra: Any
) -> dict[str, Any]:
    """A restricted pod of the serving image (a client, or a stand-in) by digest."""
    spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "main",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "securityContext": restricted(),
                "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}},
                **extra.pop("container", {}),
            }
        ],
        **extra,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": spec,
    }


def pod_ip(name: str, namespace: str) -> str:
    return kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.podIP}").stdout


def wait_ready(kind_name: str, namespace: str, timeout: int = 180) -> None:
    done = kubectl(
        "wait",
        "--for=condition=Ready",
        kind_name,
        "-n",
        namespace,
        f"--timeout={timeout}s",
        check=False,
        timeout=timeout + 30,
    )
    if done.returncode != 0:
        raise AssertionError(f"{kind_name} not Ready: {done.stderr}\n{diagnose(namespace)}")


class Vault:
    """The Vault stand-in in its pod, driven over HTTP with the root token (from the host,
    through the pod's address)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, headers={"X-Vault-Token": ROOT_TOKEN}, timeout=10)

    def write(self, path: str, body: dict[str, Any]) -> None:
        response = self.client.post(f"/v1/{path}", json=body)
        assert response.status_code in (200, 204), response.text

    def read(self, path: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/{path}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found


# What the operator's Vault role must allow (the README's "Secrets" section says the same).
OPERATOR_POLICY = """
path "sys/policies/acl/freehold.*" { capabilities = ["create", "read", "update", "delete"] }
path "auth/kubernetes/role/freehold.*" { capabilities = ["create", "read", "update", "delete"] }
path "transit/keys/*" { capabilities = ["create", "read", "update", "delete"] }
path "transit/sign/freehold-operator-audit" { capabilities = ["update"] }
"""


@pytest.fixture(scope="session")
def vault(node: str, images: dict[str, Any]) -> Vault:
    with timed("Vault stand-in pod ready"):
        restricted_namespace("vault")
        script = (ROOT / "tests" / "vault_server.py").read_text()
        apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "vault", "namespace": "vault"},
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "fh-node-vault-tokenreview"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "system:auth-delegator",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": "vault", "namespace": "vault"}],
                },
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "vault-server", "namespace": "vault"},
                    "data": {"vault_server.py": script},
                },
                serving_pod(
                    "vault",
                    "vault",
                    images["serving"],
                    ["python3", "/srv/vault_server.py", "--in-cluster", "--root-token", ROOT_TOKEN],
                    serviceAccountName="vault",
                    container={
                        "ports": [{"containerPort": 8200}],
                        "volumeMounts": [{"name": "code", "mountPath": "/srv"}],
                        "readinessProbe": {
                            "httpGet": {"path": "/v1/sys/health", "port": 8200},
                            "periodSeconds": 1,
                        },
                    },
                    volumes=[{"name": "code", "configMap": {"name": "vault-server"}}],
                ),
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "vault", "namespace": "vault"},
                    "spec": {
                        "selector": {"app": "vault"},
                        "ports": [{"port": 8200, "targetPort": 8200}],
                    },
                },
            ]
        )
        wait_ready("pod/vault", "vault")
    found = Vault(f"http://{pod_ip('vault', 'vault')}:8200")
    found.write("sys/policies/acl/freehold-operator", {"policy": OPERATOR_POLICY})
    found.write(
        "auth/kubernetes/role/freehold-operator",
        {
            "bound_service_account_names": ["freehold-operator"],
            "bound_service_account_namespaces": [SYSTEM],
            "token_policies": ["freehold-operator"],
            "token_ttl": 600,
        },
    )
    return found


@pytest.fixture(scope="session")
def otel(node: str, images: dict[str, Any]) -> str:
    """The receiver's address from the host (pods send to otel.otel.svc:4318)."""
    with timed("OTLP receiver pod ready"):
        restricted_namespace("otel")
        apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "receiver", "namespace": "otel"},
                    "data": {"otlp_receiver.py": (ROOT / "tests" / "otlp_receiver.py").read_text()},
                },
                serving_pod(
                    "otel",
                    "otel",
                    images["serving"],
                    ["python3", "/srv/otlp_receiver.py", "--port", "4318"],
                    container={
                        "ports": [{"containerPort": 4318}],
                        "volumeMounts": [{"name": "code", "mountPath": "/srv"}],
                        "readinessProbe": {"tcpSocket": {"port": 4318}, "periodSeconds": 1},
                    },
                    volumes=[{"name": "code", "configMap": {"name": "receiver"}}],
                ),
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "otel", "namespace": "otel"},
                    "spec": {
                        "selector": {"app": "otel"},
                        "ports": [{"port": 4318, "targetPort": 4318}],
                    },
                },
            ]
        )
        wait_ready("pod/otel", "otel")
    return f"http://{pod_ip('otel', 'otel')}:4318"


@pytest.fixture(scope="session")
def node_postgres(host_address: str) -> Iterator[Postgres]:
    """A real PostgreSQL 15 on this machine, served on the node's address for pods (as a
    database outside the cluster, which is how many sites run theirs)."""
    from tests.pg_server import postgres_server

    with ExitStack() as stack:
        with timed("PostgreSQL on the node's address ready"):
            pg = stack.enter_context(postgres_server(host_address))
        yield pg


@pytest.fixture(scope="session")
def model_registry(
    node: str, host_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """HOST:PORT of an OCI registry on this machine's address, which pods reach."""
    with registry(tmp_path_factory.mktemp("models-registry"), host=host_address) as running:
        yield running


@pytest.fixture(scope="session")
def audit_volume(node: str) -> Path:
    """A local PersistentVolume for the operator's audit log (no dynamic provisioner here);
    the test reads the log from the node's disk afterwards. A fixed folder, kept while
    FREEHOLD_NODE_REUSE keeps the installation."""
    folder = ROOT / ".cache" / "node-operator-audit"
    if not os.environ.get("FREEHOLD_NODE_REUSE"):
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, 1000, 1000)  # the operator runs as 1000; fsGroup does not apply to hostPath
    claim = f"{SYSTEM}/freehold-operator-audit"
    apply(local_volume("fh-node-operator-audit", folder, "1Gi", claim))
    return folder


VOLUMES = ROOT / ".cache" / "node-volumes"


@pytest.fixture(scope="session")
def provisioner(node: str) -> Iterator[None]:
    """Stands in for a dynamic volume provisioner, which this cluster has none of (a real
    one is a controller image we cannot pull here): every Pending claim in the models'
    namespace gets a hostPath PersistentVolume of its own, bound to it by claimRef. The
    kubelet, the binding and the pods' use of the volumes are real."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(1):
            listed = kubectl("get", "pvc", "-n", MODELS, "-o", "json", check=False)
            if listed.returncode != 0:
                continue
            for claim in json.loads(listed.stdout)["items"]:
                if claim["status"].get("phase") != "Pending" or claim["spec"].get("volumeName"):
                    continue
                name = claim["metadata"]["name"]
                folder = VOLUMES / f"{MODELS}-{name}-{claim['metadata']['uid'][:8]}"
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, 1000, 1000)  # fsGroup does not apply to hostPath
                size = claim["spec"]["resources"]["requests"]["storage"]
                pv = local_volume(f"fh-node-{folder.name}"[:63], folder, size, f"{MODELS}/{name}")
                kubectl("apply", "-f", "-", input=json.dumps(pv), check=False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


def claimed_folder(claim: str) -> Path:
    """Where the provisioner keeps a claim's volume on this machine."""
    volume = kubectl("get", "pvc", claim, "-n", MODELS, "-o", "jsonpath={.spec.volumeName}")
    path = kubectl("get", "pv", volume.stdout, "-o", "jsonpath={.spec.hostPath.path}")
    return Path(path.stdout)


def local_volume(name: str, folder: Path, size: str, claim: str) -> dict[str, Any]:
    namespace, _, claim_name = claim.partition("/")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"freehold.dev/test": "node"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(folder), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": claim_name},
        },
    }


@pytest.fixture(scope="session")
def operator(
    node: str,
    images: dict[str, Any],
    vault: Vault,
    otel: str,
    model_registry: str,
    audit_volume: Path,
    host_address: str,
    provisioner: None,
) -> dict[str, Any]:
    """`helm install` as a platform team runs it, with the air-gapped values (images by
    digest); the operator runs as a pod under restricted PSS with the chart's RBAC and
    NetworkPolicy."""
    restricted_namespace(SYSTEM)
    restricted_namespace(MODELS)
    restricted_namespace(OTHER)
    values = Path(
        os.environ.get("FREEHOLD_NODE_VALUES") or ROOT / ".cache" / "images" / "values.yaml"
    )
    t0 = time.monotonic()
    with timed("helm install until the operator pod is Ready"):
        helm(
            "upgrade",
            "--install",
            "freehold",
            str(CHART),
            "-n",
            SYSTEM,
            "-f",
            str(values),
            "--set",
            f"watch.namespaces={{{MODELS}}}",
            "--set",
            "vault.address=http://vault.vault.svc:8200",
            "--set",
            "telemetry.otlpEndpoint=http://otel.otel.svc:4318",
            "--set",
            "telemetry.collectorNamespace=otel",
            "--set",
            "audit.enabled=true",
            "--set",
            f"insecureRegistries={{{model_registry}}}",
            "--set",
            "resyncSeconds=60",
            # This cluster's CoreDNS runs on the host network, on port 1053.
            "--set",
            f"networkPolicy.dns.cidrs={{{host_address}/32}}",
            "--set",
            "networkPolicy.dns.ports={53,1053}",
            "--wait",
            "--timeout",
            "5m",
        )
        wait_for(
            lambda: (
                kubectl(
                    "get",
                    "pods",
                    "-n",
                    SYSTEM,
                    "-l",
                    "app.kubernetes.io/name=freehold-operator",
                    "-o",
                    "jsonpath={.items[*].status.containerStatuses[*].ready}",
                ).stdout
                == "true"
            ),
            SYSTEM,
            "the operator pod Ready",
        )
    return {"installed_at": t0}


def operator_logs() -> str:
    return kubectl(
        "logs", "-n", SYSTEM, "deployment/freehold-operator", "--tail=200", check=False
    ).stdout


def manifest(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc)
