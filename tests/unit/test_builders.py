"""Pure builders: spec + context in, Kubernetes objects out. Plain asserts."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.children import Backend, build_children
from freehold.builders.model_workload import BuildContext
from freehold.builders.rayservice import build_rayservice
from freehold.validation import defaulted
from freehold_serving.args import IMPORT_PATH, ServingArgs
from tests.paths import EXAMPLES
from tests.pss import pod_specs, violations

CTX = BuildContext(
    name="gemma-270m",
    namespace="freehold-demo",
    serving_image="registry.local/freehold-serving:0.1.0",
    ray_version="2.60.0",
    vault_address="https://vault.vault.svc:8200",
    otel_namespace="observability",
    api_server_cidr="10.0.0.1/32",
)


def spec(name: str = "modeldeployment.yaml", **changes: Any) -> ModelDeploymentSpec:
    manifest = defaulted(yaml.safe_load((EXAMPLES / name).read_text()))
    manifest["spec"].update(changes)
    return ModelDeploymentSpec.model_validate(manifest["spec"])


# Every combination the operator can produce: both backends, CPU/GPU, package/pvc model,
# with and without Vault, fixed and autoscaled, with and without residency.
SPECS = {
    "cpu-example": spec(),
    "gpu-vllm-vault": spec("modeldeployment-vllm-gpu.yaml"),
    "pvc-fixed-no-residency": spec(
        model={"uri": "pvc://models/gemma.gguf", "format": "gguf", "sha256": "a" * 64},
        residency=None,
        scaling={
            "minReplicas": 1,
            "maxReplicas": 1,
            "targetOngoingRequests": 1,
            "maxOngoingRequests": 4,
            "maxQueuedRequests": 16,
        },
    ),
}
MATRIX = [(name, backend) for name in SPECS for backend in ("RayService", "Deployment")]


def children(name: str, backend: Backend) -> list[dict[str, Any]]:
    return build_children(SPECS[name], CTX, backend)


@pytest.mark.parametrize(("name", "backend"), MATRIX)
def test_every_pod_template_is_restricted(name: str, backend: Backend) -> None:
    templates = [
        (o["kind"], where, ps) for o in children(name, backend) for where, ps in pod_specs(o)
    ]
    assert templates
    for kind, where, pod in templates:
        assert violations(pod) == [], f"{kind} {where}"
        assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("name", "backend"), MATRIX)
def test_residency_is_required_node_affinity_on_every_template(name: str, backend: Backend) -> None:
    residency = SPECS[name].residency
    templates = [pod for obj in children(name, backend) for _, pod in pod_specs(obj)]
    assert templates
    for pod in templates:
        terms = (
            pod.get("affinity", {})
            .get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [])
        )
        keys = {e["key"] for term in terms for e in term["matchExpressions"]}
        if residency is None:
            # No residency: no region constraint (a GPU product term may remain).
            assert "topology.kubernetes.io/region" not in keys
            continue
        assert len(terms) == 1  # one term: every expression must hold
        exprs = {e["key"]: e for e in terms[0]["matchExpressions"]}
        assert exprs["topology.kubernetes.io/region"]["operator"] == "In"
        assert exprs["topology.kubernetes.io/region"]["values"] == [residency.region]
        if residency.zones:
            assert exprs["topology.kubernetes.io/zone"]["values"] == residency.zones


def test_the_matrix_covers_specs_with_and_without_residency() -> None:
    assert {SPECS[n].residency is None for n, _ in MATRIX} == {True, False}


def test_children_by_backend() -> None:
    kinds = [o["kind"] for o in children("cpu-example", "RayService")]
    assert kinds == [
        "ServiceAccount",
        "NetworkPolicy",
        "NetworkPolicy",
        "RayService",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ]
    kinds = [o["kind"] for o in children("pvc-fixed-no-residency", "Deployment")]
    assert kinds == ["ServiceAccount", "NetworkPolicy", "NetworkPolicy", "Deployment", "Service"]
    for obj in children("cpu-example", "RayService"):
        assert obj["metadata"]["namespace"] == "freehold-demo"
        assert obj["metadata"]["labels"]["freehold.dev/model-deployment"] == "gemma-270m"


def test_rayservice_carries_the_same_serving_args_as_local_mode() -> None:
    from freehold.builders.serving_args import serving_args_for

    rs = build_rayservice(SPECS["cpu-example"], CTX)
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == IMPORT_PATH and app["route_prefix"] == "/"
    args = ServingArgs.model_validate(app["args"])  # the serving side accepts them
    local = serving_args_for(SPECS["cpu-example"], "gemma-270m", "freehold-demo")
    # The same args, except where the cluster mounts models and keeps access records.
    same = {"model": {"models_root"}, "audit": True}
    assert args.model_dump(exclude=same) == local.model_dump(exclude=same)
    assert args.audit is not None and args.audit.directory == "/var/lib/freehold/audit"
    assert args.audit.signing_key_file is None  # signed checkpoints in pods are planned
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 2)
    assert cluster["enableInTreeAutoscaling"] is True
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}


@pytest.mark.parametrize("name", SPECS)
def test_serve_config_text_is_pyyamls_own(name: str) -> None:
    # libyaml's emitter writes serveConfigV2: the very text PyYAML's Python emitter wrote
    # before, so an operator upgrade does not make KubeRay redeploy an unchanged app.
    text = build_rayservice(SPECS[name], CTX)["spec"]["serveConfigV2"]
    assert text == yaml.safe_dump(yaml.safe_load(text), sort_keys=True)


def test_gpu_and_vault_wiring() -> None:
    rs = build_rayservice(SPECS["gpu-vllm-vault"], CTX)
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    pod = worker["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["rayStartParams"]["num-gpus"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["serviceAccountName"] == f"{CTX.name}-model"
    token = next(v for v in pod["volumes"] if v["name"] == "vault-token")
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "vault" and source["expirationSeconds"] <= 3600
    claim = next(v for v in pod["volumes"] if v["name"] == "model")
    assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert serve["api_keys"]["vault"]["path"] == "freehold-demo/llama-8b/api-keys"
    # the workload logs in to its own role, at the operator's Vault
    assert serve["api_keys"]["vault"]["role"] == "freehold.freehold-demo.gemma-270m"
    assert serve["api_keys"]["vault"]["address"] == "https://vault.vault.svc:8200"
    # References only: the args name where the keys are, and have no field that could
    # carry a key (anyone who can read the RayService reads its args).
    assert serve["api_keys"]["file"] is None
    assert set(serve["api_keys"]["vault"]) <= {
        "mount",
        "path",
        "address",
        "ca_cert",
        "role",
        "auth_mount",
        "jwt_path",
        "refresh_seconds",
        "grace_seconds",
    }


def test_network_policies_default_deny_then_allow() -> None:
    objs = {o["metadata"]["name"]: o for o in children("cpu-example", "RayService")}
    deny = objs["gemma-270m-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny
    allow = objs["gemma-270m-allow"]["spec"]
    callers = allow["ingress"][0]
    assert callers["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert callers["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "freehold-demo"}},
            "podSelector": {},
        }
    ]
    own = {"podSelector": {"matchLabels": {"freehold.dev/model-deployment": "gemma-270m"}}}
    assert {"from": [own]} in allow["ingress"] and {"to": [own]} in allow["egress"]
    egress_ns = [
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        for rule in allow["egress"]
        for peer in rule["to"]
    ]
    assert {"kube-system", "vault", "observability"} <= set(egress_ns)


def test_deployment_backend_keeps_one_replica_and_probes() -> None:
    objs = {o["kind"]: o for o in children("pvc-fixed-no-residency", "Deployment")}
    dep = objs["Deployment"]
    assert dep["spec"]["replicas"] == 1
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["freehold", "serve"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = ServingArgs.model_validate_json(env["FREEHOLD_SERVING_ARGS"])
    assert args.model.uri == "pvc://models/gemma.gguf" and args.model.models_root == "/models"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert objs["Service"]["spec"]["selector"] == {"freehold.dev/model-deployment": "gemma-270m"}


@pytest.mark.security
def test_only_kuberays_operator_pods_reach_the_ray_dashboard() -> None:
    allow = next(
        o for o in children("cpu-example", "RayService") if o["metadata"]["name"].endswith("-allow")
    )
    rules = [
        r
        for r in allow["spec"]["ingress"]
        if {"protocol": "TCP", "port": 8265} in r.get("ports", [])
    ]
    (rule,) = rules
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}
    }
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}


@pytest.mark.security
def test_the_autoscaler_reaches_only_the_api_server() -> None:
    policy = next(
        o
        for o in children("cpu-example", "RayService")
        if o["metadata"]["name"].endswith("-autoscaler")
    )
    (rule,) = policy["spec"]["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


def test_a_private_vault_ca_reaches_the_workloads_vault_client() -> None:
    import dataclasses

    from freehold.builders.children import build_children

    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    ctx = dataclasses.replace(CTX, vault_ca_pem=pem)
    objs = build_children(SPECS["gpu-vllm-vault"], ctx, "RayService")
    (ca,) = [o for o in objs if o["kind"] == "ConfigMap"]
    assert ca["metadata"]["name"] == "gemma-270m-vault-ca" and ca["data"] == {"ca.crt": pem}
    rs = next(o for o in objs if o["kind"] == "RayService")
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": "vault-ca", "configMap": {"name": "gemma-270m-vault-ca"}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {
        "name": "vault-ca",
        "mountPath": "/var/run/secrets/vault-ca",
        "readOnly": True,
    } in mounts
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["api_keys"]["vault"]["ca_cert"] == "/var/run/secrets/vault-ca/ca.crt"
    # No CA configured: nothing extra, the system CAs.
    assert not [
        o
        for o in build_children(SPECS["gpu-vllm-vault"], CTX, "RayService")
        if o["kind"] == "ConfigMap"
    ]


def test_a_named_prometheus_namespace_may_scrape_the_serving_port() -> None:
    import dataclasses

    from freehold.builders.network import build_allow

    closed = build_allow(SPECS["cpu-example"], CTX, ray=False)
    scraping = dataclasses.replace(CTX, prometheus_namespace="monitoring")
    opened = build_allow(SPECS["cpu-example"], scraping, ray=False)
    extra = [r for r in opened["spec"]["ingress"] if r not in closed["spec"]["ingress"]]
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert extra == [
        {"from": [{"namespaceSelector": monitoring}], "ports": [{"protocol": "TCP", "port": 8000}]}
    ]


def test_every_workload_resolves_names_where_the_cluster_answers() -> None:
    """A DNS with no pod to select (CoreDNS on the host network, as on the real-pods
    suite's node, or a node-local cache) is reached by address, on the server's own port
    (policies match after the Service's DNAT). Every kind's egress uses the same rule."""
    import dataclasses

    from freehold.builders.network import dns_egress

    ctx = dataclasses.replace(CTX, dns_cidrs=("192.0.2.2/32",), dns_ports=(53, 1053))
    rule = dns_egress(ctx)
    assert rule["to"][1] == {"ipBlock": {"cidr": "192.0.2.2/32"}}
    assert {"protocol": "UDP", "port": 1053} in rule["ports"]
    assert {"protocol": "TCP", "port": 53} in rule["ports"]
    objs = build_children(SPECS["cpu-example"], ctx, "Deployment")
    allow = next(o for o in objs if o["metadata"]["name"].endswith("-allow"))
    assert rule in allow["spec"]["egress"]
    # The default is the cluster DNS pods on port 53, as before.
    assert dns_egress(CTX) == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def test_a_signature_kept_in_a_registry_gets_its_own_volume() -> None:
    """The init container writes a fetched signature under /models/signatures, which the
    read-only root refused until it had a volume (found on the real node)."""
    spec = SPECS["cpu-example"]
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"  # noqa: E501
    signature = {"ref": "oci://mirror.local:5000/sig:1", "publicKey": pem}
    spec = ModelDeploymentSpec.model_validate(
        {
            **spec.model_dump(by_alias=True, exclude_none=True),
            "model": {
                **spec.model.model_dump(by_alias=True, exclude_none=True),
                "signature": signature,
            },
        }
    )
    dep = next(o for o in build_children(spec, CTX, "Deployment") if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert {"name": "signature-fetched", "mountPath": "/models/signatures"} in init["volumeMounts"]
    serving = pod["containers"][0]["volumeMounts"]
    assert {
        "name": "signature-fetched",
        "mountPath": "/models/signatures",
        "readOnly": True,
    } in serving


def test_a_budgeted_routers_target_admits_only_the_router_unless_its_spec_says() -> None:
    """Issue 28: a model a budgeted router governs cannot be called around the router."""
    import dataclasses

    from freehold.builders.network import build_allow
    from freehold.kinds.model_deployment import governing_routers

    def router(name: str, target: str, **extra: Any) -> dict[str, Any]:
        targets = [{"name": "t", "modelDeploymentRef": {"name": target}}]
        return {"metadata": {"name": name}, "spec": {"targets": targets, **extra}}

    routers = [
        router("gate", "gemma-270m", budgets=[{"tenant": "acme", "tokens": 10}]),
        router("limits", "gemma-270m", rateLimits=[{"tenant": "acme", "requestsPerMinute": 5}]),
        router("open", "gemma-270m"),  # no budget, no limit: governs nothing
        router("elsewhere", "other", budgets=[{"tenant": "acme", "tokens": 10}]),
        {**router("going", "gemma-270m", budgets=[{"tenant": "a", "tokens": 1}]),
         "metadata": {"name": "going", "deletionTimestamp": "2026-12-03T00:00:00Z"}},
    ]  # fmt: skip
    governing = governing_routers("gemma-270m", routers)
    assert governing == ("gate", "limits")
    ctx = dataclasses.replace(CTX, governing_routers=governing)
    serve = build_allow(SPECS["cpu-example"], ctx, ray=False)["spec"]["ingress"][0]
    assert serve["from"] == [
        {"podSelector": {"matchLabels": {"freehold.dev/model-router": "gate"}}},
        {"podSelector": {"matchLabels": {"freehold.dev/model-router": "limits"}}},
        {"podSelector": {"matchLabels": {"freehold.dev/evaluates": "gemma-270m"}}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "freehold-memory"}}},
    ]
    direct = spec(network={"directAccess": True})
    assert build_allow(direct, ctx, ray=False)["spec"]["ingress"][0]["from"] == [
        {"podSelector": {}}
    ]
    # Not governed: the spec's own callers.
    own = build_allow(spec(), CTX, ray=False)["spec"]["ingress"][0]["from"]
    assert own == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "freehold-demo"}},
            "podSelector": {},
        }
    ]
