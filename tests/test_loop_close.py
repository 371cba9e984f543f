"""Redis: the connections an event loop made are closed when that loop shuts down
(``asyncio.run``'s end, uvloop's too), so an app used from ``asyncio.run`` and then closed
leaves no connection open at the server and no ``ResourceWarning``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from redis_server import RedisServer

SCRIPT = textwrap.dedent("""
    import asyncio, gc, sys
    import redis
    from conveyor import Conveyor

    url, runner = sys.argv[1], sys.argv[2]
    probe = redis.Redis.from_url(url)
    app = Conveyor(url)

    @app.job
    async def noop(n: int) -> None: ...

    async def main() -> int:
        for n in range(3):  # awaited alone: the loop's script link
            await noop.enqueue_async(n)
        await asyncio.gather(*(noop.enqueue_async(n) for n in range(20)))  # coalesced
        await app.queue_settings_async()  # a read through the loop's redis-py client
        return int(probe.info("clients")["connected_clients"])

    if runner == "uvloop":
        import uvloop
        during = uvloop.run(main())
    else:
        during = asyncio.run(main())
    gc.collect()
    after = int(probe.info("clients")["connected_clients"])
    noop.enqueue(0)  # the blocking path still works after the loop is gone
    app.close()
    gc.collect()
    print(during, after)
""")


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_a_loops_connections_close_with_the_loop(server: RedisServer, runner: str) -> None:
    done = subprocess.run([sys.executable, "-X", "dev", "-c", SCRIPT, server.url, runner],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    during, after = (int(n) for n in done.stdout.split())
    # during: the probe and the loop's connections (at least its client's and its link's)
    assert during >= 3
    assert after == 1, (during, after)  # the probe alone
    assert "ResourceWarning" not in done.stderr and "unclosed" not in done.stderr, done.stderr
