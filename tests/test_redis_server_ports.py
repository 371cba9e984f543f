"""The tests' own ``redis-server`` helper: a server whose chosen port another process took
first (two test processes handed the same free port) starts on another one; a port the
caller gave is kept, and its loss is an error; a restart keeps the port."""

from __future__ import annotations

import pytest
import redis

from redis_server import PortTaken, RedisServer


def _pid(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as plain:
        return int(plain.info("server")["process_id"])


def test_a_port_taken_first_moves_a_server_whose_port_was_chosen() -> None:
    other = RedisServer().start()
    moved = RedisServer()
    try:
        moved.port = other.port  # as if free_port had handed both processes the same port
        moved.start()
        assert moved.port != other.port
        assert moved.process is not None and _pid(moved) == moved.process.pid
        port = moved.port
        moved.restart()
        assert moved.port == port  # a restart keeps the port its clients know
    finally:
        moved.remove()
        other.remove()


def test_a_port_given_by_the_caller_is_kept_and_its_loss_is_an_error() -> None:
    other = RedisServer().start()
    given = RedisServer(port=other.port)
    try:
        with pytest.raises(PortTaken):
            given.start()
        assert given.port == other.port
    finally:
        given.remove()
        other.remove()
