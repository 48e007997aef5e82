"""engine vllm: the model directory digest, the translation of spec and requests to Ray
Serve LLM / vLLM, and the operator's side. Pure functions and real files; vLLM itself runs
in tests/integration/vllm."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.children import build_children
from freehold.builders.model_workload import BuildContext
from freehold.builders.serving_args import serving_args_for
from freehold.kinds.model_deployment import engine_note
from freehold_serving.args import ModelConfig, ServingArgs
from freehold_serving.engines import vllm
from freehold_serving.engines.base import (
    ContextLengthError,
    EngineError,
    GenerationJob,
    SamplingParams,
)
from freehold_serving.model_files import (
    DigestMismatchError,
    ModelFileError,
    directory_digest,
    resolve,
    verify_file,
)
from tests.unit.test_builders import CTX, spec


def hf_dir(root: Path) -> Path:
    model = root / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\x00\x01weights" * 1000)
    (model / "sub" / "extra.txt").write_text("x")
    return model


def test_the_directory_digest_is_what_sha256sum_gives(tmp_path: Path) -> None:
    model = hf_dir(tmp_path)
    shell = subprocess.run(
        "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum",
        shell=True,
        cwd=model,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert directory_digest(model) == shell


def test_a_directory_model_is_verified_and_a_changed_file_refused(tmp_path: Path) -> None:
    model = hf_dir(tmp_path)
    config = ModelConfig(
        uri=f"file://{model}",
        sha256=directory_digest(model),
        served_name="m",
        format="safetensors",
    )
    assert verify_file(config)[0] == model
    (model / "tokenizer.json").write_text('{"changed": true}')
    with pytest.raises(DigestMismatchError):
        verify_file(config)
    (model / "tokenizer.json").write_text("{}")
    (model / "added.bin").write_bytes(b"more")  # a file more is another model too
    with pytest.raises(DigestMismatchError):
        verify_file(config)


def test_links_and_empty_directories_are_refused(tmp_path: Path) -> None:
    model = hf_dir(tmp_path)
    (model / "escape.json").symlink_to("/etc/hostname")
    with pytest.raises(ModelFileError, match="link or special file"):
        directory_digest(model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="holds no files"):
        directory_digest(empty)


def test_a_safetensors_model_names_a_directory_and_a_file_is_not_one(tmp_path: Path) -> None:
    model = hf_dir(tmp_path)
    config = ModelConfig(
        uri=f"file://{model / 'config.json'}", sha256="a" * 64, served_name="m",
        format="safetensors",
    )  # fmt: skip
    with pytest.raises(ModelFileError, match="Hugging Face directory"):
        resolve(config)
    pvc = ModelConfig(
        uri="pvc://models/hf/smol", sha256="a" * 64, served_name="m", format="safetensors",
        models_root=str(tmp_path),
    )  # fmt: skip
    (tmp_path / "models" / "hf" / "smol").mkdir(parents=True)
    assert resolve(pvc) == tmp_path / "models" / "hf" / "smol"


def test_a_signed_directory_verifies_and_its_signature_pins_the_digest(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from freehold_serving.args import SignatureConfig
    from freehold_serving.signatures import SignatureError, sign_model, verify_model

    model = hf_dir(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "k.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = tmp_path / "model.sig"
    sign_model(model, signature, private)
    trust = SignatureConfig(ref=f"file://{signature}", public_key=public.decode())
    digest = directory_digest(model)
    assert verify_model(model, signature, trust, digest).method == "key"
    with pytest.raises(SignatureError, match="covers another file"):
        verify_model(model, signature, trust, "b" * 64)
    (model / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(SignatureError, match="not the one that was signed"):
        verify_model(model, signature, trust, digest)


def vllm_args(**vllm_changes: Any) -> ServingArgs:
    changes: dict[str, Any] = {
        "model": {"uri": "pvc://models/llama", "format": "safetensors", "sha256": "a" * 64},
        "engine": {"name": "vllm", "contextLength": 2048, "vllm": vllm_changes},
        "resources": {"cpu": "4", "memory": "16Gi"},
        "scaling": {
            "minReplicas": 0,
            "maxReplicas": 3,
            "targetOngoingRequests": 8,
            "maxOngoingRequests": 32,
        },
    }
    return serving_args_for(spec(**changes), "llama", "team-a")


def test_engine_arguments_follow_the_spec_and_the_device() -> None:
    cpu = vllm.engine_kwargs(vllm_args(), "/models/llama")
    assert cpu["enforce_eager"] is True  # compiling on CPU costs a minute of start-up
    assert cpu["enable_prefix_caching"] and not cpu["trust_remote_code"]
    assert "gpu_memory_utilization" not in cpu and cpu["max_model_len"] == 2048
    assert vllm.engine_env(vllm_args(cpuKvCacheGib=3))["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert "block_size" not in cpu  # vLLM's own default for the device
    assert vllm.engine_kwargs(vllm_args(blockSize=32), "/m")["block_size"] == 32
    gpu_args = vllm_args(tensorParallelSize=2, pipelineParallelSize=2).model_copy(
        update={"engine": vllm_args(tensorParallelSize=2, pipelineParallelSize=2).engine.model_copy(
            update={"gpus": 4})}
    )  # fmt: skip
    gpu = vllm.engine_kwargs(gpu_args, "/models/llama")
    assert gpu["enforce_eager"] is False and gpu["gpu_memory_utilization"] == 0.9
    assert (gpu["tensor_parallel_size"], gpu["pipeline_parallel_size"]) == (2, 2)
    assert "VLLM_CPU_KVCACHE_SPACE" not in vllm.engine_env(gpu_args)


def test_replicas_autoscale_on_ongoing_requests_and_route_by_prefix() -> None:
    config = vllm.deployment_config(vllm_args())
    assert config["request_router_config"]["request_router_class"].endswith(
        "PrefixCacheAffinityRouter"
    )
    router = config["request_router_config"]["request_router_kwargs"]
    # Uneven load (a target's worth of requests) overrides prefix affinity, and the
    # router's prefix tree is bounded (Ray's defaults: never, and unbounded).
    assert router["imbalanced_threshold"] == 8
    assert router["do_eviction"] and router["eviction_threshold_chars"] == vllm.PREFIX_TREE_CHARS
    assert router["eviction_target_chars"] < router["eviction_threshold_chars"]
    assert config["autoscaling_config"]["min_replicas"] == 0  # scale to zero
    assert config["autoscaling_config"]["target_ongoing_requests"] == 8
    assert config["max_ongoing_requests"] == 32
    other = vllm.deployment_config(vllm_args(requestRouter="power-of-two"))
    assert other["request_router_config"]["request_router_class"].endswith(
        "PowerOfTwoChoicesRequestRouter"
    )
    assert "request_router_kwargs" not in other["request_router_config"]
    one = vllm_args()
    one = one.model_copy(
        update={"autoscaling": one.autoscaling.model_copy(update={"max_replicas": 1})}
    )
    assert vllm.deployment_config(one)["request_router_config"]["request_router_class"].endswith(
        "PowerOfTwoChoicesRequestRouter"
    )  # one replica: nothing to route


def test_requests_translate_to_vllm_openai_requests() -> None:
    params = SamplingParams(
        max_tokens=16, temperature=0.2, stop=("\n",), seed=7, logprobs=2,
        json_schema='{"type": "object"}',
    )  # fmt: skip
    chat = vllm._request(GenerationJob(params, messages=(("user", "hi"),)), "m")
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert chat["logprobs"] is True and chat["top_logprobs"] == 2 and chat["stream"]
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["structured_outputs"] == {
        "json": {"type": "object"},
        "disable_any_whitespace": True,
    }
    completion = vllm._request(GenerationJob(SamplingParams(logprobs=1), prompt="p"), "m")
    assert completion["prompt"] == "p" and completion["logprobs"] == 1
    with pytest.raises(EngineError, match="echo with logprobs"):
        vllm._request(GenerationJob(SamplingParams(logprobs=1, echo=True), prompt="p"), "m")


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def test_streamed_events_become_chunks_with_usage_on_the_last() -> None:
    events = vllm._Events(chat=True)
    first = events.feed(sse({"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]}))
    assert first == []
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}]}  # fmt: skip
    (chunk,) = events.feed(sse({"choices": [{"delta": {"content": "Hi"}, "logprobs": lp}]}))
    assert chunk.text == "Hi" and chunk.logprobs[0].top == [("Hi", [72, 105], -0.1)]
    assert events.feed(sse({"choices": [{"delta": {}, "finish_reason": "length"}]})) == []
    (last,) = events.feed(
        sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
        + "data: [DONE]\n\n"
    )
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 5, 1)
    assert events.done and events.close() == []


def test_engine_errors_become_client_or_server_errors() -> None:
    events = vllm._Events(chat=False)
    with pytest.raises(ContextLengthError):
        events.feed(sse({"error": {"message": "This model's maximum context length is 2048",
                                   "code": 400, "type": "BadRequestError"}}))  # fmt: skip
    with pytest.raises(EngineError) as bad:
        events.feed(sse({"error": {"message": "bad top_p", "code": 400, "param": "top_p"}}))
    assert bad.value.param == "top_p"
    with pytest.raises(RuntimeError, match="vLLM engine error"):
        events.feed(sse({"error": {"message": "engine dead", "code": 500}}))


def md(**changes: Any) -> ModelDeploymentSpec:
    return spec("modeldeployment-vllm-gpu.yaml", **changes)


def test_pods_get_the_vllm_image_gpus_and_the_placement_the_spec_names() -> None:
    ctx = BuildContext(**{**vars(CTX), "serving_vllm_image": "registry.local/fh-vllm:1"})
    for backend in ("RayService", "Deployment"):
        objs = build_children(md(), ctx, backend)  # type: ignore[arg-type]
        (workload,) = [o for o in objs if o["kind"] == backend]
        text = json.dumps(workload)
        assert "registry.local/fh-vllm:1" in text and "freehold-serving:0.1.0" not in text
        assert '"node-pool": "gpu-l4"' in text
        assert (
            '{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}'
            in text
        )
        assert '"nvidia.com/gpu": "1"' in text


def test_vllm_without_gpus_is_allowed_and_says_so() -> None:
    assert "vLLM's CPU backend" in engine_note(md(resources={"cpu": "4", "memory": "8Gi"}))
    assert engine_note(md()) == ""


ADAPTERS = [
    {"name": "llama-legal", "uri": "pvc://adapters/legal", "sha256": "b" * 64},
    {"name": "llama-health", "uri": "pvc://models/lora/health", "sha256": "c" * 64},
]


def test_adapters_reach_the_pods_the_args_and_the_mlbom() -> None:
    from freehold.builders.mlbom import build_mlbom
    from freehold.builders.serving_args import workload_args

    ctx = BuildContext(**{**vars(CTX), "serving_vllm_image": "registry.local/fh-vllm:1"})
    spec_ = md(adapters=ADAPTERS)
    args = workload_args(spec_, ctx)
    assert [(a.served_name, a.format, a.models_root) for a in args.adapters] == [
        ("llama-legal", "safetensors", "/models"),
        ("llama-health", "safetensors", "/models"),
    ]
    (workload,) = [o for o in build_children(spec_, ctx, "Deployment") if o["kind"] == "Deployment"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in workload["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["models", "adapters"]  # each claim once, read-only
    bom = build_mlbom(spec_, "llama-8b", "ns", serving_image="img@sha256:" + "d" * 64)
    adapters = [c for c in bom["components"] if c["bom-ref"].startswith("adapter:")]
    assert {(c["name"], c["hashes"][0]["content"]) for c in adapters} == {
        ("llama-legal", "b" * 64),
        ("llama-health", "c" * 64),
    }
    kwargs = vllm.engine_kwargs(serving_args_for(spec_, "llama", "ns"), "/m")
    assert kwargs["enable_lora"] and kwargs["max_loras"] == 2 and kwargs["max_lora_rank"] == 16


def test_the_api_refuses_adapters_without_vllm_or_named_as_the_model() -> None:
    from freehold.validation import validate

    doc = {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": {
            "model": {"uri": "pvc://m/x", "format": "safetensors", "sha256": "a" * 64,
                      "servedName": "llama-legal"},
            "engine": {"name": "vllm"},
            "adapters": ADAPTERS,
        },
    }  # fmt: skip
    errors = validate(doc)
    assert any("must differ from model.servedName" in e.message for e in errors), errors
    doc["spec"]["model"]["servedName"] = "llama"
    doc["spec"]["adapters"] = [{**ADAPTERS[0], "uri": "oci://registry/lora:1"}]
    assert validate(doc) == []  # fetched by the pods' init container
    # An s3:// adapter is read from the model's own store: an s3:// model's.
    doc["spec"]["adapters"] = [{**ADAPTERS[0], "uri": "s3://bucket/lora"}]
    (refused,) = validate(doc)
    assert refused.path == "spec.adapters" and "model's own store" in refused.message
    doc["spec"]["model"] |= {"uri": "s3://bucket/llama", "s3": {"endpoint": "https://s3.local"}}
    assert validate(doc) == []


def test_without_a_vllm_image_the_operator_says_engine_unavailable() -> None:
    from freehold.builders.model_workload import ClusterConfig
    from freehold.kinds.model_deployment import ModelDeploymentKind
    from freehold.reconciler import SpecProblemError

    spec_ = md(secrets=[], auth={})  # only the engine is in question here
    meta = {"name": "llama-8b", "namespace": "freehold-demo"}
    plain = ClusterConfig(serving_image="img", ray_version="2.60.0", api_server_cidr="-")
    with pytest.raises(SpecProblemError) as refused:
        ModelDeploymentKind(plain).check(spec_, meta)
    assert refused.value.reason == "EngineUnavailable"
    assert "serving.vllmImage" in str(refused.value)
    ready = ClusterConfig(**{**vars(plain), "serving_vllm_image": "img-vllm"})
    ModelDeploymentKind(ready).check(spec_, meta)  # nothing else to refuse


def test_ready_batches_yield_at_once_and_merge_what_piled_up() -> None:
    ready_batches = vllm.ready_batches

    async def main() -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue()

        async def outputs() -> AsyncIterator[int]:
            while (item := await queue.get()) is not None:
                if item < 0:
                    raise RuntimeError("engine failed")
                yield item

        batches = ready_batches(outputs())
        queue.put_nowait(1)
        # The first output leaves at once: no fixed interval to wait out.
        assert await asyncio.wait_for(anext(batches), 0.02) == [1]
        for item in (2, 3, 4):
            queue.put_nowait(item)
        await asyncio.sleep(0.01)  # the consumer was busy: what piled up leaves together
        assert await anext(batches) == [2, 3, 4]
        queue.put_nowait(None)
        assert [b async for b in batches] == []

        failing = ready_batches(outputs())
        queue.put_nowait(5)
        queue.put_nowait(-1)
        assert await anext(failing) == [5]
        with pytest.raises(RuntimeError, match="engine failed"):
            await anext(failing)

    asyncio.run(main())


def test_bfloat16_on_a_cpu_without_avx512_is_warned_about() -> None:
    def args(dtype: str = "auto", gpus: int = 0) -> ServingArgs:
        made = vllm_args(dtype=dtype)
        return made.model_copy(update={"engine": made.engine.model_copy(update={"gpus": gpus})})

    avx2 = {"fpu", "avx2", "fma"}
    warned = vllm.slow_bfloat16(args(), "bfloat16", avx2)
    assert warned and "engine.vllm.dtype: float32" in warned
    assert vllm.slow_bfloat16(args("bfloat16"), None, avx2)
    assert vllm.slow_bfloat16(args("bfloat16"), None, avx2 | {"avx512f"}) is None
    assert vllm.slow_bfloat16(args("float32"), "bfloat16", avx2) is None
    assert vllm.slow_bfloat16(args(), "float32", avx2) is None
    assert vllm.slow_bfloat16(args(gpus=1), "bfloat16", avx2) is None
    assert vllm.slow_bfloat16(args(), "bfloat16", set()) is None  # not x86: nothing known


def test_the_engine_thread_keeps_the_front_answering_while_the_engine_blocks() -> None:
    """vLLM's start blocks its loop for the whole load (the defect the opt-in pod test
    found: /health timed out instead of answering 503). On an EngineThread the front's
    loop runs on; outputs read there reach the front in order, failures included, and a
    consumer that leaves stops the reader on the engine's loop."""
    import threading
    import time

    engine = vllm.EngineThread("test-engine")
    seen: dict[str, Any] = {}

    async def blocking_start() -> str:
        seen["start"] = threading.current_thread().name
        time.sleep(0.5)  # as vLLM's synchronous engine build
        return "started"

    async def outputs(n: int, fail: bool = False) -> AsyncIterator[int]:
        seen["outputs"] = threading.current_thread().name
        try:
            for i in range(n):
                yield i
                await asyncio.sleep(0)
            if fail:
                raise RuntimeError("engine failed")
            await asyncio.sleep(60)  # a long generation: left by its consumer
        finally:
            seen["closed"] = True

    async def main() -> None:
        started = engine.start(blocking_start())
        ticks = 0
        while not started.done():  # the front's loop is not held up
            await asyncio.sleep(0.01)
            ticks += 1
        assert await started == "started" and ticks >= 20
        assert seen["start"] == "test-engine"

        batches = vllm.ready_batches(outputs(3), engine.loop)
        got: list[int] = []
        while len(got) < 3:
            got += await asyncio.wait_for(anext(batches), 5)
        assert got == [0, 1, 2] and seen["outputs"] == "test-engine"
        await batches.aclose()  # the client left
        for _ in range(100):
            if seen.get("closed"):
                break
            await asyncio.sleep(0.01)
        assert seen["closed"]

        failing = vllm.ready_batches(outputs(1, fail=True), engine.loop)
        with pytest.raises(RuntimeError, match="engine failed"):
            async for _ in failing:
                pass
        assert await engine.call(asyncio.sleep(0, "on the engine loop")) == "on the engine loop"

    asyncio.run(main())


