"""Fixtures every suite may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg_server import Postgres, postgres_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL per test session; each test makes its own database in it."""
    with postgres_server() as server:
        yield server
