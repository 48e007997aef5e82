"""One parser for every quantity form the CRD (and so the API server) admits."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from freehold.api.base import QUANTITY_PATTERN
from freehold.quantity import QuantityError, parse_quantity, whole_cpus


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", "2"),
        ("500m", "0.5"),
        ("1.5", "1.5"),
        (".5", "0.5"),
        ("5.", "5"),
        ("+2", "2"),
        ("-1", "-1"),
        ("2k", "2000"),
        ("1e3", "1000"),
        ("1E-2", "0.01"),
        ("100u", "0.0001"),
        ("3n", "0.000000003"),
        ("4096Mi", str(4096 * 1024 * 1024)),
        ("4Gi", str(4 * 1024**3)),
        ("1Ki", "1024"),
        ("2M", "2000000"),
    ],
)
def test_every_admitted_form_parses(text: str, value: str) -> None:
    assert re.match(QUANTITY_PATTERN, text), text  # the CRD admits it
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "abc", "1.5.5", "2Xi", "1e", "m", "--1", " "])
def test_what_is_not_a_quantity_is_refused(text: str) -> None:
    assert not re.match(QUANTITY_PATTERN, text)
    with pytest.raises(QuantityError):
        parse_quantity(text)


@pytest.mark.security
def test_a_fractional_exponent_the_pattern_admits_is_an_error_not_a_crash() -> None:
    assert re.match(QUANTITY_PATTERN, "1e1.5")
    with pytest.raises(QuantityError):
        parse_quantity("1e1.5")


@pytest.mark.parametrize(("text", "cpus"), [("500m", 1), (".5", 1), ("3500m", 3), ("2k", 2000)])
def test_whole_cpus(text: str, cpus: int) -> None:
    assert whole_cpus(text) == cpus
