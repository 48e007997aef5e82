"""Budgets that cannot be overspent: what each tenant has spent and holds, per period.

Why holds: charging after the answer lets every request that starts before the budget
runs out finish on it (ten concurrent requests spent 4.6x a budget; one request without
`max_tokens` 39x). So a request first *holds* the most it can cost (its prompt's upper
bound plus the completion it may generate, which the router caps), the hold counts
against the budget at once, and the answer *settles* it at what it really cost: exactly
once, whoever settles (a replica, or the expiry of a hold whose replica died, charged in
full: a lost answer is never free).

Two ledgers: in the router's memory (one replica; reset by a restart) and in PostgreSQL
(shared by every replica of every router, durable; if it cannot be reached, budgeted
requests are refused with 503: fail closed).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from freehold_serving.router.args import BudgetConfig

PERIOD_SECONDS = {"hour": 3600, "day": 86400, "month": 30 * 86400}
HOLD_SECONDS = 3600.0  # a hold not settled by then (its replica died) is charged in full


@dataclass(frozen=True)
class Amount:
    tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.tokens + other.tokens, self.cost + other.cost)


@dataclass(frozen=True)
class Hold:
    id: str
    tenant: str
    window: int
    amount: Amount


class BudgetRefusedError(Exception):
    """The request would take the tenant past its budget."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class LedgerUnavailableError(Exception):
    """The shared ledger cannot be reached: budgeted requests wait (503)."""


