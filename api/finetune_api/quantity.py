"""Kubernetes resource quantities ("500Mi", "2", "1.5G", "250m"): validation and arithmetic.

The operator raises a pod's memory after a host OOM kill, so it must read and write quantities exactly the
way the apiserver does, not with float guesses.
"""

from __future__ import annotations

import re
from decimal import Decimal

# The grammar the apiserver accepts (apimachinery resource.Quantity), as a regex the CRD can carry.
QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
# The same check in CEL (the CRD): apimachinery's grammar, which also allows a sign, less negative numbers.
QUANTITY_CEL = "isQuantity(self) && !self.startsWith('-')"
QUANTITY_MESSAGE = (
    "must be a Kubernetes quantity (examples: 512Mi, 2Gi, 1.5, 500m; 16GB is not one: write 16G or 16Gi)"
)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def is_quantity(text: str) -> bool:
    return bool(_QUANTITY_RE.match(text))


def parse_quantity(text: str | int | float) -> Decimal:
    """Return the quantity's value in base units (bytes for memory, cores for cpu)."""
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (examples: 512Mi, 2Gi, 1.5, 500m)")
    number, _, suffix = match.group(1), match.group(2), match.group(3) or ""
    value = Decimal(number)
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix in _DECIMAL:
        return value * _DECIMAL[suffix]
    return value * (Decimal(10) ** int(suffix[1:]))  # exponent form: 1e9


def format_bytes(value: Decimal | int) -> str:
    """Render a byte count in the largest exact binary unit (whole Mi at least, rounded up)."""
    count = int(Decimal(value).to_integral_value(rounding="ROUND_CEILING"))
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi"):
        unit = _BINARY[suffix]
        if count >= unit and count % unit == 0:
            return f"{count // unit}{suffix}"
    mebibytes = -(-count // _BINARY["Mi"])  # round up: a limit must never shrink below what was asked
    return f"{mebibytes}Mi"
