"""The router as a Ray Serve application: the same OpenAI-compatible API as a model,
forwarding each request to a target chosen by router/policy.py, falling back on the
failures the spec names, and charging what answered to the caller's budget.

Owned targets are reached over HTTP (their Service on a cluster, their route under
`freehold up`); streamed answers pass through line by line, untouched except for the usage
chunk the router asks for (to charge budgets) when the client did not. External providers
go through any-llm, and only when the spec allowed them.
"""

# No `from __future__ import annotations`: Ray Serve reads build_router's annotation.

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from prometheus_client import Counter, Histogram
from ray import serve
from ray.serve import Application
from ray.serve.schema import LoggingConfig
from starlette.responses import Response, StreamingResponse

from freehold_serving.access import AccessLog
from freehold_serving.args import VaultKeySource, serving_runtime_env
from freehold_serving.auth import ApiKeys
from freehold_serving.key_records import KeyInfo
from freehold_serving.openai.api import add_error_handlers, error_response
from freehold_serving.openai.errors import ApiError
from freehold_serving.router.args import BudgetConfig, RouterArgs, TargetConfig
from freehold_serving.router.charge import Charge
from freehold_serving.router.ledger import (
    Amount,
    BudgetRefusedError,
    Hold,
    Ledger,
    LedgerUnavailableError,
    MemoryLedger,
    MemoryLimiter,
    PostgresLedger,
    PostgresLimiter,
    Rate,
    RateLimitedError,
    remaining,
    tokens_left,
)
from freehold_serving.router.policy import (
    Need,
    Plan,
    Router,
    estimate_tokens,
    failure_cause,
    plan,
    prompt_bound,
)
from freehold_serving.vault_keys import VaultKeysError, follow_keys, load_keys, read_secret

log = logging.getLogger(__name__)
router_app = FastAPI(title="Freehold model router", docs_url=None, redoc_url=None)
add_error_handlers(router_app, "the router")

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
TARGET_HEADER = "X-Freehold-Target"
TARGET_KEY_REFRESH_SECONDS = 30.0  # how soon a rotated own key is used (before any refusal)
COOLDOWN_SYNC_SECONDS = 1.0  # how soon a replica passes over a target another saw fail


class RouterMetrics:
    """The router's Prometheus metrics, created once per process (see router_metrics)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "freehold_router_requests_total",
            "Requests the router sent to a target, by outcome (ok, client_error, failed).",
            ["router", "target", "outcome"],
        )
        self.fallbacks = Counter(
            "freehold_router_fallbacks_total",
            "Failures that moved a request on to the next target, by cause.",
            ["router", "target", "cause"],
        )
        self.decisions = Counter(
            "freehold_router_decisions_total",
            "First choice of the strategy for a request.",
            ["router", "strategy", "target"],
        )
        self.refused = Counter(
            "freehold_router_refused_total",
            "Requests refused before any target: budget spent, or no target can serve.",
            ["router", "reason"],
        )
        self.first_byte = Histogram(
            "freehold_router_upstream_first_byte_seconds",
            "Time from forwarding to the target's first byte (its latency as the router sees it).",
            ["router", "target"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )


_METRICS: list[RouterMetrics] = []


def router_metrics() -> RouterMetrics:
    """This process's metrics. Module-level metric objects would be copied, unregistered,
    into the replica with the ingress class (Ray pickles that class by value); a function
    is pickled by reference, so it finds the replica's own registry."""
    if not _METRICS:
        _METRICS.append(RouterMetrics())
    return _METRICS[0]


class FailedError(Exception):
    """A target failed in a way the spec's fallback covers."""

    def __init__(self, cause: str, response: Response | None = None, cool: bool = True) -> None:
        super().__init__(cause)
        self.cause = cause
        self.response = response
        # False: the target is fine, the router's own key is not (re-read at once): a
        # cooldown would only keep the target out after the key is fixed.
        self.cool = cool


def _texts(kind: str, body: dict[str, Any]) -> list[str]:
    if kind == "chat":
        out = [json.dumps(body["tools"])] if body.get("tools") else []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
        return out
    value = body.get("prompt" if kind == "completions" else "input")
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value or "")]


def need_of(kind: str, body: dict[str, Any]) -> Need:
    capabilities = {kind}
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        capabilities.add("json_schema")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs"):
        capabilities.add("logprobs")
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    max_tokens = 0 if kind == "embeddings" else int(limit) if isinstance(limit, int) else 256
    return Need(frozenset(capabilities), estimate_tokens(_texts(kind, body)), max_tokens)


