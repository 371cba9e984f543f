"""One outage, one log line: a call that began before the store answered again and fails
after (a connection left hanging by a cut network, timing out after the heal) is not logged
as a new outage; a call begun after it is. (Seen with several connections per worker in
``test_redis_cut``; this pins the rule without a network.)"""

from __future__ import annotations

import logging
import time

import pytest

from conveyor.backends.outage import Outage
from conveyor.errors import StoreUnavailable


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "conveyor.store" and r.levelno == logging.WARNING]


def test_late_failure_of_a_call_sent_during_the_outage_is_not_a_new_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.store")
    outage = Outage("redis://10.0.0.1:6379/0")
    hanging = time.monotonic()  # a call sent while the store is unreachable
    outage.trouble("Redis timed out", "Timeout reading", sent=hanging)
    assert outage.down and len(warnings(caplog)) == 1
    outage.recovered()  # another call got an answer
    assert not outage.down
    outage.trouble("Redis timed out", "Timeout connecting to server", sent=hanging)
    assert not outage.down and len(warnings(caplog)) == 1, warnings(caplog)
    # nor is a call given up after its retry window whose last try began before
    outage.note(StoreUnavailable("redis://10.0.0.1:6379/0", "Redis timed out", hanging))
    assert not outage.down and len(warnings(caplog)) == 1, warnings(caplog)
    # a call sent after the store answered again that fails is a new outage
    outage.trouble("Redis is unreachable", "Connection refused", sent=time.monotonic())
    assert outage.down and len(warnings(caplog)) == 2
    # so is trouble whose call time is not known (a worker noting an error it was given)
    outage.recovered()
    outage.trouble("Redis is unreachable")
    assert outage.down and len(warnings(caplog)) == 3
