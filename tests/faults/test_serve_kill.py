"""SIGKILL of ``conveyor serve`` (the HTTP API and its worker, on SQLite) while clients upload
files and the worker pushes them into ``dir:`` containers, each kill landing while a push
runs; the server is started again at once. Every upload answered 202 ends pushed with the
bytes sent, duplicates stay within (kills x slots), interrupted pushes start again within
the lease plus :data:`~faults.scenarios.SERVE_RECOVERY_SLACK`, and nothing is left behind:
no staged or partial upload, no temporary file of a push."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.checks import broken
from faults.scenarios import Sizes, serve_kill


@pytest.mark.timeout(300)
def test_sigkill_of_serve_during_uploads(workdir: Path, sizes: Sizes) -> None:
    report = serve_kill(workdir, uploads=sizes.uploads, kills=sizes.serve_kills)
    problems = broken(report)
    assert not problems, "\n".join(problems) + report.explain()
