from __future__ import annotations

from decimal import Decimal

import pytest
from finetune_api.quantity import format_bytes, is_quantity, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", 2**30),
        ("512Mi", 512 * 2**20),
        ("1.5G", 1_500_000_000),
        ("500m", Decimal("0.5")),
        ("2", 2),
        ("1e3", 1000),
        ("0.5Ki", 512),
    ],
)
def test_parse(text: str, value: Decimal | int) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["16GB", "lots", "", "1.5.5Gi", "-1Gi", "Gi"])
def test_rejects_malformed(text: str) -> None:
    assert not is_quantity(text)
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_format_bytes_never_rounds_down() -> None:
    assert format_bytes(2**30) == "1Gi"
    assert format_bytes(3 * 2**29) == "1536Mi"
    assert format_bytes(parse_quantity("1.5G")) == "1431Mi"  # 1430.51… MiB rounded up
    assert parse_quantity(format_bytes(parse_quantity("1.5G"))) >= parse_quantity("1.5G")
