"""The router's decisions, pure and clocked from outside: which targets may serve a
request, in which order, what counts as a failure worth a fallback, and what each tenant
has spent. The app (router/app.py) does the I/O."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from freehold_serving.router.args import BudgetConfig, RouterArgs, TargetConfig

PERIOD_SECONDS = {"hour": 3600, "day": 86400, "month": 30 * 86400}
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
class Spend:
    window: int  # which period (index since the epoch)
    tokens: int = 0
    cost: float = 0.0


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
    spend: dict[str, Spend] = field(default_factory=dict)

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

    def failed(self, name: str) -> None:
        state = self.state(name)
        state.requests += 1
        state.failures += 1
        state.cooldown_until = self.clock() + self.args.fallback.cooldown_seconds

    # -- budgets -----------------------------------------------------------------------

    def budget(self, tenant: str | None) -> BudgetConfig | None:
        if tenant is None:
            return None
        return next((b for b in self.args.budgets if b.tenant == tenant), None)

    def _spend(self, budget: BudgetConfig) -> Spend:
        window = int(self.wall() // PERIOD_SECONDS[budget.period])
        current = self.spend.get(budget.tenant)
        if current is None or current.window != window:
            current = self.spend[budget.tenant] = Spend(window)
        return current

    def exhausted(self, tenant: str | None) -> str | None:
        """Why this tenant may not spend more now, or None."""
        budget = self.budget(tenant)
        if budget is None:
            return None
        spent = self._spend(budget)
        if budget.tokens is not None and spent.tokens >= budget.tokens:
            return f"{spent.tokens} of {budget.tokens} tokens this {budget.period}"
        if budget.cost is not None and spent.cost >= budget.cost:
            return f"{spent.cost:.4f} of {budget.cost} this {budget.period}"
        return None

    def charge(
        self, tenant: str | None, target: TargetConfig, prompt: int, completion: int
    ) -> None:
        """Whatever answered, fallbacks included, is charged to the caller's tenant."""
        budget = self.budget(tenant)
        if budget is None:
            return
        spent = self._spend(budget)
        spent.tokens += prompt + completion
        spent.cost += prompt / 1000 * target.cost_input + completion / 1000 * target.cost_output

    def status(self) -> dict[str, object]:
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
