"""Throughput of 1, 2 and 3 worker hosts against one Redis (see :mod:`hosts.throughput`):
the figures are printed; the test asserts only that every job of every drain succeeded.
``HOSTS_JOBS`` sets the backlog (20,000 by default); ``benchmarks/hosts.py`` runs more."""

from __future__ import annotations

import os
from collections.abc import Callable

from faults.scenarios import LEASE
from hosts.harness import Site
from hosts.throughput import check, drain, summary

JOBS = int(os.environ.get("HOSTS_JOBS", "20000"))


def test_drain_with_one_two_and_three_hosts(make_site: Callable[..., Site]) -> None:
    site = make_site(3, LEASE)
    drains = [drain(site, hosts, JOBS) for hosts in (1, 2, 3)]
    print(f"\n{summary(drains)}")
    wrong = {d.hosts: check(d) for d in drains if check(d)}
    assert not wrong, f"{wrong}\n{summary(drains)}"
