"""Fixtures of the hosts suite: a :class:`~hosts.harness.Site` per test, torn down (every
process, namespace and interface) whether the test passed or not.

The tests skip, with the reason, where network namespaces cannot be made (not Linux, not
root, no ``ip``, creation refused) or ``redis-server`` is missing; CI runs them as root.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hosts.harness import Site, unavailable

_reason: list[str | None] = []


@pytest.fixture
def netns() -> None:
    """Skip unless network namespaces can be made here (checked once per process)."""
    if not _reason:
        _reason.append(unavailable())
    if _reason[0] is not None:
        pytest.skip(_reason[0])
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (./scripts/test installs it)")


@pytest.fixture
def make_site(netns: None, tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """``make_site(hosts=N, lease=S)``: a site in the test's directory, closed at the end."""
    made: list[Site] = []

    def make(hosts: int, lease: float) -> Site:
        site = Site(tmp_path / f"site{len(made)}", hosts, lease)
        made.append(site)
        return site

    yield make
    for site in made:
        site.close()
