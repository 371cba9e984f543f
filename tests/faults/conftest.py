"""Fixtures of the fault-injection suite.

Sizes come from ``FAULTS_*`` environment variables (see :class:`faults.scenarios.Sizes`),
small by default so the whole suite takes a few minutes on two cores; for instance
``FAULTS_KILLS=20 FAULTS_KILL_JOBS=400 .venv/bin/pytest tests/faults -k kill_loop``.
``benchmarks/faults.py`` runs the same scenarios larger and prints their figures.

The Redis scenarios start private ``redis-server`` processes (AOF, ``appendfsync always``)
and are skipped only when ``redis-server`` is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from faults.scenarios import Sizes


@pytest.fixture
def sizes() -> Sizes:
    return Sizes.from_env()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The scenario's directory: store, ledger, logs, staging and containers."""
    return tmp_path


@pytest.fixture
def needs_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (./scripts/test installs it)")
