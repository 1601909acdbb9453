"""Quantities compare by value and reject nonsense with a clear message."""

import pytest

from controlplane.core.quantities import (
    QuantityError,
    cpu_millis,
    format_cpu,
    format_memory,
    memory_bytes,
    parse_quantity,
)


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("1", 1000),
        ("1000m", 1000),
        ("0.5", 500),
        ("1.5", 1500),
        ("250m", 250),
        ("0.1", 100),
        ("2e0", 2000),
        ("0.0001", 1),
    ],
)
def test_cpu_millis(text: str, millis: int) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", 2**30),
        ("1024Mi", 2**30),
        ("4G", 4 * 10**9),
        ("512Mi", 512 * 2**20),
        ("1k", 1000),
        ("1Ki", 1024),
        ("100", 100),
        ("1e3", 1000),
    ],
)
def test_memory_bytes(text: str, value: int) -> None:
    assert memory_bytes(text) == value


def test_equal_values_written_differently() -> None:
    assert parse_quantity("1") == parse_quantity("1000m")
    assert parse_quantity("1Gi") == parse_quantity("1024Mi")


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1.2.3", "1 Gi", "1gi", "Mi", "1e99"])
def test_rejects(bad: str) -> None:
    with pytest.raises(QuantityError, match=r"quantity|exponent"):
        parse_quantity(bad)


def test_formatting_round_trips() -> None:
    assert format_cpu(1500) == "1.5"
    assert format_cpu(250) == "250m"
    assert format_cpu(2000) == "2"
    assert format_memory(2**30) == "1Gi"
    assert cpu_millis(format_cpu(1234)) == 1234
