"""Job ids take their random bits from a pool of ``os.urandom`` bytes: still unique and
sorted, and never shared with a forked child."""

from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest

import conveyor.ids as ids
from conveyor.ids import is_valid_id, new_id


def test_the_pool_gives_distinct_80_bit_values_across_refills() -> None:
    with ids._lock:
        values = [ids._random_bits() for _ in range(3 * ids._POOL_SIZE // 10)]
    assert len(set(values)) == len(values)
    assert all(0 <= v < 1 << 79 for v in values)  # the top bit is left for the increments
    assert any(v >= 1 << 78 for v in values)  # and the next one down is random


def test_ids_from_many_threads_are_unique_and_each_threads_sorted() -> None:
    made: dict[int, list[str]] = {}

    def make(n: int) -> None:
        made[n] = [new_id() for _ in range(5000)]

    threads = [threading.Thread(target=make, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for ids_made in made.values() for i in ids_made]
    assert len(set(every)) == len(every) == 20000
    assert all(ids_made == sorted(ids_made) for ids_made in made.values())
    assert all(is_valid_id(i) for i in every)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("hooks", [True, False], ids=["os.fork", "libc-fork"])
def test_a_forked_child_makes_other_ids_than_its_parent(hooks: bool) -> None:
    """Also when the fork runs no hook of os.register_at_fork (libc's fork, as uWSGI's
    master forks by default): each id checks the process it is made in."""
    now = time.time()
    new_id(now)  # the parent holds a last id and a partly used pool
    later = now + 0.002  # a new millisecond for both: each takes fresh random bits
    read, write = os.pipe()
    pid = os.fork() if hooks else int(ctypes.PyDLL(None).fork())
    if pid == 0:  # the child: its ids for the same millisecond as the parent's last, and later
        try:
            os.write(write, f"{new_id(now)} {new_id(later)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_same, child_later = pipe.read().split()
    os.waitpid(pid, 0)
    parent_same, parent_later = new_id(now), new_id(later)
    assert child_same != parent_same
    assert child_later != parent_later
    assert len({child_same, child_later, parent_same, parent_later}) == 4
