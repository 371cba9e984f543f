"""Redis: a single enqueue writes its stamps from TIME's digits rather than through a float
format; both give the same text, and the stored job keeps its created_at and run_at."""

from __future__ import annotations

import json
import random
import time

import redis

from conveyor.backends.redis import RedisBroker
from conveyor.backends.redis.client import BlockingScripts
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from redis_server import shared_redis_url

#: both ways of writing TIME's reply (seconds, microseconds) as a stamp: the one
#: enqueue_one.lua uses and fmt of the number (the other scripts' way); the pairs that differ
_COMPARE = """
local differ = {}
for n = 1, #ARGV, 2 do
  local s, u = ARGV[n], ARGV[n + 1]
  local digits = s .. '.' .. string.sub('00000' .. u, -6)
  local formatted = string.format('%.6f', tonumber(s) + tonumber(u) / 1000000)
  if digits ~= formatted then table.insert(differ, s .. ' ' .. u .. ' ' .. formatted) end
end
return differ
"""


def test_stamps_from_time_digits_match_the_formatted_number() -> None:
    rng = random.Random(7)
    seconds = [int(time.time()), 1_000_000_000, 2**31 - 1, 2**31, 2**32 - 1]
    seconds += [rng.randrange(1_000_000_000, 2**32) for _ in range(200)]
    micros = [0, 1, 9, 10, 99_999, 100_000, 499_999, 500_000, 500_001, 999_999]
    pairs = [(s, u) for s in seconds for u in micros]
    pairs += [(rng.choice(seconds), rng.randrange(1_000_000)) for _ in range(20_000)]
    client = redis.Redis.from_url(shared_redis_url())
    try:
        for start in range(0, len(pairs), 2000):
            argv = [str(v) for pair in pairs[start:start + 2000] for v in pair]
            assert client.eval(_COMPARE, 0, *argv) == []
    finally:
        client.close()


def test_a_single_enqueue_stores_its_stamps_from_the_server_clock() -> None:
    broker = RedisBroker(shared_redis_url(), namespace=f"t{new_id().lower()}")
    scripts = BlockingScripts(shared_redis_url())
    client = redis.Redis.from_url(shared_redis_url(), decode_responses=True)
    try:
        now = time.time()
        for delay in (0.0, 30.0):
            job = JobRecord(id=new_id(), name="n", queue="default", state=JobState.QUEUED,
                            args=[], kwargs={}, created_at=now, run_at=now + delay)
            script, keys, argv, _ = broker._enqueue_call([([job], {})])
            assert script == "enqueue_one"
            before = float(client.time()[0])
            assert scripts.call(script, keys, argv) == "ok"
            text = client.hget(broker.keys.jobs, job.id)
            assert isinstance(text, str)
            stored = json.loads(text)
            for field in ("created_at", "run_at"):  # six decimals, as fmt writes them
                assert len(text.split(f'"{field}":')[1].split(",")[0].rstrip("}")
                           .split(".")[1]) == 6
            assert before <= stored["created_at"] <= before + 5
            assert abs(stored["run_at"] - stored["created_at"] - delay) < 1e-5
            state = "scheduled" if delay else "queued"
            assert client.hget(broker.keys.field("state"), job.id) == state
    finally:
        scripts.close()
        client.close()
