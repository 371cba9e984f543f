"""encode_value's refusals say the same whichever check finds the value too deep."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.bounds import MAX_DEPTH, encode_value
from conveyor.serialization import NotSerializable


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])  # the level walk; recursion
def test_too_deep_values_are_refused_with_the_same_message(depth: int) -> None:
    with pytest.raises(NotSerializable) as refused:
        encode_value(nested(depth), "the result")
    assert str(refused.value) == \
        f"the result nests arrays and objects deeper than {MAX_DEPTH} levels"
    with pytest.raises(NotSerializable) as refused:
        encode_value([nested(depth)], "the arguments", 3, wrapped=True)
    assert str(refused.value) == "the arguments nests arrays and objects deeper than 3 levels"


def test_values_within_the_bound_are_encoded() -> None:
    assert encode_value(nested(MAX_DEPTH)) == "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH
    assert encode_value([nested(3)], wrapped=True, max_depth=3) == "[[[[1]]]]"
