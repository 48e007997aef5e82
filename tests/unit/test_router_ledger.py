"""Budgets that cannot be overspent (router/ledger.py, router/policy.py's plan): holds
against the budget before a request is forwarded, settled exactly once, in the router's
memory and in a real PostgreSQL shared by replicas (tests/pg_server.py)."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from freehold_serving.memory.postgres import Credentials, PostgresDatabase
from freehold_serving.router.args import BudgetConfig
from freehold_serving.router.ledger import (
    Amount,
    BudgetRefusedError,
    Counts,
    Ledger,
    LedgerUnavailableError,
    MemoryLedger,
    MemoryLimiter,
    PostgresLedger,
    PostgresLimiter,
    Rate,
    RateLimitedError,
    rate_wait,
    remaining,
    tokens_left,
)
from freehold_serving.router.policy import Plan, plan, prompt_bound
from tests.pg_server import Postgres

BUDGET = BudgetConfig(tenant="acme", tokens=1000, cost=1.0, period="hour")
NOW = 7200.0 * 10  # the start of an hour


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


Make = Callable[[], Ledger]


@pytest.fixture(params=["memory", "postgres"])
def make(request: pytest.FixtureRequest) -> tuple[Make, Clock]:
    """A way to open the ledger again (another replica, or the same one after a restart)."""
    clock = Clock()
    if request.param == "memory":
        shared = MemoryLedger()
        return (lambda: shared), clock
    pg: Postgres = request.getfixturevalue("postgres")
    database = pg.create_database("r" + uuid.uuid4().hex[:12])

    def open_ledger() -> Ledger:
        db = PostgresDatabase(
            pg.conninfo(database),
            schema="router_state",
            credentials=lambda: Credentials(pg.user, pg.password),
        )
        return PostgresLedger(db, "team-a/assistant", clock)

    return open_ledger, clock


def test_holds_count_at_once_and_settle_exactly_once(make: tuple[Make, Clock]) -> None:
    open_ledger, _ = make
    ledger = open_ledger()
    first = ledger.hold(BUDGET, Amount(600, 0.1), NOW)
    with pytest.raises(BudgetRefusedError) as refused:
        ledger.hold(BUDGET, Amount(500, 0.1), NOW)  # 600 held + 500 > 1000
    assert "600 of 1000" in refused.value.why
    ledger.settle(first, Amount(200, 0.05))
    ledger.settle(first, Amount(200, 0.05))  # a second settle: nothing
    assert ledger.committed(BUDGET, NOW) == Amount(200, 0.05)
    second = ledger.hold(BUDGET, Amount(800, 0.1), NOW)
    ledger.settle(second, Amount(0, 0.0))  # no target answered
    assert ledger.committed(BUDGET, NOW) == Amount(200, 0.05)
    with pytest.raises(BudgetRefusedError, match="may cost up to"):
        ledger.hold(BUDGET, Amount(10, 0.96), NOW)  # cost too
    # Other tenants and the next period start from nothing.
    other = BudgetConfig(tenant="globex", tokens=10, period="hour")
    ledger.settle(ledger.hold(other, Amount(10), NOW), Amount(10))
    assert ledger.committed(BUDGET, NOW + 3600) == Amount()
    # Another replica (or this one restarted) sees the same ledger.
    if not isinstance(ledger, MemoryLedger):
        assert open_ledger().committed(BUDGET, NOW) == Amount(200, 0.05)


def test_concurrent_holds_of_replicas_never_pass_the_budget(make: tuple[Make, Clock]) -> None:
    """Forty requests at once on two replicas, each holding 100 of a 1,000 budget: ten
    get through, thirty are refused, whatever the interleaving."""
    open_ledger, _ = make
    replicas = [open_ledger(), open_ledger()]
    granted: list[Any] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def client(n: int) -> None:
        ledger = replicas[n % 2]
        start.wait()
        for _ in range(5):
            try:
                hold = ledger.hold(BUDGET, Amount(100, 0.0), NOW)
            except BudgetRefusedError as exc:
                with lock:
                    refused.append(exc.why)
            else:
                with lock:
                    granted.append(hold)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 10 and len(refused) == 30
    for hold in granted:
        replicas[0].settle(hold, Amount(100, 0.0))
    assert replicas[1].committed(BUDGET, NOW).tokens == 1000


def test_a_hold_its_replica_never_settled_is_charged_in_full_when_it_expires(
    make: tuple[Make, Clock],
) -> None:
    open_ledger, clock = make
    ledger = open_ledger()
    if isinstance(ledger, MemoryLedger):
        pytest.skip("one process: its holds end with it (and so does its ledger)")
    ledger.hold(BUDGET, Amount(300, 0.2), NOW)  # its replica dies before settling
    clock.t = NOW + 3601
    assert ledger.committed(BUDGET, NOW).tokens == 300  # held, then charged
    ledger.hold(BudgetConfig(tenant="acme", tokens=10**6, period="day"), Amount(1), clock.t)
    assert ledger.committed(BUDGET, NOW) == Amount(300, 0.2)


def test_an_unreachable_ledger_refuses_with_its_own_error(postgres: Postgres) -> None:
    db = PostgresDatabase(
        f"host=127.0.0.1 port={postgres.port + 1} dbname=x",
        schema="router_state",
        connect_timeout=1,
    )
    ledger = PostgresLedger(db, "team-a/assistant", Clock())
    with pytest.raises(LedgerUnavailableError):
        ledger.hold(BUDGET, Amount(1), NOW)


def test_the_prompt_bound_is_an_upper_bound_and_missing_max_tokens_is_capped() -> None:
    assert prompt_bound(["héllo"]) == 6 + 8 + 64  # UTF-8 bytes, per message, per request
    assert prompt_bound(["a", "b"], messages=2) == 2 + 16 + 64
    left = remaining(BUDGET, Amount(900, 0.0))
    # No max_tokens: what remains after the prompt, forwarded as the limit.
    assert plan(50, None, [(0.0, 0.0)], left) == Plan(100, 0.0, 50)
    # A max_tokens that does not fit is refused, naming what would.
    assert plan(50, 51, [(0.0, 0.0)], left) == (
        "max_tokens 51 does not fit in what the budget leaves (at most 50 with this prompt)"
    )
    assert plan(50, 20, [(0.0, 0.0)], left) == Plan(70, 0.0, None)
    assert isinstance(plan(100, None, [(0.0, 0.0)], left), str)  # no room after the prompt
    # Cost: the dearest of the targets it may fall back to.
    cost_only = remaining(BudgetConfig(tenant="t", cost=10.0), Amount())
    planned = plan(1000, None, [(1.0, 1.0), (2.0, 4.0)], cost_only)
    assert isinstance(planned, Plan) and planned.max_tokens == 2000  # (10 - 2) / 4 per 1k
    assert planned.cost == pytest.approx(10.0)
    # Not limited at all (cost budget, targets free): nothing to cap.
    assert plan(10, None, [(0.0, 0.0)], cost_only) == Plan(10, 0.0, None)


def test_the_sliding_window_admits_up_to_the_limit_and_says_when_to_retry() -> None:
    rate = Rate(requests=10, tokens=1000)
    # Half a minute in, the previous minute weighs half.
    assert rate_wait(rate, Counts(4, 100), Counts(10, 100), 0.5, 10) is None  # 4 + 5 + 1
    wait = rate_wait(rate, Counts(5, 100), Counts(10, 100), 0.5, 10)  # 5 + 5 + 1 > 10
    assert wait == pytest.approx(6.0)  # until the previous minute weighs 4: 0.1 of a minute
    # This minute alone is full: into the next one, until this one weighs little enough.
    assert rate_wait(rate, Counts(10, 0), Counts(), 0.75, 1) == pytest.approx(15 + 6)
    assert rate_wait(Rate(tokens=100), Counts(), Counts(), 0.0, 101) == math.inf
    assert tokens_left(rate, Counts(0, 300), Counts(0, 400), 0.5) == 500
    assert tokens_left(Rate(requests=1), Counts(), Counts(), 0.0) is None


def test_rate_counters_of_replicas_admit_exactly_the_limit(make: tuple[Make, Clock]) -> None:
    open_ledger, _ = make
    ledgers = [open_ledger(), open_ledger()]
    limiters = [
        PostgresLimiter(x) if isinstance(x, PostgresLedger) else MemoryLimiter() for x in ledgers
    ]
    if isinstance(ledgers[0], MemoryLedger):
        limiters[1] = limiters[0]  # one process: one set of counters
    admitted, limited = [], []
    lock = threading.Lock()
    start = threading.Barrier(6)
    now = 60.0 * 1000 + 1  # the start of a minute: the previous one is empty

    def client(n: int) -> None:
        start.wait()
        for _ in range(5):
            try:
                limiters[n % 2].admit([("tenant:acme", Rate(requests=12))], 1, now)
            except RateLimitedError as exc:
                with lock:
                    limited.append(exc.retry_after)
            else:
                with lock:
                    admitted.append(n)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 12 and len(limited) == 18
    assert all(0 < r <= 120 for r in limited)
    current, previous, _ = limiters[0].window("tenant:acme", now)
    assert current == Counts(12, 12) and previous == Counts()
    # A request over one of its scopes is counted in none of them.
    both = [("key:k1", Rate(requests=1)), ("tenant:globex", Rate(requests=5))]
    limiters[0].admit(both, 1, now)
    with pytest.raises(RateLimitedError) as limited:
        limiters[1].admit(both, 1, now)
    assert limited.value.scope == "key:k1"
    assert limiters[0].window("tenant:globex", now)[0] == Counts(1, 1)
    # A minute later the window has moved on.
    limiters[0].admit([("tenant:acme", Rate(requests=12))], 1, now + 120)


def test_a_cooldown_one_replica_saw_is_every_replicas(postgres: Postgres) -> None:
    """Cooldowns are kept with the budgets: a target one replica saw fail is passed over
    by the others (each replica's monotonic clock is its own; they share wall time)."""
    from freehold_serving.router.args import RouterArgs
    from freehold_serving.router.policy import Need, Router

    database = postgres.create_database("r" + uuid.uuid4().hex[:12])
    wall = Clock()

    def replica(monotonic_start: float) -> tuple[Router, PostgresLedger]:
        db = PostgresDatabase(
            postgres.conninfo(database),
            schema="router_state",
            credentials=lambda: Credentials(postgres.user, postgres.password),
        )
        args = RouterArgs.model_validate({
            "name": "r", "served_name": "assistant",
            "targets": [{"name": "a", "url": "http://a/v1"}, {"name": "b", "url": "http://b/v1",
                                                               "priority": 1}],
            "fallback": {"cooldown_seconds": 30},
        })  # fmt: skip
        offset = monotonic_start - wall.t
        router = Router(args, clock=lambda: wall.t + offset, wall=wall)
        return router, PostgresLedger(db, "team-a/assistant", wall)

    (first, first_ledger), (second, second_ledger) = replica(5.0), replica(90000.0)
    need = Need(frozenset({"chat"}), prompt_tokens=10, max_tokens=10)
    assert [t.name for t in second.order(need)[0]] == ["a", "b"]
    first_ledger.cool("a", first.failed("a"))
    for name, until in second_ledger.cooldowns(wall.t).items():
        second.cooled(name, until)
    order, skipped = second.order(need)
    assert [t.name for t in order] == ["b"] and skipped[0].target == "a"
    wall.t += 31  # the cooldown ends for both at the same moment
    assert second_ledger.cooldowns(wall.t) == {}
    assert [t.name for t in second.order(need)[0]] == ["a", "b"]
