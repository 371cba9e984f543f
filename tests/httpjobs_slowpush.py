"""An app for tests/test_http_crash_recovery.py whose ``conveyor.push`` is slow.

``conveyor serve httpjobs_slowpush:app`` keeps this push job (``builtin.install`` leaves a
registered name alone): it waits ``SLOW_PUSH_SECONDS`` (default 3) before copying to the
``dir:`` target named by ``SLOW_PUSH_CONTAINERS``, and touches ``SLOW_PUSH_MARK`` (if set)
when it starts, so a test knows the push is under way. The lease is short, so a job whose
server was killed is recovered within seconds.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from conveyor import Conveyor, builtin
from conveyor.containers import open_target

app = Conveyor(url="sqlite:///httpjobs-unused.db", lease=2.0)


class SlowTarget:
    """A container target that sleeps before each push."""

    def __init__(self, spec: str, seconds: float, mark: str | None) -> None:
        self.inner = open_target(spec)
        self.seconds = seconds
        self.mark = mark

    async def push(self, container: str, source: Path, destination: str) -> None:
        if self.mark:
            Path(self.mark).touch()
        await asyncio.sleep(self.seconds)
        await self.inner.push(container, source, destination)

    def describe(self) -> str:
        return f"slow {self.inner.describe()}"


_spec = os.environ.get("SLOW_PUSH_CONTAINERS")
if _spec:
    builtin.install(app, SlowTarget(
        _spec, float(os.environ.get("SLOW_PUSH_SECONDS", "3")),
        os.environ.get("SLOW_PUSH_MARK")), push_backoff=0.2)
