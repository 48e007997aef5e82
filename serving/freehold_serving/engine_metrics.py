"""vLLM's own engine metrics on the model's /metrics, beside the front's.

The vLLM engine runs in Ray Serve LLM replicas, which record vLLM's metrics (KV-cache use,
running and waiting requests, prefix-cache hits, preemptions, ...) through Ray's metrics,
exported by each Ray node's metrics agent as `ray_vllm_*`. Platform teams already scrape
the model's /metrics (the chart's ServiceMonitor, `freehold up`'s printed address); rather
than a second scrape target per Ray node (another port to open in every NetworkPolicy and
to expose under `freehold up`), the front reads the agents of its Ray cluster when it is
scraped and appends this model's engine families. Each scrape answers one copy, whichever
front replica answers it, so sums over replicas stay true.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)

PREFIX = "ray_vllm_"
# A scrape must not hang on a node that went away: its agent is skipped for this scrape.
AGENT_TIMEOUT_S = 2.0


@dataclass
class Family:
    help: str = ""
    type: str = ""
    samples: list[str] = field(default_factory=list)


def select(texts: Iterable[str], model: str) -> str:
    """The `ray_vllm_*` families of `model` (vLLM's `model_name` label) from the agents'
    Prometheus texts, merged: one HELP and TYPE per family, its samples from every node
    together (the exposition format wants a family's samples in one group)."""
    families: dict[str, Family] = {}
    mine = f'model_name="{model}"'
    for text in texts:
        current: Family | None = None
        for line in text.splitlines():
            if line.startswith("# "):
                kind, _, rest = line[2:].partition(" ")
                name, _, value = rest.partition(" ")
                if not name.startswith(PREFIX) or kind not in ("HELP", "TYPE"):
                    current = None
                    continue
                current = families.setdefault(name, Family())
                setattr(current, kind.lower(), value)
            elif current is not None and line.startswith(PREFIX) and mine in line:
                current.samples.append(line)
    out = []
    for name, family in families.items():
        if not family.samples:
            continue
        if family.help:
            out.append(f"# HELP {name} {family.help}")
        if family.type:
            out.append(f"# TYPE {name} {family.type}")
        out.extend(family.samples)
    return "\n".join(out) + "\n" if out else ""


def agents() -> list[str]:
    """The metrics addresses of the Ray cluster's live nodes."""
    import ray

    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node.get("Alive") and node.get("MetricsExportPort")
    ]


class EngineMetrics:
    """Reads the agents for one model, each time /metrics is scraped."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._client = httpx.AsyncClient(timeout=AGENT_TIMEOUT_S)

    async def text(self) -> str:
        try:
            addresses = await asyncio.to_thread(agents)
        except Exception:  # a scrape never fails for the engine's sake
            log.warning("engine metrics: the Ray cluster's nodes could not be listed")
            return ""
        answers = await asyncio.gather(
            *(self._client.get(address) for address in addresses), return_exceptions=True
        )
        texts = []
        for address, answer in zip(addresses, answers, strict=True):
            if isinstance(answer, BaseException) or answer.status_code != 200:
                log.warning("engine metrics: %s did not answer; skipped this scrape", address)
                continue
            texts.append(answer.text)
        # 100s of KB of Ray's own metrics per node: filtered off the event loop.
        return await asyncio.to_thread(select, texts, self._model)
