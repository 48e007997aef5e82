from __future__ import annotations

from freehold.builders.model_workload import BuildContext
from freehold.builders.vault import build_role, policy_hcl, readable_paths, vault_name
from tests.unit.test_builders import SPECS


def ctx(namespace: str, name: str) -> BuildContext:
    return BuildContext(
        name=name,
        namespace=namespace,
        serving_image="i",
        ray_version="2.60.0",
        api_server_cidr="10.0.0.1/32",
    )


def test_policy_names_exactly_the_spec_paths() -> None:
    spec = SPECS["gpu-vllm-vault"]
    assert readable_paths(spec) == [
        "secret/data/freehold-demo/llama-8b/api-keys",
        "secret/data/freehold-demo/llama-8b/hf",
    ]
    hcl = policy_hcl(spec)
    assert hcl.count("path ") == 2 and '["read"]' in hcl and "*" not in hcl


def test_role_is_bound_to_exactly_one_service_account() -> None:
    role = build_role(SPECS["gpu-vllm-vault"], ctx("team-a", "llama-8b"))
    assert role.name == "freehold.team-a.llama-8b"
    assert role.body["bound_service_account_names"] == ["llama-8b-model"]
    assert role.body["bound_service_account_namespaces"] == ["team-a"]
    assert role.body["token_policies"] == [role.name]
    assert role.body["audience"] == "vault"


def test_names_never_collide() -> None:
    # "a-b"/"c" and "a"/"b-c" would collide with a dash separator; namespaces hold no dots
    assert vault_name(ctx("a-b", "c")) != vault_name(ctx("a", "b-c"))
