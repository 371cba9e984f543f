"""The Redis backend, for workers on many machines (``pip install 'conveyor[redis]'``)."""

from conveyor.backends.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
