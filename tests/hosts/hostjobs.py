"""Jobs of the hosts suite: ``conveyor worker hosts.hostjobs:app`` in every host.

The fault suite's jobs and ledger (:mod:`faults.faultjobs`, configured from ``CONVEYOR_URL``,
``FAULTS_LEASE`` and ``FAULTS_LEDGER``), plus ``noop`` for throughput.
"""

from __future__ import annotations

from conveyor import Conveyor
from faults.faultjobs import make_app


def make_host_app(url: str | None = None, lease: float | None = None) -> Conveyor:
    """The fault jobs and ``noop``; unset arguments come from the environment."""
    app = make_app(url, lease)

    @app.job
    async def noop() -> None:
        """Does nothing: what a drain measures is the store and the worker."""

    return app


app = make_host_app()
