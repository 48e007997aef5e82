"""1,000 ModelDeployments created at once on a real API server: time until every one has
its children and a status for its current generation, and the operator's peak RSS.
Then all deleted at once: time until no child is left. Goal (issue 29): <= 30 s, <= 256 MB.

The cluster: --kubeconfig, FREEHOLD_E2E_KUBECONFIG, or ../shared/kube/start (started here).
The operator runs as a subprocess, as in production (one process, bounded workers).

    python bench/operator_scale.py [--count 1000] [--workers 8] [--backend deployment] [--no-delete]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config, watch

# The benchmark's own client talks to the loopback API server with its self-signed cert.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 30.0
GOAL_RSS_MB = 256.0
# The example (1-2 replicas) on KubeRay: ServiceAccount, RayService, PodDisruptionBudget,
# three NetworkPolicies (deny, allow, the autoscaler's egress) and the ML-BOM's ConfigMap.
# On the Deployment backend (no KubeRay): ServiceAccount, Deployment, Service,
# PodDisruptionBudget, two NetworkPolicies and the ML-BOM's ConfigMap.
CHILDREN_PER_MD = 7
CHILD_PATHS = {
    "rayservice": (
        "/api/v1/namespaces/{ns}/serviceaccounts",
        "/api/v1/namespaces/{ns}/configmaps",
        "/apis/ray.io/v1/namespaces/{ns}/rayservices",
        "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
        "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    ),
    "deployment": (
        "/api/v1/namespaces/{ns}/serviceaccounts",
        "/api/v1/namespaces/{ns}/configmaps",
        "/apis/apps/v1/namespaces/{ns}/deployments",
        "/api/v1/namespaces/{ns}/services",
        "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
        "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    ),
}
MD_PATH = ("freehold.dev", "v1alpha1", "modeldeployments")
KUBERAY_CRD = ROOT.parent / "shared" / "kuberay-crds" / "ray.io_rayservices.yaml"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller")


def control_plane_cpu() -> dict[str, float]:
    """CPU seconds used so far by each control-plane process on this machine (by name):
    where the seconds the operator does not spend go, when they all share the cores."""
    found: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in CONTROL_PLANE:
            found[name] = found.get(name, 0.0) + cpu_seconds(int(stat.parent.name))
    return found


def kubeconfig(explicit: str | None) -> str:
    found = explicit or os.environ.get("FREEHOLD_E2E_KUBECONFIG")
    if found:
        return found
    start = ROOT.parent / "shared" / "kube" / "start"
    out = subprocess.run(["bash", str(start)], check=True, capture_output=True, text=True).stdout
    return out.strip().rsplit("export KUBECONFIG=", 1)[-1].strip()


def manifest(i: int, namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "modeldeployment.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": f"bench-{i:04d}", "namespace": namespace}
    return doc


class Generations:
    """Each ModelDeployment's generation and the generation its status was written for,
    followed through one watch, as `kubectl get -w` would. (Polling a list of all 1,000
    every second cost this client ~10 s of CPU and the API server more, on the same two
    cores the run measures.)"""

    def __init__(self, custom: client.CustomObjectsApi, ns: str) -> None:
        self._custom = custom
        self._ns = ns
        self._seen: dict[str, bool] = {}
        self._lock = threading.Lock()
        listing = custom.list_namespaced_custom_object(*MD_PATH[:2], ns, MD_PATH[2])
        self._rv = listing["metadata"]["resourceVersion"]
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        while True:
            stream = watch.Watch().stream(
                self._custom.list_namespaced_custom_object,
                *MD_PATH[:2],
                self._ns,
                MD_PATH[2],
                resource_version=self._rv,
                timeout_seconds=60,
            )
            for event in stream:
                md = event["object"]
                meta = md["metadata"]
                self._rv = meta["resourceVersion"]
                current = (md.get("status") or {}).get("observedGeneration") == meta["generation"]
                with self._lock:
                    if event["type"] == "DELETED":
                        self._seen.pop(meta["name"], None)
                    else:
                        self._seen[meta["name"]] = current

    def current(self) -> int:
        with self._lock:
            return sum(self._seen.values())


def converged(
    generations: Generations, api: client.ApiClient, ns: str, count: int, backend: str
) -> int:
    """ModelDeployments whose status is for their current generation, once every child is
    there too (listed by our label, as a user would check); else 0. The final check of the
    children is a consistent read."""
    done = generations.current()
    if done < count:
        return done
    owned = sum(len(list_names(api, p.format(ns=ns))) for p in CHILD_PATHS[backend])
    return done if owned >= count * CHILDREN_PER_MD else 0


def list_names(api: client.ApiClient, path: str) -> list[str]:
    response = api.call_api(
        *api.param_serialize(
            "GET",
            path,
            query_params=[("labelSelector", "app.kubernetes.io/managed-by=freehold-operator")],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
    )
    items = json.loads(response.read())["items"]
    return [i["metadata"]["name"] for i in items]


def install_crds(api: client.ApiClient, backend: str) -> None:
    """Ours, and KubeRay's RayService for the RayService backend; for the Deployment
    backend KubeRay's CRD must be absent (the operator picks RayService where it is served):
    deleted if an earlier run left it. (The Deployment backend needs a ClusterIP Service per
    model: ../shared/kube allocates them from a /16.)"""
    ext = client.ApiextensionsV1Api(api)
    if backend == "deployment":
        name = yaml.safe_load(KUBERAY_CRD.read_text())["metadata"]["name"]
        try:
            ext.delete_custom_resource_definition(name)
            while True:
                ext.read_custom_resource_definition(name)
                time.sleep(1)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    crds = sorted((ROOT / "crds").glob("*.yaml"))
    for path in [*crds, KUBERAY_CRD] if backend == "rayservice" else crds:
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    time.sleep(2)  # Established


def start_operator(
    kubeconfig_path: str, namespace: str, *, liveness_port: int, workers: int | None = None
) -> subprocess.Popen[bytes]:
    """`freehold operator` as a subprocess watching `namespace`, as in production (one
    process, bounded workers); its log goes to BENCH_OPERATOR_LOG (default: nowhere)."""
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig_path,
        "FREEHOLD_OPERATOR_NAMESPACES": json.dumps([namespace]),
        "FREEHOLD_OPERATOR_LIVENESS_HOST": "127.0.0.1",
        "FREEHOLD_OPERATOR_LIVENESS_PORT": str(liveness_port),
        "FREEHOLD_OPERATOR_METRICS_PORT": "0",
        "FREEHOLD_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "PYTHONWARNINGS": "ignore::Warning",
    }
    if workers is not None:
        env["FREEHOLD_OPERATOR_WORKERS"] = str(workers)
    log = open(os.environ.get("BENCH_OPERATOR_LOG", os.devnull), "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "freehold", "operator"], env=env, stdout=log, stderr=log
    )


def stop_operator(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def report(
    count: int, created: float, elapsed: float, rss: float, cpu: float, plane: dict[str, float]
) -> None:
    print(
        f"{count} ModelDeployments created in {created:.1f} s; every one converged "
        f"(children + status for its generation) after {elapsed:.1f} s"
    )
    print(f"operator: peak RSS {rss:.0f} MB, CPU {cpu:.1f} s ({1000 * cpu / count:.0f} ms each)")
    used = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in plane.items())
    cores = os.cpu_count() or 1
    print(
        f"other CPU in the same {elapsed:.1f} s: {used}; with the operator, "
        f"{(cpu + sum(plane.values())) / (cores * elapsed):.0%} of {cores} cores"
    )
    print(
        f"goal: <= {GOAL_SECONDS:.0f} s -> {elapsed:.1f} s ({GOAL_SECONDS / elapsed:.2f}x); "
        f"<= {GOAL_RSS_MB:.0f} MB -> {rss:.0f} MB ({GOAL_RSS_MB / rss:.2f}x)"
    )


def delete_all(
    custom: client.CustomObjectsApi, api: client.ApiClient, namespace: str, backend: str
) -> None:
    """All ModelDeployments deleted at once: time until the garbage collector has
    removed every child."""
    start = time.perf_counter()
    custom.delete_collection_namespaced_custom_object(*MD_PATH[:2], namespace, MD_PATH[2])
    left = -1
    while time.perf_counter() - start < 600:
        paths = CHILD_PATHS[backend]
        left = sum(len(list_names(api, p.format(ns=namespace))) for p in paths)
        if left == 0:
            break
        time.sleep(1)
    print(f"all deleted at once: {left} children left after {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--backend", choices=("rayservice", "deployment"), default="rayservice")
    parser.add_argument("--no-delete", action="store_true", help="skip the deletion phase")
    args = parser.parse_args()

    path = kubeconfig(args.kubeconfig)
    config.load_kube_config(path)
    api = client.ApiClient()
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    install_crds(api, args.backend)
    namespace = f"fh-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    proc = start_operator(path, namespace, workers=args.workers, liveness_port=18911)
    try:
        time.sleep(4)  # imports, login, first (empty) listings
        generations = Generations(custom, namespace)
        idle_cpu = cpu_seconds(proc.pid)
        plane_before = control_plane_cpu()
        client_before = time.process_time()
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        "freehold.dev",
                        "v1alpha1",
                        namespace,
                        "modeldeployments",
                        manifest(i, namespace),
                    ),
                    range(args.count),
                )
            )
        created = time.perf_counter() - start
        done = 0
        while time.perf_counter() - start < 900:
            done = converged(generations, api, namespace, args.count, args.backend)
            if done >= args.count:
                break
            time.sleep(1)
        elapsed = time.perf_counter() - start
        rss = peak_rss_mb(proc.pid)
        cpu = cpu_seconds(proc.pid) - idle_cpu
        plane = {
            name: used - plane_before.get(name, 0.0)
            for name, used in sorted(control_plane_cpu().items())
        }
        plane["this benchmark's client"] = time.process_time() - client_before
        report(args.count, created, elapsed, rss, cpu, plane)
        if args.no_delete:
            return
        delete_all(custom, api, namespace, args.backend)
    finally:
        stop_operator(proc)
        core.delete_namespace(namespace)


if __name__ == "__main__":
    main()
