"""Kubernetes resource quantities, read the way the API server reads them.

The CRD admits every form `resource.Quantity` accepts (`QUANTITY_PATTERN` in api/base.py):
a sign, a decimal with optional leading or trailing dot, then a binary suffix (Ki..Ei), a
decimal suffix (n, u, m, k, M..E) or a decimal exponent (e3, E-2). A builder that only
knew "2" and "500m" crashed on ".5", "2k" or "1e3", so this is the one parser.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)))?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse_quantity(text: str | int | float) -> Decimal:
    """The exact value of a quantity: parse_quantity("500m") == Decimal("0.5")."""
    raw = str(text).strip()
    match = _QUANTITY.match(raw)
    if match is None:
        raise QuantityError(f"{raw!r} is not a Kubernetes quantity")
    try:
        number = Decimal(match["number"])
        if match["binary"]:
            return number * Decimal(1024 ** _BINARY[match["binary"]])
        if match["decimal"]:
            return number.scaleb(_DECIMAL[match["decimal"]])
        if match["exponent"] is not None:
            exponent = Decimal(match["exponent"])
            if exponent != exponent.to_integral_value():
                raise QuantityError(f"{raw!r}: the exponent must be a whole number")
            return number.scaleb(int(exponent))
    except InvalidOperation as exc:
        raise QuantityError(f"{raw!r} is not a Kubernetes quantity") from exc
    return number


def whole_cpus(quantity: str) -> int:
    """CPUs a process may use for threads: the quantity rounded down, at least one."""
    return max(1, int(parse_quantity(quantity)))