def test_oci_adapters_are_fetched_by_the_init_container_with_their_egress() -> None:
    from freehold.builders.network import fetch_ports

    ctx = BuildContext(**{**vars(CTX), "serving_vllm_image": "registry.local/fh-vllm:1"})
    oci = {"name": "llama-tax", "uri": "oci://registry.local:5000/lora/tax:1", "sha256": "d" * 64}
    spec_ = md(adapters=[*ADAPTERS, oci])
    for backend in ("RayService", "Deployment"):
        objs = build_children(spec_, ctx, backend)  # type: ignore[arg-type]
        (workload,) = [o for o in objs if o["kind"] == backend]
        text = json.dumps(workload)
        assert '"name": "fetch-model"' in text and "FREEHOLD_ADAPTERS" in text
        assert '"mountPath": "/models/oci"' in text
    (deployment,) = [
        o for o in build_children(spec_, ctx, "Deployment") if o["kind"] == "Deployment"
    ]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    fetched = json.loads(env["FREEHOLD_ADAPTERS"])
    # Only the oci:// one; claims are mounted, not fetched. Kept where the loader reads.
    assert [(a["served_name"], a["models_root"]) for a in fetched] == [("llama-tax", "/models")]
    assert 5000 in fetch_ports(spec_)
    assert "FREEHOLD_ADAPTERS" not in json.dumps(build_children(md(), ctx, "Deployment"))