def _requested(body: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _tightest(lefts: list[tuple[int | None, float | None]]) -> tuple[int | None, float | None]:
    """What several budgets leave together: the least of each (None: not limited)."""
    tokens = [t for t, _ in lefts if t is not None]
    costs = [c for _, c in lefts if c is not None]
    return (min(tokens) if tokens else None, min(costs) if costs else None)


def _spent(budget: BudgetConfig, committed: Amount, info: KeyInfo | None) -> str:
    whose = "the key" if info is not None and budget.tenant == info.id else "the tenant"
    limits = [
        f"{committed.tokens} of {budget.tokens} tokens" if budget.tokens else "",
        f"{committed.cost:.6f} of {budget.cost}" if budget.cost else "",
    ]
    return f"{whose}: {' and '.join(x for x in limits if x)} spent or held this {budget.period}"


def _whose(budgets: list[BudgetConfig], info: KeyInfo) -> str:
    names = [f"key {info.id}" if b.tenant == info.id else f"tenant {info.tenant}" for b in budgets]
    return " and ".join(names)


def _own_key(path: str) -> str:
    """The router's key for a target: the first key of a key file (`KEY [TENANT]` lines,
    as the target reads the same file)."""
    from freehold_serving.auth import read_key_file

    entries = read_key_file(path)
    if not entries:
        raise RuntimeError(f"the key file {path} holds no key")
    first = entries[0]
    return first if isinstance(first, str) else first[0]


# Module functions the router's methods call are defined before RouterServer: Ray Serve's
# ingress wrapper is serialized with the globals its methods name as they are when the
# class is made (one defined below it was a NameError in the replica).
def _credential_error(target: TargetConfig, what: str) -> Response:
    return error_response(
        ApiError(
            502,
            f"The router's own key for target {target.name} {what}; an operator must check "
            "spec.targets[].apiKey in Vault.",
            type="server_error",
            code="upstream_credential",
        )
    )


def _read_vault_key(args: RouterArgs, mount: str, path: str, field: str) -> str | None:
    """A key (an external provider's, or the router's own for a keyed target), read by the
    router itself as its workload (never in its args); None when it cannot be read."""
    source = VaultKeySource(
        mount=mount,
        path=path,
        address=args.vault_address,
        role=args.vault_role,
        ca_cert=args.vault_ca_cert,
        jwt_path=args.vault_jwt_path,
    )
    try:
        value = read_secret(source, "a key").get(field)
    except VaultKeysError as exc:  # its message names the path and role, never a value
        log.warning("%s", exc)
        return None
    return str(value) if value else None


def open_ledger(args: RouterArgs) -> Ledger:
    """The budgets' ledger: shared in PostgreSQL when the args name one."""
    if args.state_postgres is None:
        return MemoryLedger()
    from freehold_serving.memory.pg_credentials import open_database

    vault = None
    if args.vault_address and args.vault_role:
        vault = _VaultLogin(
            args.vault_address, args.vault_role, args.vault_ca_cert, args.vault_jwt_path
        )
    database = open_database(args.state_postgres, vault, application_name="freehold-router")
    return PostgresLedger(database, f"{args.namespace}/{args.name}", time.time)


class _VaultLogin:
    def __init__(self, address: str, role: str, ca_cert: str | None, jwt_path: str) -> None:
        self.address, self.role, self.ca_cert = address, role, ca_cert
        self.auth_mount = "kubernetes"
        self.jwt_path = jwt_path


@serve.ingress(router_app)
class RouterServer:
    def __init__(self, args: RouterArgs) -> None:
        self._args = args
        self._router = Router(args)
        # aiohttp, not httpx, on the forwarding path: measured ~2 ms less per request on
        # 2 cores (bench/router.py), which is most of what a router adds.
        timeout = args.fallback.timeout_seconds
        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=60),
            auto_decompress=False,
        )
        self._keys: ApiKeys | None = load_keys(args.api_keys)
        self._follow = follow_keys(self._keys, args.api_keys)
        self._external_keys: dict[str, str | None] = {}
        # The router's own key per target, never a caller's: from a file (`freehold up`) or
        # read from Vault by the router itself (a cluster), then kept fresh in the background.
        self._target_keys: dict[str, str | None] = {
            t.name: _own_key(t.api_key_file) for t in args.targets if t.api_key_file
        }
        self._vault_keyed = [t for t in args.targets if t.api_key_vault and not t.api_key_file]
        for t in self._vault_keyed:
            self._target_keys[t.name] = self._vault_target_key(t)
        self._key_wanted = asyncio.Event()
        # Targets whose last answer to the router's own key was a refusal (or the key could
        # not be read), for /router/status and so the resource's status: cleared by a 200.
        self._key_problems: dict[str, str] = {}
        self._key_refresh = (
            asyncio.get_running_loop().create_task(self._follow_target_keys())
            if self._vault_keyed
            else None
        )
        self._m = router_metrics()
        self._ledger = open_ledger(args)
        self._access = (
            AccessLog.of_router(args.name, args.namespace, args.audit, args.telemetry.otlp_endpoint)
            if args.audit is not None
            else None
        )
        # Rate counters live where the budgets do.
        self._limiter: MemoryLimiter | PostgresLimiter = (
            PostgresLimiter(self._ledger)
            if isinstance(self._ledger, PostgresLedger)
            else MemoryLimiter()
        )
        # Streams whose client left, read to their end for their usage (kept referenced).
        self._drains: set[asyncio.Task[None]] = set()
        # Cooldowns live where the budgets do: with PostgreSQL, every replica's.
        self._cooling = (
            asyncio.get_running_loop().create_task(self._follow_cooldowns())
            if isinstance(self._ledger, PostgresLedger)
            else None
        )

    # -- plumbing ------------------------------------------------------------------------

    def _caller(self, request: Request) -> KeyInfo | None:
        """The caller's key: its id, tenant, allowlist and budget (None: the router
        requires no key)."""
        if self._keys is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        info = self._keys.lookup(presented.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return info

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > self._args.max_request_bytes:
            raise ApiError(413, "The request body is too large.", code="request_too_large")
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "The body is not valid JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
        if body.get("model") != self._args.served_name:
            raise ApiError(
                404,
                f"The model `{body.get('model')}` does not exist; this router serves "
                f"`{self._args.served_name}`.",
                param="model",
                code="model_not_found",
            )
        return body

    def _external_key(self, target: TargetConfig) -> str | None:
        ext = target.external
        assert ext is not None
        if target.name not in self._external_keys:
            key = None
            if ext.api_key_env:
                key = os.environ.get(ext.api_key_env)
            elif ext.vault_path and self._args.vault_address:
                key = _read_vault_key(self._args, ext.vault_mount or "secret", ext.vault_path,
                                      ext.vault_key)  # fmt: skip
            self._external_keys[target.name] = key
        return self._external_keys[target.name]

    def _vault_target_key(self, target: TargetConfig) -> str | None:
        where = target.api_key_vault
        assert where is not None
        if not self._args.vault_address:
            return None
        return _read_vault_key(self._args, where.mount, where.path, where.field)

    async def _follow_target_keys(self) -> None:
        """Re-read the router's own keys every 30 s, and at once (at most every 2 s) after a
        target refused one: a rotation reaches the router without a restart. A key that
        cannot be read keeps its last value (the target decides whether it still holds)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._key_wanted.wait(), TARGET_KEY_REFRESH_SECONDS)
            self._key_wanted.clear()
            for target in self._vault_keyed:
                key = await asyncio.to_thread(self._vault_target_key, target)
                if key is not None:
                    self._target_keys[target.name] = key
            await asyncio.sleep(2.0)

    # -- budgets -------------------------------------------------------------------------

    async def _ledger_call(self, method: Any, *args: Any) -> Any:
        if isinstance(self._ledger, MemoryLedger):
            return method(*args)
        return await asyncio.to_thread(method, *args)

    def _permits(self, info: KeyInfo, target: TargetConfig) -> bool:
        """A key's allowlist names the router (every target), or targets by name or model."""
        return info.allows(self._args.served_name, target.name, target.model)

    def _budgets(self, info: KeyInfo | None) -> list[BudgetConfig]:
        """The budgets a caller's request holds against: its tenant's, and its key's."""
        if info is None:
            return []
        found = [b for b in (self._router.budget(info.tenant),) if b is not None]
        return found + self._budgets_of([info])

    @staticmethod
    def _budgets_of(infos: list[KeyInfo]) -> list[BudgetConfig]:
        # A key's own budget is kept in the ledger under the key's id.
        return [BudgetConfig(tenant=i.id, **i.budget.model_dump()) for i in infos if i.budget]

    async def _hold(
        self,
        info: KeyInfo | None,
        kind: str,
        body: dict[str, Any],
        order: list[TargetConfig],
        prompt: int,
        ceiling: int | None,
    ) -> Charge | None:
        """Hold the most the request can cost against its tenant's budget and its key's
        (router/ledger.py says why), capping the completion it may generate when it set
        none (at most `ceiling`, what its rate limits leave)."""
        budgets = self._budgets(info)
        if not budgets:
            return None
        requested = 0 if kind == "embeddings" else _requested(body)
        rates = [(t.cost_input, t.cost_output) for t in order[: self._args.fallback.max_attempts]]
        now = time.time()
        holds: list[Hold] = []
        try:
            used = [await self._ledger_call(self._ledger.committed, b, now) for b in budgets]
            left = _tightest([remaining(b, c) for b, c in zip(budgets, used, strict=True)])
            planned = plan(prompt, requested, rates, left)
            if (
                ceiling is not None
                and not isinstance(planned, str)
                and (planned.max_tokens is None or planned.max_tokens > ceiling)
            ):
                ceiling = max(ceiling, 1)
                planned = plan(prompt, ceiling, rates, left)
                if not isinstance(planned, str):
                    planned = Plan(planned.tokens, planned.cost, ceiling)
            if isinstance(planned, str):
                raise BudgetRefusedError(
                    f"{planned}; "
                    + "; ".join(_spent(b, c, info) for b, c in zip(budgets, used, strict=True))
                )
            for budget in budgets:
                try:
                    holds.append(
                        await self._ledger_call(
                            self._ledger.hold, budget, Amount(planned.tokens, planned.cost), now
                        )
                    )
                except BudgetRefusedError as refused:
                    whose = "the key" if info and budget.tenant == info.id else "the tenant"
                    raise BudgetRefusedError(f"{whose}: {refused.why}") from None
        except (BudgetRefusedError, LedgerUnavailableError) as failed:
            if holds:  # another replica spent meanwhile: what was held is given back
                await Charge(self._ledger, holds).release()
            if isinstance(failed, LedgerUnavailableError):
                raise self._state_unavailable() from None
            self._m.refused.labels(self._args.name, "budget").inc()
            assert info is not None
            raise ApiError(
                429,
                f"The budget of {_whose(budgets, info)} does not cover this request: "
                f"{failed.why}; fallbacks count too.",
                type="insufficient_quota",
                code="budget_exceeded",
            ) from None
        if planned.max_tokens is not None:
            body["max_tokens"] = planned.max_tokens  # never generate past what was held
        return Charge(self._ledger, holds)

    # -- routing -------------------------------------------------------------------------

    def _scopes(self, tenant: str | None, key: str | None) -> list[tuple[str, Rate]]:
        """The rate limits a caller's request counts against: its tenant's, its key's."""
        found = next((r for r in self._args.rate_limits if r.tenant == tenant), None)
        if found is None or tenant is None:
            return []
        scopes = []
        if found.requests_per_minute or found.tokens_per_minute:
            scopes.append(
                (f"tenant:{tenant}", Rate(found.requests_per_minute, found.tokens_per_minute))
            )
        if key is not None and (found.key_requests_per_minute or found.key_tokens_per_minute):
            scopes.append((key, Rate(found.key_requests_per_minute, found.key_tokens_per_minute)))
        return scopes

    async def _rate_ceiling(self, scopes: list[tuple[str, Rate]], prompt: int) -> int | None:
        """The completion tokens the caller's token-per-minute windows leave after this
        prompt (None: no token limit)."""
        now = time.time()
        ceilings = []
        for scope, rate in scopes:
            if rate.tokens is None:
                continue
            try:
                window = await self._ledger_call(self._limiter.window, scope, now)
            except LedgerUnavailableError:
                raise self._state_unavailable() from None
            left = tokens_left(rate, *window)
            if left is not None:
                ceilings.append(left - prompt)
        return min(ceilings) if ceilings else None

    async def _admit(self, scopes: list[tuple[str, Rate]], tokens: int) -> None:
        try:
            await self._ledger_call(self._limiter.admit, scopes, tokens, time.time())
        except RateLimitedError as limited:
            self._m.refused.labels(self._args.name, "rate_limit").inc()
            rate = dict(scopes)[limited.scope]
            whose = "this key" if limited.scope.startswith("key:") else "this tenant"
            if limited.retry_after == math.inf:
                raise ApiError(
                    429,
                    f"The request may use {tokens} tokens, more than {whose} may use in a "
                    "minute; send a shorter prompt or a lower max_tokens.",
                    type="requests",
                    code="rate_limit_exceeded",
                ) from None
            retry = max(1, math.ceil(limited.retry_after))
            raise ApiError(
                429,
                f"Rate limit of {whose} reached ({rate.requests or '-'} requests, "
                f"{rate.tokens or '-'} tokens per minute); retry after {retry} s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            ) from None
        except LedgerUnavailableError:
            raise self._state_unavailable() from None

    def _state_unavailable(self) -> ApiError:
        self._m.refused.labels(self._args.name, "budget_state").inc()
        return ApiError(
            503,
            "The router cannot reach its budget ledger; budgeted and rate-limited requests "
            "wait until it is back.",
            type="server_error",
            code="budget_state_unavailable",
            headers={"Retry-After": "5"},
        )

    async def route(self, request: Request, kind: str) -> Response:
        """One routed request, with its access record (at the router: the caller's key
        id and tenant, which the targets never see)."""
        started = time.perf_counter()
        info = self._caller(request)
        tenant, key = (None, None) if info is None else (info.tenant, info.id)
        seen: dict[str, Any] = {}  # the answer's usage, as the relay or the reader saw it
        try:
            response = await self._route(request, kind, info, seen)
        except ApiError as error:
            self._record(kind, key, tenant, None, error.status, started, None, error.code)
            raise
        target = response.headers.get(TARGET_HEADER)
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._recorded(
                response.body_iterator, kind, key, tenant, target, started, seen
            )
        else:
            usage = seen.get("usage")
            self._record(kind, key, tenant, target, response.status_code, started, usage, None)
        return response

    def _record(
        self,
        kind: str,
        key: str | None,
        tenant: str | None,
        target: str | None,
        status: int,
        started: float,
        usage: Any,
        error: str | None,
    ) -> None:
        if self._access is None:
            return
        usage = usage if isinstance(usage, dict) else {}
        self._access.record(
            operation=kind,
            model=self._args.served_name,
            key=key,
            tenant=tenant,
            status=status,
            latency_s=time.perf_counter() - started,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            error=error,
            target=target,
        )

    async def _recorded(
        self,
        chunks: Any,
        kind: str,
        key: str | None,
        tenant: str | None,
        target: str | None,
        started: float,
        seen: dict[str, Any],
    ) -> AsyncIterator[Any]:
        """A stream passed through; its record (with the tokens of the usage the relay
        saw) written when it ends, or when its client leaves (499)."""
        status = 499
        try:
            async for chunk in chunks:
                yield chunk
            status = 200
        finally:
            self._record(kind, key, tenant, target, status, started, seen.get("usage"), None)

    async def _route(
        self,
        request: Request,
        kind: str,
        info: KeyInfo | None,
        seen: dict[str, Any],
    ) -> Response:
        tenant, key = (None, None) if info is None else (info.tenant, info.id)
        body = await self._body(request)
        need = need_of(kind, body)
        order, skipped = self._router.order(need)
        if info is not None and info.models is not None:
            if not any(self._permits(info, t) for t in self._args.targets):
                raise ApiError(  # as OpenAI answers: the key learns nothing it may not use
                    404,
                    f"The model `{body['model']}` does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            order = [t for t in order if self._permits(info, t)]
        if not order:
            self._m.refused.labels(self._args.name, "no_target").inc()
            reasons = "; ".join(f"{s.target}: {s.why}" for s in skipped) or "no targets"
            raise ApiError(
                503,
                f"No target of this router can serve the request ({reasons}).",
                type="server_error",
                code="no_target_available",
                headers={"Retry-After": "1"},
            )
        texts = _texts(kind, body)
        prompt = prompt_bound(
            texts, len(body.get("messages") or []) if kind == "chat" else len(texts)
        )
        scopes = self._scopes(tenant, key)
        open_ended = kind != "embeddings" and _requested(body) is None
        ceiling = await self._rate_ceiling(scopes, prompt) if scopes and open_ended else None
        charge = await self._hold(info, kind, body, order, prompt, ceiling)
        if charge is None and ceiling is not None:
            body["max_tokens"] = max(ceiling, 1)  # never generate past what the window takes
        if scopes:
            completion = 0 if kind == "embeddings" else _requested(body) or 0
            try:
                await self._admit(scopes, prompt + completion)
            except ApiError:
                if charge is not None:
                    await charge.release()
                raise
        try:
            return await self._attempt(kind, body, order, charge, seen)
        finally:
            # Whatever did not hand its hold to a stream (which settles it when it ends)
            # and did not settle it with an answer's usage used nothing.
            if charge is not None and not charge.streaming:
                await charge.release()

    async def _attempt(
        self,
        kind: str,
        body: dict[str, Any],
        order: list[TargetConfig],
        charge: Charge | None,
        seen: dict[str, Any],
    ) -> Response:
        self._m.decisions.labels(self._args.name, self._args.strategy, order[0].name).inc()
        stream = bool(body.get("stream")) and kind != "embeddings"
        tried: list[str] = []
        last: FailedError | None = None
        for target in order[: self._args.fallback.max_attempts]:
            try:
                if target.external is not None:
                    response = await self._external(target, kind, body, stream, charge, seen)
                else:
                    response = await self._forward(target, kind, body, stream, charge, seen)
            except FailedError as failure:
                if failure.cool:
                    until = self._router.failed(target.name)
                    if isinstance(self._ledger, PostgresLedger):
                        self._background(self._share_cooldown(target.name, until))
                self._m.requests.labels(self._args.name, target.name, "failed").inc()
                tried.append(f"{target.name}: {failure.cause}")
                last = failure
                if failure.cause not in self._args.fallback.on:
                    break  # a failure the spec does not fall back on: it is the answer
                self._m.fallbacks.labels(self._args.name, target.name, failure.cause).inc()
                continue
            response.headers[TARGET_HEADER] = target.name
            response.headers["X-Freehold-Attempts"] = str(len(tried) + 1)
            return response
        if last is not None and last.response is not None:
            return last.response  # the last target's own error, as it answered
        raise ApiError(
            504 if last is not None and last.cause == "timeout" else 502,
            f"Every target tried failed ({'; '.join(tried)}).",
            type="server_error",
            code="upstream_failed",
        )

    def _failure(self, cause: str | None, status: int, content: bytes) -> None:
        if cause is not None and cause in self._args.fallback.on:
            raise FailedError(cause, Response(content, status, media_type="application/json"))

    def _headers(self, target: TargetConfig) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        credential = self._target_keys.get(target.name)
        if credential:  # the router's own key for this target, never the caller's
            headers["Authorization"] = f"Bearer {credential}"
        elif target.name in self._target_keys:
            self._key_wanted.set()
            self._key_problems[target.name] = "cannot be read from Vault"
            raise FailedError(
                "5xx", _credential_error(target, "cannot be read from Vault"), cool=False
            )
        return headers

    async def _forward(
        self,
        target: TargetConfig,
        kind: str,
        body: dict[str, Any],
        stream: bool,
        charge: Charge | None,
        seen: dict[str, Any],
    ) -> Response:
        payload = {**body, "model": target.model or body["model"]}
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if stream:
            payload["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        url = f"{target.url}{PATHS[kind]}"
        headers = self._headers(target)
        started = time.perf_counter()
        try:
            answer = await self._client.post(
                url, data=json.dumps(payload, separators=(",", ":")), headers=headers
            )
        except TimeoutError:
            raise FailedError("timeout") from None
        except aiohttp.ClientError:
            raise FailedError("5xx") from None  # unreachable: as good as a server error
        first_byte = time.perf_counter() - started
        if answer.status != 200:
            try:
                content = await answer.read()
            except (TimeoutError, aiohttp.ClientError):
                content = b""
            answer.release()
            if answer.status in (401, 403) and target.name in self._target_keys:
                # The target refused the router's own key (revoked, rotated): the caller's
                # key was fine, so never pass this 401 on as theirs; re-read ours, fall back.
                self._key_wanted.set()
                self._key_problems[target.name] = "was refused by the target"
                refused = _credential_error(target, "was refused by the target")
                raise FailedError("5xx", refused, cool=False)
            self._failure(failure_cause(answer.status, content), answer.status, content)
            self._m.requests.labels(self._args.name, target.name, "client_error").inc()
            return Response(content, answer.status, media_type="application/json")
        self._key_problems.pop(target.name, None)
        self._m.first_byte.labels(self._args.name, target.name).observe(first_byte)
        self._router.succeeded(target.name, first_byte)
        self._m.requests.labels(self._args.name, target.name, "ok").inc()
        if not stream:
            try:
                content = await answer.read()
            except TimeoutError:
                raise FailedError("timeout") from None
            except aiohttp.ClientError:
                raise FailedError("5xx") from None
            try:
                seen["usage"] = json.loads(content).get("usage")
            except (ValueError, AttributeError):
                seen["usage"] = None
            if charge is not None:
                await charge.usage(target, seen["usage"])
            return Response(content, 200, media_type="application/json")
        if charge is not None:
            charge.streaming = True
        return StreamingResponse(
            self._relay(answer, target, charge, wants_usage, seen), media_type="text/event-stream"
        )

    async def _relay(
        self,
        answer: aiohttp.ClientResponse,
        target: TargetConfig,
        charge: Charge | None,
        wants_usage: bool,
        seen: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        ended = False
        try:
            async for received in answer.content:
                line = received
                if line.startswith(b"data: {") and b'"usage":{' in line.replace(b" ", b""):
                    chunk = json.loads(line[6:])
                    seen.setdefault("usage", chunk.get("usage"))
                    if charge is not None:
                        await charge.usage(target, chunk.get("usage"))  # the first one only
                    if not wants_usage:
                        # Usage only the router asked for (to charge the budget).
                        if not chunk.get("choices"):
                            continue
                        chunk.pop("usage", None)
                        line = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n"
                yield line
            ended = True
        finally:
            if charge is None or charge.settled:
                answer.release()
            elif ended:  # the target ended its stream without usage: charged in full
                answer.release()
                self._background(charge.settle(charge.amount))
            else:  # the client left: read the rest for the usage of what was generated
                self._background(self._drain(answer, target, charge))

    async def _share_cooldown(self, target: str, until: float) -> None:
        assert isinstance(self._ledger, PostgresLedger)
        try:
            await asyncio.to_thread(self._ledger.cool, target, until)
        except LedgerUnavailableError:
            log.warning("could not share the cooldown of target %s", target)

    async def _follow_cooldowns(self) -> None:
        """Every second, the cooldowns other replicas saw (best effort: a replica that
        cannot read them keeps its own)."""
        assert isinstance(self._ledger, PostgresLedger)
        while True:
            await asyncio.sleep(COOLDOWN_SYNC_SECONDS)
            try:
                shared = await asyncio.to_thread(self._ledger.cooldowns, time.time())
            except LedgerUnavailableError:
                continue
            for name, until in shared.items():
                self._router.cooled(name, until)

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(
        self, answer: aiohttp.ClientResponse, target: TargetConfig, charge: Charge
    ) -> None:
        """A stream whose client left: the target generates at most what was held; its
        usage chunk, at the end, says what that was."""
        try:
            async for line in answer.content:
                if line.startswith(b"data: {") and b'"usage":{' in line.replace(b" ", b""):
                    await charge.usage(target, json.loads(line[6:]).get("usage"))
                    break
        except (TimeoutError, aiohttp.ClientError, ValueError):
            pass
        finally:
            answer.release()
            await charge.settle(charge.amount)  # no usage came: in full

    async def _external(
        self,
        target: TargetConfig,
        kind: str,
        body: dict[str, Any],
        stream: bool,
        charge: Charge | None,
        seen: dict[str, Any],
    ) -> Response:
        import any_llm

        ext = target.external
        assert ext is not None
        key = self._external_key(target)
        started = time.perf_counter()
        try:
            if kind == "embeddings":
                result: Any = await any_llm.aembedding(
                    model=ext.model, inputs=body.get("input") or "", provider=ext.provider,
                    api_key=key, api_base=ext.base_url,
                )  # fmt: skip
            else:
                params = {
                    k: body[k]
                    for k in ("temperature", "top_p", "max_tokens", "stop", "seed",
                              "response_format", "logprobs", "top_logprobs")
                    if body.get(k) is not None
                }  # fmt: skip
                if stream:
                    params["stream_options"] = {"include_usage": True}
                result = await any_llm.acompletion(
                    model=ext.model, messages=body.get("messages") or [], provider=ext.provider,
                    api_key=key, api_base=ext.base_url, stream=stream,
                    timeout=self._args.fallback.timeout_seconds, **params,
                )  # fmt: skip
        except Exception as exc:  # provider errors: classify, never echo their text
            status = getattr(exc, "status_code", None)
            timed_out = "timeout" in type(exc).__name__.lower()
            cause = failure_cause(status if isinstance(status, int) else None, b"", timed_out)
            if cause is not None and cause in self._args.fallback.on:
                raise FailedError(cause) from None
            raise ApiError(
                502,
                f"The external target {target.name} failed ({type(exc).__name__}).",
                type="server_error",
                code="upstream_failed",
            ) from None
        self._router.succeeded(target.name, time.perf_counter() - started)
        self._m.requests.labels(self._args.name, target.name, "ok").inc()
        if stream:
            if charge is not None:
                charge.streaming = True
            return StreamingResponse(
                self._external_stream(result, target, charge, seen),
                media_type="text/event-stream",
            )
        data = result.model_dump(mode="json", exclude_none=True)
        seen["usage"] = data.get("usage")
        if charge is not None:
            await charge.usage(target, data.get("usage"))
        return Response(json.dumps(data), 200, media_type="application/json")

    async def _external_stream(
        self, chunks: Any, target: TargetConfig, charge: Charge | None, seen: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                data = chunk.model_dump(mode="json", exclude_none=True)
                if data.get("usage"):
                    seen.setdefault("usage", data["usage"])
                    if charge is not None:
                        await charge.usage(target, data.get("usage"))
                yield f"data: {json.dumps(data)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            if charge is not None and not charge.settled:
                # Left early, or no usage from the provider: what was held, in full.
                self._background(charge.settle(charge.amount))

    # -- endpoints -----------------------------------------------------------------------

    @router_app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @router_app.get("/metrics")
    async def metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @router_app.get("/router/status")
    async def status(self) -> dict[str, Any]:
        """Per target: admitted, cooling down, measured latency, counts, a problem with the
        router's own key for it (`ownKey`); per budget: what
        its tenant has spent and holds this period (or that the ledger is away). No
        request data."""
        found = self._router.status()
        for listed in found["targets"]:
            # What is wrong with the router's own key for it, if anything (never the key).
            listed["ownKey"] = self._key_problems.get(listed["name"])
        budgets = []
        now = time.time()
        keyed = [] if self._keys is None else [i for i in self._keys.infos() if i.budget]
        for budget in [*self._args.budgets, *self._budgets_of(keyed)]:
            entry: dict[str, Any] = {"tenant": budget.tenant, "period": budget.period,
                                     "tokens": budget.tokens, "cost": budget.cost}  # fmt: skip
            owner = next((i for i in keyed if i.id == budget.tenant), None)
            if owner is not None:  # a key's own budget: its id (never the key) and tenant
                entry.update(tenant=owner.tenant, key=owner.id)
            try:
                committed = await self._ledger_call(self._ledger.committed, budget, now)
            except LedgerUnavailableError:
                entry["ledger"] = "unavailable"
            else:
                entry.update(committedTokens=committed.tokens, committedCost=committed.cost)
            budgets.append(entry)
        found["budgets"] = budgets
        found["ledger"] = "memory" if isinstance(self._ledger, MemoryLedger) else "postgres"
        return found

    @router_app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        info = self._caller(request)
        listed = info is None or any(self._permits(info, t) for t in self._args.targets)
        card = {"id": self._args.served_name, "object": "model", "owned_by": "freehold"}
        body = {"object": "list", "data": [card] if listed else []}
        return Response(json.dumps(body), media_type="application/json")

    @router_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self.route(request, "chat")

    @router_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self.route(request, "completions")

    @router_app.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        return await self.route(request, "embeddings")


def router_options(args: RouterArgs) -> dict[str, Any]:
    """Ray Serve options of the router deployment."""
    return {
        "num_replicas": args.replicas,
        # A proxy: it waits on its targets, it does not compute. Admission is the targets'.
        "max_ongoing_requests": 1024,
        "ray_actor_options": {
            "num_cpus": 0,
            # Every routed request waits on this process twice (the call and the answer).
            "runtime_env": serving_runtime_env(),
        },
        # The router writes its own access records (caller's key, tenant, target): Ray's
        # per-request access log line would repeat them, unsigned, on every request.
        "logging_config": LoggingConfig(enable_access_log=False),
        "graceful_shutdown_timeout_s": 5,
    }


def build_router(args: RouterArgs) -> Application:
    """The router application (`import_path: freehold_serving.router.app:build_router`)."""
    deployment = serve.deployment(name="router")(RouterServer)
    return deployment.options(**router_options(args)).bind(args)


__all__ = ["RouterServer", "build_router", "error_response", "router_options"]
