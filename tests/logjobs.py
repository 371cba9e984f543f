"""Jobs for tests/test_worker_logs.py and tests/test_cli_logging.py: ones that fail, retry,
die, time out, hang, or die with their worker.

``conveyor worker logjobs:app --url URL`` imports this module in a subprocess (``cli_env()``
puts tests/ on its path). The app's lease is short so that a worker killed with SIGKILL has
its jobs recovered within seconds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor import Conveyor, PermanentError, Retry

#: seconds a failed attempt of ``kaput`` waits before the next one
BACKOFF = 0.2


def register(app: Conveyor) -> Conveyor:
    """Register the jobs on ``app`` (the module's app, or a test's own client app)."""

    @app.job(retries=2, backoff=lambda attempt: BACKOFF)
    async def kaput(message: str) -> None:
        """Fails every time: two retries, then the dead set."""
        raise ValueError(message)

    @app.job(retries=3)
    async def refuse(message: str) -> None:
        """A permanent error: the dead set at once."""
        raise PermanentError(message)

    @app.job(retries=0, timeout=0.2)
    async def sluggish() -> None:
        """Runs past its timeout."""
        await asyncio.sleep(30)

    @app.job
    async def fine(x: int) -> int:
        """Succeeds."""
        return x * 2

    @app.job
    async def sleeper(marker: str, seconds: float) -> str:
        """Touches ``marker`` (so a test knows it runs), then sleeps."""
        Path(marker).touch()
        await asyncio.sleep(seconds)
        return "slept"

    @app.job
    async def again_once(marker: str) -> str:
        """Asks to run again (``Retry``) the first time, then succeeds."""
        path = Path(marker)
        if path.exists():
            return "again"
        path.touch()
        raise Retry(delay=0.1)

    @app.job
    async def hang_once(marker: str) -> str:
        """The first run touches ``marker`` and hangs (its worker is to be killed); later runs
        end at once."""
        path = Path(marker)
        if path.exists():
            return "second run"
        path.touch()
        await asyncio.sleep(120)
        return "never"

    return app


#: the app the tests name as ``logjobs:app``
app = register(Conveyor(lease=1.0))
#: the same jobs, sent to the dead set the first time their worker is lost
fragile = register(Conveyor(lease=1.0, max_recoveries=1))