def test_an_adapter_signature_must_be_readable_where_the_adapter_is() -> None:
    from freehold.builders.model_workload import ClusterConfig
    from freehold.kinds.model_deployment import ModelDeploymentKind
    from freehold.reconciler import SpecProblemError

    signed = {
        **ADAPTERS[0],
        "signature": {
            "ref": "oci://registry.local/sigs/legal:1",
            "publicKey": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYI\n"
            "-----END PUBLIC KEY-----\n",
        },
    }
    spec_ = md(secrets=[], auth={}, adapters=[signed])
    meta = {"name": "llama-8b", "namespace": "freehold-demo"}
    config = ClusterConfig(
        serving_image="img", ray_version="2.60.0", api_server_cidr="-", serving_vllm_image="v"
    )
    with pytest.raises(SpecProblemError) as refused:
        ModelDeploymentKind(config).check(spec_, meta)
    assert refused.value.reason == "SignatureUnreachable"
    assert "spec.adapters[0].signature.ref" in str(refused.value)


def test_s3_adapters_are_fetched_from_the_models_store_with_its_credentials() -> None:
    from freehold.builders.network import fetch_ports
    from freehold.builders.vault import readable_paths

    ctx = BuildContext(**{**vars(CTX), "serving_vllm_image": "registry.local/fh-vllm:1"})
    store = {
        "endpoint": "https://objects.local:9000",
        "credentials": {"mount": "secret", "path": "freehold-demo/store"},
    }
    model = {"uri": "s3://models/llama", "format": "safetensors", "sha256": "a" * 64, "s3": store}
    s3 = {"name": "llama-tax", "uri": "s3://models/lora/tax", "sha256": "d" * 64}
    spec_ = md(model=model, adapters=[*ADAPTERS, s3])
    (deployment,) = [
        o for o in build_children(spec_, ctx, "Deployment") if o["kind"] == "Deployment"
    ]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    (fetched,) = json.loads(env["FREEHOLD_ADAPTERS"])
    model_store = json.loads(env["FREEHOLD_MODEL"])["s3"]
    assert fetched["served_name"] == "llama-tax" and fetched["models_root"] == "/models"
    assert fetched["s3"] == model_store and model_store["endpoint"] == store["endpoint"]
    assert fetched["s3"]["credentials"]["path"] == "freehold-demo/store"
    # The store's egress and its key's Vault path are the model's, already there.
    assert 9000 in fetch_ports(spec_)
    assert "secret/data/freehold-demo/store" in readable_paths(spec_)


def test_one_cpu_worker_runs_in_the_engine_process() -> None:
    from types import SimpleNamespace

    def parallel(world: int, backend: str) -> SimpleNamespace:
        return SimpleNamespace(world_size=world, distributed_executor_backend=backend)

    # Ray Serve LLM asks for a worker process on CPU ("mp"): one worker needs none.
    assert vllm.one_process_executor(parallel(1, "mp"), on_cpu=True)
    assert not vllm.one_process_executor(parallel(2, "mp"), on_cpu=True)  # TP/PP workers
    assert not vllm.one_process_executor(parallel(1, "ray"), on_cpu=False)  # GPUs: Ray's
