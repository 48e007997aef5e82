"""MemoryStore -> Kubernetes objects and Vault role: pure builders, plain asserts."""

from __future__ import annotations

from typing import Any

import yaml

from freehold.api.memory_store import MemoryStoreSpec
from freehold.builders.memory_args import duration_seconds, memory_args_for
from freehold.builders.memory_store import build_memory_children, build_vault_role, selector
from freehold.builders.model_workload import ClusterConfig
from freehold.kinds.memory_store import MemoryStoreKind
from freehold.validation import defaulted
from freehold_serving.memory.args import MemoryArgs
from tests.paths import EXAMPLES
from tests.pss import violations
from tests.unit.test_builders import CTX


def example(**changes: Any) -> MemoryStoreSpec:
    manifest = defaulted(yaml.safe_load((EXAMPLES / "memorystore.yaml").read_text()))
    return MemoryStoreSpec.model_validate({**manifest["spec"], **changes})


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objs}


VAULT_CTX = CTX  # it has a Vault address


def test_one_writer_with_its_volume_and_no_api_token() -> None:
    objs = by_kind(build_memory_children(example(), VAULT_CTX))
    sts = objs["StatefulSet/gemma-270m"]["spec"]
    assert sts["replicas"] == 1
    assert sts["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert sts["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    pod = sts["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert objs["ServiceAccount/gemma-270m-memory"]["automountServiceAccountToken"] is False
    assert violations(pod) == []
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["eu-central"]
    (container,) = pod["containers"]
    assert container["command"] == ["freehold", "serve", "--app", "memory"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = MemoryArgs.model_validate_json(env["FREEHOLD_MEMORY_ARGS"])
    assert args.vault is not None and args.vault.key_name == "freehold-freehold-demo-gemma-270m"
    assert args.extraction is not None
    assert args.extraction.url == "http://smollm2-135m.freehold-demo.svc:8000/v1"
    assert args.retention_per_type == {"episode": 30 * 86400, "preference": 365 * 86400}
    assert args.key_file is None and args.signing_key_file is None  # keys stay in Vault


def test_destroy_lets_the_volume_go_and_shreds_the_keys() -> None:
    objs = by_kind(build_memory_children(example(deletionPolicy="Destroy"), VAULT_CTX))
    policy = objs["StatefulSet/gemma-270m"]["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert policy["whenDeleted"] == "Delete"
    kind = MemoryStoreKind(ClusterConfig(serving_image="-", ray_version="-", api_server_cidr="-"))
    parent = {
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {**example(deletionPolicy="Destroy").model_dump(by_alias=True, exclude_none=True)},
    }
    assert kind.external_names(parent) == [
        "freehold.ns.m",
        "transit-key:transit/freehold-ns-m",
        "transit-key:transit/freehold-ns-m-signing",
    ]
    parent["spec"]["deletionPolicy"] = "Retain"
    assert kind.external_names(parent) == ["freehold.ns.m"]


def test_vault_role_may_use_only_this_stores_keys() -> None:
    role = build_vault_role(example(), VAULT_CTX)
    assert role.transit_keys == (
        ("freehold-freehold-demo-gemma-270m", "aes256-gcm96"),
        ("freehold-freehold-demo-gemma-270m-signing", "ed25519"),
    )
    assert (
        "*" not in role.policy
        and "transit/decrypt/freehold-freehold-demo-gemma-270m" in role.policy
    )
    assert role.body["bound_service_account_names"] == ["gemma-270m-memory"]


def test_network_allows_only_dns_vault_the_named_models_and_the_collector() -> None:
    objs = by_kind(build_memory_children(example(), VAULT_CTX))
    egress = objs["NetworkPolicy/gemma-270m-allow"]["spec"]["egress"]
    targets = [rule["to"][0] for rule in egress]
    assert {
        "podSelector": {"matchLabels": {"freehold.dev/model-deployment": "smollm2-135m"}}
    } in targets
    # DNS, the extraction model, Vault, the OTLP collector (audit events as logs)
    assert len(egress) == 4
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}
    } in targets
    assert objs["NetworkPolicy/gemma-270m-default-deny"]["spec"]["policyTypes"] == [
        "Ingress",
        "Egress",
    ]


def test_durations() -> None:
    assert duration_seconds("90d") == 90 * 86400
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("500ms") == 0.5


def test_local_args_use_key_files() -> None:
    args = memory_args_for(example(extraction=None), "m", "local", data_dir="/tmp/x")
    assert args.vault is None and args.extraction is None and args.data_dir == "/tmp/x"


def test_a_model_may_use_the_memory_stores_it_names() -> None:
    from freehold.api.model_deployment import ModelDeploymentSpec
    from freehold.builders.children import build_children
    from freehold.builders.serving_args import workload_args

    manifest = defaulted(yaml.safe_load((EXAMPLES / "smollm2.yaml").read_text()))
    spec = ModelDeploymentSpec.model_validate(
        {**manifest["spec"], "memory": {"storeRefs": [{"name": "assistant-memory"}]}}
    )
    args = workload_args(spec, CTX)
    assert args.memory_stores == {
        "assistant-memory": "http://assistant-memory.freehold-demo.svc:8000/v1/memory"
    }
    objs = by_kind(build_children(spec, CTX, "Deployment"))
    egress = objs["NetworkPolicy/gemma-270m-allow"]["spec"]["egress"]
    assert {
        "to": [{"podSelector": {"matchLabels": {"freehold.dev/memory-store": "assistant-memory"}}}],
        "ports": [{"protocol": "TCP", "port": 8000}],
    } in egress


def postgres_example(**changes: Any) -> MemoryStoreSpec:
    manifest = defaulted(yaml.safe_load((EXAMPLES / "memorystore-postgres.yaml").read_text()))
    return MemoryStoreSpec.model_validate({**manifest["spec"], **changes})


def test_postgres_runs_replicas_that_share_only_the_database() -> None:
    objs = by_kind(build_memory_children(postgres_example(), VAULT_CTX))
    assert "StatefulSet/gemma-270m" not in objs
    deployment = objs["Deployment/gemma-270m"]["spec"]
    assert deployment["replicas"] == 2
    assert objs["PodDisruptionBudget/gemma-270m"]["spec"]["maxUnavailable"] == 1
    pod = deployment["template"]["spec"]
    assert violations(pod) == []
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}  # the replica's audit log only
    assert volumes["postgres-ca"]["configMap"]["name"] == "memory-db-ca"
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = MemoryArgs.model_validate_json(env["FREEHOLD_MEMORY_ARGS"])
    assert args.postgres is not None
    assert args.postgres.model_dump() == {
        "host": "memory-db-rw.freehold-demo.svc",
        "port": 5432,
        "database": "memory",
        "db_schema": "gemma_270m",  # the store's name as an identifier
        "sslmode": "verify-full",
        "ca_cert": "/etc/freehold/postgres-ca/ca.crt",
        "credentials": "vault-database",
        "vault_mount": "database",
        "vault_path": "freehold-demo-citizen-memory",
        "user": None,
        "password_file": None,
        "owner_role": "freehold_memory",
        "connect_timeout_seconds": 10,
    }
    # Subject affinity: the replica's address, expanded by the kubelet from the pod IP
    # declared before the args; half the container's memory for search indexes.
    names = [e["name"] for e in container["env"]]
    assert names.index("FREEHOLD_POD_IP") < names.index("FREEHOLD_MEMORY_ARGS")
    assert container["env"][names.index("FREEHOLD_POD_IP")]["valueFrom"] == {
        "fieldRef": {"fieldPath": "status.podIP"}
    }
    assert args.peer_address == "$(FREEHOLD_POD_IP):8000"
    assert args.index_budget_bytes == 2 * 1024**3 // 2  # resources.memory 2Gi
    # No password in any object, no Secret: the replica asks Vault when it connects.
    assert not any(o["kind"] == "Secret" for o in objs.values())
    # The Vault role may issue this store's database users, and nothing else new.
    role = build_vault_role(postgres_example(), VAULT_CTX)
    assert 'path "database/creds/freehold-demo-citizen-memory"' in role.policy
    kv = build_vault_role(
        postgres_example(
            backend={
                "type": "postgres",
                "postgres": {
                    "host": "10.1.2.3",
                    "database": "memory",
                    "credentials": {"kvPath": "freehold-demo/memory-db"},
                },
            }
        ),
        VAULT_CTX,
    )
    assert 'path "secret/data/freehold-demo/memory-db"' in kv.policy


def test_postgres_egress_is_the_database_port_and_an_ip_is_pinned() -> None:
    egress = by_kind(build_memory_children(postgres_example(), VAULT_CTX))[
        "NetworkPolicy/gemma-270m-allow"
    ]["spec"]["egress"]
    assert {"ports": [{"protocol": "TCP", "port": 5432}]} in egress
    # Replicas reach each other (searches sent to a subject's owner), on the serving port.
    own = {"podSelector": {"matchLabels": selector(VAULT_CTX)}}
    assert {"to": [own], "ports": [{"protocol": "TCP", "port": 8000}]} in egress
    pinned = postgres_example(
        backend={
            "type": "postgres",
            "postgres": {
                "host": "10.1.2.3",
                "port": 6432,
                "database": "memory",
                "credentials": {"databaseRole": "freehold-demo-m"},
            },
        }
    )
    egress = by_kind(build_memory_children(pinned, VAULT_CTX))["NetworkPolicy/gemma-270m-allow"][
        "spec"
    ]["egress"]
    assert {
        "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
        "ports": [{"protocol": "TCP", "port": 6432}],
    } in egress


def test_postgres_credentials_stay_in_the_namespaces_vault_paths() -> None:
    import pytest

    from freehold.reconciler import SpecProblemError

    kind = MemoryStoreKind(ClusterConfig(serving_image="-", ray_version="-", api_server_cidr="-"))
    meta = {"name": "m", "namespace": "freehold-demo"}
    kind.check(postgres_example(), meta)
    other = postgres_example(
        backend={
            "type": "postgres",
            "postgres": {
                "host": "db",
                "database": "memory",
                "credentials": {"databaseRole": "payroll-admin"},
            },
        }
    )
    with pytest.raises(SpecProblemError, match="databaseRole: 'payroll-admin' must start with"):
        kind.check(other, meta)