def window_of(budget: BudgetConfig, now: float) -> int:
    return int(now // PERIOD_SECONDS[budget.period])


def over(budget: BudgetConfig, committed: Amount, amount: Amount) -> str | None:
    """Why `amount` more does not fit beside what is spent and held (`committed`)."""
    if budget.tokens is not None and committed.tokens + amount.tokens > budget.tokens:
        return (
            f"it may use up to {amount.tokens} tokens and {committed.tokens} of "
            f"{budget.tokens} are spent or held this {budget.period}"
        )
    if budget.cost is not None and committed.cost + amount.cost > budget.cost + 1e-12:
        return (
            f"it may cost up to {amount.cost:.6f} and {committed.cost:.6f} of {budget.cost} "
            f"is spent or held this {budget.period}"
        )
    return None


def remaining(budget: BudgetConfig, committed: Amount) -> tuple[int | None, float | None]:
    tokens = None if budget.tokens is None else budget.tokens - committed.tokens
    cost = None if budget.cost is None else budget.cost - committed.cost
    return tokens, cost


class Ledger(Protocol):
    def committed(self, budget: BudgetConfig, now: float) -> Amount:
        """What the tenant has spent and holds in the current period."""

    def hold(self, budget: BudgetConfig, amount: Amount, now: float) -> Hold:
        """Hold `amount`, or raise BudgetRefusedError (nothing held)."""

    def settle(self, hold: Hold, actual: Amount) -> None:
        """Charge `actual` for `hold` and release it; a second settle does nothing."""


def _hold_id() -> str:
    return os.urandom(12).hex()


@dataclass
class MemoryLedger:
    """One process's ledger (a router with one replica and no shared state)."""

    spent: dict[tuple[str, int], Amount] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _committed(self, tenant: str, window: int) -> Amount:
        total = self.spent.get((tenant, window), Amount())
        for hold in self.holds.values():
            if hold.tenant == tenant and hold.window == window:
                total = total + hold.amount
        return total

    def committed(self, budget: BudgetConfig, now: float) -> Amount:
        with self._lock:
            return self._committed(budget.tenant, window_of(budget, now))

    def hold(self, budget: BudgetConfig, amount: Amount, now: float) -> Hold:
        window = window_of(budget, now)
        with self._lock:
            why = over(budget, self._committed(budget.tenant, window), amount)
            if why is not None:
                raise BudgetRefusedError(why)
            hold = Hold(_hold_id(), budget.tenant, window, amount)
            self.holds[hold.id] = hold
            return hold

    def settle(self, hold: Hold, actual: Amount) -> None:
        with self._lock:
            if self.holds.pop(hold.id, None) is None:
                return
            key = (hold.tenant, hold.window)
            self.spent[key] = self.spent.get(key, Amount()) + actual


# The shared ledger's tables, in a schema of their own (one per router's namespace/name
# would scatter them: one schema holds every router's, keyed by router).
SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spent (
    router TEXT NOT NULL,
    tenant TEXT NOT NULL,
    window_index BIGINT NOT NULL,
    tokens BIGINT NOT NULL DEFAULT 0,
    cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (router, tenant, window_index)
);
CREATE TABLE IF NOT EXISTS budget_holds (
    id TEXT PRIMARY KEY,
    router TEXT NOT NULL,
    tenant TEXT NOT NULL,
    window_index BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_holds_tenant ON budget_holds (router, tenant, window_index);
CREATE INDEX IF NOT EXISTS budget_holds_expiry ON budget_holds (expires_at);
CREATE TABLE IF NOT EXISTS router_cooldowns (
    router TEXT NOT NULL,
    target TEXT NOT NULL,
    until_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (router, target)
);
CREATE TABLE IF NOT EXISTS rate_counts (
    router TEXT NOT NULL,
    scope TEXT NOT NULL,
    minute BIGINT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (router, scope, minute)
)
"""


class PostgresLedger:
    """Every replica's ledger in one PostgreSQL. A hold locks the tenant's row for the
    period (holds of one tenant queue; other tenants do not wait), charges holds whose
    replica never settled them, checks, and inserts: one transaction."""

    def __init__(self, database: Any, router: str, clock: Callable[[], float]) -> None:
        self._db = database  # memory.postgres.PostgresDatabase: one connection, its lock
        self._router = router
        self._clock = clock
        self._lock = threading.Lock()
        self._ready = False

    def _run(self, work: Callable[[], Any]) -> Any:
        """`work` in the database; the tables are made on first use, so a router whose
        database is away starts, and refuses budgeted requests until it is back."""
        from freehold_serving.memory.postgres import PostgresUnavailableError

        try:
            with self._lock:
                if not self._ready:
                    self._db.ensure_schema(SCHEMA)
                    self._ready = True
                return work()
        except PostgresUnavailableError as exc:
            raise LedgerUnavailableError(str(exc)) from None

    def _spent_row(self, tenant: str, window: int) -> Amount:
        self._db.execute(
            "INSERT INTO budget_spent (router, tenant, window_index) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (self._router, tenant, window),
        )
        row = self._db.rows(
            "SELECT tokens, cost FROM budget_spent WHERE router = ? AND tenant = ?"
            " AND window_index = ? FOR UPDATE",
            (self._router, tenant, window),
        )[0]
        return Amount(int(row["tokens"]), float(row["cost"]))

    def _expire(self, tenant: str) -> None:
        """Charge in full the holds of `tenant` whose replica never settled them."""
        expired = self._db.rows(
            "DELETE FROM budget_holds WHERE router = ? AND tenant = ? AND expires_at < ?"
            " RETURNING window_index, tokens, cost",
            (self._router, tenant, self._clock()),
        )
        for row in expired:
            self._charge(tenant, int(row["window_index"]), Amount(row["tokens"], row["cost"]))

    def _charge(self, tenant: str, window: int, amount: Amount) -> None:
        self._db.execute(
            "INSERT INTO budget_spent (router, tenant, window_index, tokens, cost)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (router, tenant, window_index) DO UPDATE"
            " SET tokens = budget_spent.tokens + excluded.tokens,"
            " cost = budget_spent.cost + excluded.cost",
            (self._router, tenant, window, amount.tokens, amount.cost),
        )

    def _held(self, tenant: str, window: int) -> Amount:
        row = self._db.rows(
            "SELECT coalesce(sum(tokens), 0) AS tokens, coalesce(sum(cost), 0) AS cost"
            " FROM budget_holds WHERE router = ? AND tenant = ? AND window_index = ?",
            (self._router, tenant, window),
        )[0]
        return Amount(int(row["tokens"]), float(row["cost"]))

    def committed(self, budget: BudgetConfig, now: float) -> Amount:
        window = window_of(budget, now)

        def read() -> Amount:
            row = self._db.rows(
                "SELECT coalesce(sum(tokens), 0) AS tokens, coalesce(sum(cost), 0) AS cost"
                " FROM (SELECT tokens, cost FROM budget_spent WHERE router = ? AND tenant = ?"
                " AND window_index = ? UNION ALL SELECT tokens, cost FROM budget_holds"
                " WHERE router = ? AND tenant = ? AND window_index = ?) AS t",
                (self._router, budget.tenant, window) * 2,
            )[0]
            return Amount(int(row["tokens"]), float(row["cost"]))

        result: Amount = self._run(read)
        return result

    def hold(self, budget: BudgetConfig, amount: Amount, now: float) -> Hold:
        window = window_of(budget, now)
        hold = Hold(_hold_id(), budget.tenant, window, amount)

        def take() -> None:
            with self._db.transaction():
                self._spent_row(budget.tenant, window)  # locks the tenant's period
                self._expire(budget.tenant)
                spent = self._spent_row(budget.tenant, window)
                why = over(budget, spent + self._held(budget.tenant, window), amount)
                if why is not None:
                    raise BudgetRefusedError(why)
                self._db.execute(
                    "INSERT INTO budget_holds (id, router, tenant, window_index, tokens, cost,"
                    " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (hold.id, self._router, hold.tenant, window, amount.tokens, amount.cost,
                     self._clock() + HOLD_SECONDS),
                )  # fmt: skip

        self._run(take)
        return hold

    def settle(self, hold: Hold, actual: Amount) -> None:
        def charge() -> None:
            with self._db.transaction():
                gone = self._db.rows(
                    "DELETE FROM budget_holds WHERE id = ? RETURNING id", (hold.id,)
                )
                if gone:  # else settled already, or expired and charged in full
                    self._charge(hold.tenant, hold.window, actual)

        self._run(charge)

    # -- cooldowns shared by replicas ----------------------------------------------------

    def cool(self, target: str, until: float) -> None:
        """A replica saw `target` fail: every replica passes it over until `until` (wall
        clock), so the next request does not find out again on another replica."""

        def write() -> None:
            self._db.execute(
                "INSERT INTO router_cooldowns (router, target, until_at) VALUES (?, ?, ?)"
                " ON CONFLICT (router, target) DO UPDATE"
                " SET until_at = greatest(router_cooldowns.until_at, excluded.until_at)",
                (self._router, target, until),
            )

        self._run(write)

    def cooldowns(self, now: float) -> dict[str, float]:
        """Targets cooling down now, and until when (wall clock)."""

        def read() -> dict[str, float]:
            rows = self._db.rows(
                "SELECT target, until_at FROM router_cooldowns WHERE router = ? AND until_at > ?",
                (self._router, now),
            )
            return {str(r["target"]): float(r["until_at"]) for r in rows}

        found: dict[str, float] = self._run(read)
        return found


# -- rate limits ------------------------------------------------------------------------
#
# Requests and tokens per minute, per tenant and per key, on a sliding window: the
# current minute's count plus the previous minute's weighted by how much of it the
# window still covers (two counters per scope; no burst of twice the limit at a minute's
# edge, as fixed windows allow). Tokens are counted when a request is admitted, at the
# most it may use (the router caps max_tokens to what the window leaves), so a limit
# cannot be passed by asking for little and using much.


@dataclass(frozen=True)
class Rate:
    """A limit per minute (None: not limited)."""

    requests: int | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Counts:
    requests: int = 0
    tokens: int = 0


def minute_of(now: float) -> tuple[int, float]:
    """The minute `now` is in, and how far into it (0..1)."""
    minute = int(now // 60)
    return minute, (now - minute * 60) / 60


def _wait(limit: int, current: int, previous: int, elapsed: float, need: int) -> float | None:
    """Seconds until `need` more fits under `limit` (None: now; inf: never)."""
    if need > limit:
        return math.inf
    if current + previous * (1 - elapsed) + need <= limit:
        return None
    if current + need <= limit:  # the previous minute's weight must fall far enough
        return (current + previous * (1 - elapsed) + need - limit) / previous * 60
    # Not within this minute: in the next, this minute's count fades as the previous.
    return (1 - elapsed) * 60 + max(0.0, 1 - (limit - need) / current) * 60


def rate_wait(
    rate: Rate, current: Counts, previous: Counts, elapsed: float, tokens: int
) -> float | None:
    """Seconds until a request of `tokens` fits the rate (None: it fits now)."""
    waits = [
        w
        for w in (
            None if rate.requests is None
            else _wait(rate.requests, current.requests, previous.requests, elapsed, 1),
            None if rate.tokens is None
            else _wait(rate.tokens, current.tokens, previous.tokens, elapsed, tokens),
        )
        if w is not None
    ]  # fmt: skip
    return max(waits) if waits else None


def tokens_left(rate: Rate, current: Counts, previous: Counts, elapsed: float) -> int | None:
    """Tokens the window takes now (None: no token limit)."""
    if rate.tokens is None:
        return None
    return int(rate.tokens - current.tokens - previous.tokens * (1 - elapsed))


class RateLimitedError(Exception):
    def __init__(self, scope: str, retry_after: float) -> None:
        super().__init__(scope)
        self.scope = scope
        self.retry_after = retry_after


@dataclass
class MemoryLimiter:
    counts: dict[tuple[str, int], Counts] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def window(self, scope: str, now: float) -> tuple[Counts, Counts, float]:
        minute, elapsed = minute_of(now)
        with self._lock:
            return (
                self.counts.get((scope, minute), Counts()),
                self.counts.get((scope, minute - 1), Counts()),
                elapsed,
            )

    def admit(self, scopes: list[tuple[str, Rate]], tokens: int, now: float) -> None:
        """Count a request of `tokens` in every scope, or (any over its limit) in none and
        raise RateLimitedError."""
        minute, elapsed = minute_of(now)
        with self._lock:
            for scope, rate in scopes:
                current = self.counts.get((scope, minute), Counts())
                previous = self.counts.get((scope, minute - 1), Counts())
                wait = rate_wait(rate, current, previous, elapsed, tokens)
                if wait is not None:
                    raise RateLimitedError(scope, wait)
            for scope, _ in scopes:
                current = self.counts.get((scope, minute), Counts())
                self.counts[(scope, minute)] = Counts(current.requests + 1, current.tokens + tokens)
            for key in [k for k in self.counts if k[1] < minute - 1]:
                del self.counts[key]


class PostgresLimiter:
    """Every replica's counters in one PostgreSQL (the ledger's connection): an admission
    locks its scope's current minute (admissions of one scope queue)."""

    def __init__(self, ledger: PostgresLedger) -> None:
        self._ledger = ledger

    def _counts(self, scope: str, minute: int) -> Counts:
        rows = self._ledger._db.rows(
            "SELECT requests, tokens FROM rate_counts WHERE router = ? AND scope = ?"
            " AND minute = ?",
            (self._ledger._router, scope, minute),
        )
        return Counts(int(rows[0]["requests"]), int(rows[0]["tokens"])) if rows else Counts()

    def window(self, scope: str, now: float) -> tuple[Counts, Counts, float]:
        minute, elapsed = minute_of(now)
        result: tuple[Counts, Counts, float] = self._ledger._run(
            lambda: (self._counts(scope, minute), self._counts(scope, minute - 1), elapsed)
        )
        return result

    def admit(self, scopes: list[tuple[str, Rate]], tokens: int, now: float) -> None:
        minute, elapsed = minute_of(now)
        db, router = self._ledger._db, self._ledger._router

        def take() -> None:
            with db.transaction():
                # Scopes locked in one order: two admissions never wait on each other.
                for scope, rate in sorted(scopes):
                    db.execute(
                        "INSERT INTO rate_counts (router, scope, minute) VALUES (?, ?, ?)"
                        " ON CONFLICT DO NOTHING",
                        (router, scope, minute),
                    )
                    row = db.rows(
                        "SELECT requests, tokens FROM rate_counts WHERE router = ?"
                        " AND scope = ? AND minute = ? FOR UPDATE",
                        (router, scope, minute),
                    )[0]
                    current = Counts(int(row["requests"]), int(row["tokens"]))
                    previous = self._counts(scope, minute - 1)
                    wait = rate_wait(rate, current, previous, elapsed, tokens)
                    if wait is not None:
                        raise RateLimitedError(scope, wait)  # rolls the transaction back
                for scope, _ in scopes:
                    db.execute(
                        "UPDATE rate_counts SET requests = requests + 1, tokens = tokens + ?"
                        " WHERE router = ? AND scope = ? AND minute = ?",
                        (tokens, router, scope, minute),
                    )
                    db.execute(
                        "DELETE FROM rate_counts WHERE router = ? AND scope = ? AND minute < ?",
                        (router, scope, minute - 1),
                    )

        self._ledger._run(take)
