"""The router's decisions, pure and clocked from outside: which targets may serve a
request, in which order, what counts as a failure worth a fallback, and what each tenant
has spent. The app (router/app.py) does the I/O."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from freehold_serving.router.args import BudgetConfig, RouterArgs, TargetConfig

LATENCY_ALPHA = 0.2  # weight of a new measurement in the moving average


@dataclass(frozen=True)
class Need:
    """What a request needs from a target."""

    capabilities: frozenset[str]
    prompt_tokens: int  # estimated
    max_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass
class TargetState:
    cooldown_until: float = 0.0
    latency_s: float | None = None  # moving average, time to the answer's first byte
    requests: int = 0
    failures: int = 0


@dataclass
class Skipped:
    target: str
    why: str


@dataclass
class Router:
    args: RouterArgs
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    states: dict[str, TargetState] = field(default_factory=dict)

    def state(self, name: str) -> TargetState:
        return self.states.setdefault(name, TargetState())

    # -- choosing ----------------------------------------------------------------------

    def eligible(self, need: Need) -> tuple[list[TargetConfig], list[Skipped]]:
        now = self.clock()
        ok, skipped = [], []
        for target in self.args.targets:
            missing = need.capabilities - set(target.capabilities)
            if not target.admitted:
                skipped.append(Skipped(target.name, "not admitted (not ready or eval not passed)"))
            elif missing:
                skipped.append(Skipped(target.name, f"cannot do {', '.join(sorted(missing))}"))
            elif target.context_limit is not None and need.tokens > target.context_limit:
                skipped.append(
                    Skipped(target.name, f"context limit {target.context_limit} < {need.tokens}")
                )
            elif self.state(target.name).cooldown_until > now:
                skipped.append(Skipped(target.name, "cooling down after a failure"))
            else:
                ok.append(target)
        return ok, skipped

    def order(self, need: Need) -> tuple[list[TargetConfig], list[Skipped]]:
        """Targets to try, best first, by the strategy; the rest say why they were skipped."""
        ok, skipped = self.eligible(need)
        strategy = self.args.strategy
        by_priority = sorted(ok, key=lambda t: (t.priority, t.name))
        if strategy in ("priority", "capability"):
            # capability: the eligible set is already the capable one; then priority.
            return by_priority, skipped
        if strategy == "least_cost":
            return sorted(ok, key=lambda t: (self.estimated_cost(t, need), t.priority)), skipped
        if strategy == "least_latency":
            # Unmeasured targets first (each gets measured), then the fastest.
            def latency(t: TargetConfig) -> tuple[int, float, int]:
                seen = self.state(t.name).latency_s
                return (0, 0.0, t.priority) if seen is None else (1, seen, t.priority)

            return sorted(ok, key=latency), skipped
        # weighted: draw without replacement by weight; the rest follow as fallbacks.
        pool = [t for t in ok if t.weight > 0]
        drawn: list[TargetConfig] = []
        while pool:
            pick = self.rng.choices(pool, weights=[t.weight for t in pool])[0]
            drawn.append(pick)
            pool.remove(pick)
        return drawn + [t for t in by_priority if t.weight == 0], skipped

    @staticmethod
    def estimated_cost(target: TargetConfig, need: Need) -> float:
        return (
            need.prompt_tokens / 1000 * target.cost_input
            + need.max_tokens / 1000 * target.cost_output
        )

    # -- outcomes ----------------------------------------------------------------------

    def succeeded(self, name: str, first_byte_s: float) -> None:
        state = self.state(name)
        state.requests += 1
        state.latency_s = (
            first_byte_s
            if state.latency_s is None
            else (1 - LATENCY_ALPHA) * state.latency_s + LATENCY_ALPHA * first_byte_s
        )

    def failed(self, name: str) -> float:
        """Count a failure and cool the target down; returns when that ends on the wall
        clock (what other replicas are told: their monotonic clocks are their own)."""
        state = self.state(name)
        state.requests += 1
        state.failures += 1
        state.cooldown_until = self.clock() + self.args.fallback.cooldown_seconds
        return self.wall() + self.args.fallback.cooldown_seconds

    def cooled(self, name: str, until_wall: float) -> None:
        """Another replica cooled `name` down until `until_wall` (wall clock)."""
        state = self.state(name)
        state.cooldown_until = max(state.cooldown_until, self.clock() + until_wall - self.wall())

    # -- budgets -----------------------------------------------------------------------

    def budget(self, tenant: str | None) -> BudgetConfig | None:
        if tenant is None:
            return None
        return next((b for b in self.args.budgets if b.tenant == tenant), None)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "targets": [
                {
                    "name": t.name,
                    "admitted": t.admitted,
                    "coolingDown": self.state(t.name).cooldown_until > now,
                    "latencyMs": (
                        None
                        if self.state(t.name).latency_s is None
                        else round(1000 * (self.state(t.name).latency_s or 0), 2)
                    ),
                    "requests": self.state(t.name).requests,
                    "failures": self.state(t.name).failures,
                }
                for t in self.args.targets
            ]
        }


def failure_cause(status: int | None, body: bytes = b"", timed_out: bool = False) -> str | None:
    """The fallback cause of an answer (None: a success, or the caller's own error)."""
    if timed_out:
        return "timeout"
    if status is None or status >= 500:
        return "5xx"  # unreachable, or the server failed
    if status == 429:
        return "429"
    if status == 400 and b"context_length_exceeded" in body:
        return "context_length"
    return None


def estimate_tokens(texts: Iterable[str]) -> int:
    """A cheap estimate (about 4 characters a token) for context limits and cost."""
    return sum(len(t) for t in texts) // 4 + 1


# Tokens a chat template may add per message (role markers) and per request (BOS, the
# generation prompt, a default system prompt such as SmolLM2's 20-odd tokens): more than
# the templates we serve add, so the prompt bound stays an upper bound.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS = 64


def prompt_bound(texts: Iterable[str], messages: int = 1) -> int:
    """An upper bound on the prompt's tokens: every token of a byte-level tokenizer
    (BPE, or SentencePiece with byte fallback) covers at least one byte of UTF-8."""
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    return size + TEMPLATE_TOKENS_PER_MESSAGE * max(messages, 1) + TEMPLATE_TOKENS


@dataclass(frozen=True)
class Plan:
    """What a budgeted request may use: its hold, and the completion limit to forward
    (None: the request's own)."""

    tokens: int
    cost: float
    max_tokens: int | None


def plan(
    prompt: int,
    requested: int | None,
    rates: list[tuple[float, float]],
    remaining: tuple[int | None, float | None],
) -> Plan | str:
    """The hold of a request whose prompt is at most `prompt` tokens, asking for
    `requested` completion tokens (None: as many as it may), answered by one of targets
    with (input, output) cost `rates` per 1,000 tokens, given what its tenant's budget has
    `remaining` (tokens, cost; None: not limited). A reason string when it cannot fit.

    Without `max_tokens`, the request gets what the budget leaves, and that limit is
    forwarded: a target never generates past what was held."""
    cost_in = max((r[0] for r in rates), default=0.0)
    cost_out = max((r[1] for r in rates), default=0.0)
    tokens_left, cost_left = remaining
    caps: list[int] = []
    if tokens_left is not None:
        caps.append(tokens_left - prompt)
    if cost_left is not None and cost_out > 0:
        caps.append(int((cost_left - prompt / 1000 * cost_in) / cost_out * 1000))
    cap = min(caps) if caps else None
    if requested is not None and cap is not None and requested > cap:
        fits = max(cap, 0)
        return (
            f"max_tokens {requested} does not fit in what the budget leaves "
            f"(at most {fits} with this prompt)"
        )
    if requested is None and cap is not None and cap < 1:
        return "the budget leaves no room for a completion after this prompt"
    completion = requested if requested is not None else cap
    if completion is None:  # a cost budget whose targets charge nothing for output
        completion = 0
    forwarded = None if requested is not None or cap is None else cap
    cost = prompt / 1000 * cost_in + completion / 1000 * cost_out
    return Plan(prompt + completion, cost, forwarded)
