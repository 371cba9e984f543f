"""Finding the master through the sentinels, with a precise reason when none is found.

redis-py raises one ``MasterNotFoundError`` whether no sentinel answered, the sentinels
know no such service (a typo in the URL), or the master they know is down (a failover under
way). :class:`NoMaster` says which, in a few words (its ``store_reason``, what the broker
logs and raises as the reason of :class:`~conveyor.errors.StoreUnavailable`).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel

#: what the sentinels may fail with while they are asked: such a sentinel is skipped (redis-py
#: skips the first two; an address where another service, or a Redis that is no sentinel,
#: answers is skipped too, so one wrong address in the list does not refuse the store)
SKIPPED = (RedisConnectionError, RedisTimeoutError, InvalidResponse, ResponseError)


class NoMaster(MasterNotFoundError):
    """No sentinel named a master of the service that is up; ``store_reason`` says why."""

    def __init__(self, service: str, answered: int, known: bool, errors: list[str]) -> None:
        if not answered:
            self.store_reason = "no Redis Sentinel answers"
        elif not known:
            self.store_reason = f"Sentinel knows no master named {service!r}"
        else:
            self.store_reason = f"Sentinel reports the master of {service!r} down"
        details = f": {', '.join(errors)}" if errors else ""
        super().__init__(f"No master found for {service!r} ({self.store_reason}){details}")


def _judge(manager: Any, service: str, sentinel: Any, number: int, masters: Any,
           seen: dict[str, Any]) -> tuple[str, Any] | None:
    """The master's address if ``masters`` (a sentinel's answer) names one that is up."""
    seen["answered"] += 1
    state = masters.get(service)
    seen["known"] = seen["known"] or state is not None
    if not state or not manager.check_master_state(state, service):
        return None
    sentinels = manager.sentinels
    sentinels[0], sentinels[number] = sentinel, sentinels[0]  # asked first next time
    forced = manager._force_master_ip
    return (forced if forced is not None else state["ip"]), state["port"]


class FindingSentinel(Sentinel):
    """redis-py's blocking ``Sentinel`` raising :class:`NoMaster`."""

    def discover_master(self, service_name: str) -> tuple[str, Any]:
        seen: dict[str, Any] = {"answered": 0, "known": False}
        errors: list[str] = []
        for number, sentinel in enumerate(self.sentinels):
            try:
                masters = sentinel.sentinel_masters()
            except SKIPPED as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            found = _judge(self, service_name, sentinel, number, masters, seen)
            if found is not None:
                return found
        raise NoMaster(service_name, seen["answered"], seen["known"], errors)


class AsyncFindingSentinel(AsyncSentinel):
    """redis-py's asyncio ``Sentinel`` raising :class:`NoMaster`."""

    async def discover_master(self, service_name: str) -> tuple[str, Any]:
        seen: dict[str, Any] = {"answered": 0, "known": False}
        errors: list[str] = []
        for number, sentinel in enumerate(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except SKIPPED as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            found = _judge(self, service_name, sentinel, number, masters, seen)
            if found is not None:
                return found
        raise NoMaster(service_name, seen["answered"], seen["known"], errors)


__all__ = ["AsyncFindingSentinel", "FindingSentinel", "NoMaster"]
