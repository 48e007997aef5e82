"""The floor under the router's added latency: a bare relay in the same Ray cluster.

Deployed by bench/router.py into the Ray cluster `freehold up` started (as an app of its
own at /relay-floor, behind the same HAProxy), it forwards each request to one URL and
passes the answer back, streamed as it arrives: a raw ASGI app (no FastAPI) with one
pooled aiohttp session, the same Ray Serve options as the router (nice 0, no Ray access
log), and nothing else: no keys, budgets, rate limits, records or fallbacks. What it adds
over calling the model directly is what any router written as a Ray Serve HTTP
deployment pays on this machine before it does anything.

    python bench/relay_floor.py --target URL --model NAME   # deploys, then exits
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import aiohttp
from ray import serve
from ray.serve.schema import LoggingConfig

from freehold_serving.args import serving_runtime_env

ROUTE = "/relay-floor"


def build_relay(target: str, model: str) -> Any:
    """An ASGI app relaying every request body (its `model` replaced) to `target`."""
    session: aiohttp.ClientSession | None = None

    async def relay(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=60)
            )
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = json.loads(b"".join(parts))
        body["model"] = model
        async with session.post(
            target, data=json.dumps(body), headers={"Content-Type": "application/json"}
        ) as answer:
            kind = answer.headers.get("Content-Type", "application/json").encode()
            await send(
                {"type": "http.response.start", "status": answer.status,
                 "headers": [(b"content-type", kind)]}
            )  # fmt: skip
            async for chunk in answer.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return relay


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    ray.init(address="auto", namespace="serve", log_to_driver=False)
    deployment = serve.deployment(
        serve.ingress(lambda: build_relay(args.target, args.model))(), name="relay-floor"
    ).options(
        max_ongoing_requests=1024,
        ray_actor_options={
            "num_cpus": 0,
            "runtime_env": serving_runtime_env(),
        },
        logging_config=LoggingConfig(enable_access_log=False),
    )
    serve.run(deployment.bind(), name="relay-floor", route_prefix=ROUTE, blocking=False)


if __name__ == "__main__":
    main()
