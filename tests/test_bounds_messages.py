"""encode_value's refusals say the same whichever check finds the value too deep."""

from __future__ import annotations

import sys
from collections.abc import Callable
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


def at_depth(frames_left: int, then: Callable[[], Any]) -> Any:
    """``then()`` called with about ``frames_left`` frames left before the recursion limit."""
    depth = 1
    while sys._getframe(depth - 1).f_back is not None:
        depth += 1

    def down(n: int) -> Any:
        return down(n - 1) if n > 0 else then()

    return down(sys.getrecursionlimit() - depth - frames_left)


def test_a_shallow_value_encoded_on_a_nearly_spent_stack_is_not_called_too_deep() -> None:
    """The caller's recursion, not the value, ran out of room: the RecursionError goes
    through as it is instead of a refusal that blames the value's nesting."""
    value = nested(40)  # within the bound, but more levels than the frames left
    assert encode_value(value) == "[" * 40 + "1" + "]" * 40
    with pytest.raises(RecursionError):
        at_depth(20, lambda: encode_value(value, "the result"))
    with pytest.raises(NotSerializable, match="deeper than 64 levels"):  # still told apart
        at_depth(20, lambda: encode_value(nested(MAX_DEPTH + 1), "the result"))
