"""A registered job: the function, its options, and the checks made at enqueue time."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.context import JobContext
from conveyor.errors import ConfigurationError, InvalidArguments
from conveyor.job import Backoff, BackoffPolicy
from conveyor.serialization import NotSerializable, dumps
from conveyor.uploads import Upload

if TYPE_CHECKING:
    from datetime import datetime

    from conveyor.app import Conveyor
    from conveyor.handle import JobHandle

EXECUTORS = ("async", "thread", "process")
DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How a job runs: its queue, retries, timeout, backoff, executor and permanent errors."""

    queue: str = "default"
    retries: int = 3
    timeout: float | None = None
    backoff: BackoffPolicy = DEFAULT_BACKOFF
    executor: str = "async"
    permanent_errors: tuple[type[BaseException], ...] = ()
    #: the job owns the staged upload named by its id (removed once the job is final)
    staged: bool = False


def _parameters_of_type(fn: Callable[..., Any], kind: type) -> list[str]:
    """The names of the parameters annotated ``kind`` (also as text, e.g. in quotes)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to their text
        hints = {}
    found = []
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name, param.annotation)
        if hint is kind or (isinstance(hint, str) and hint.split(".")[-1] == kind.__name__):
            found.append(name)
    return found


def _context_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of the parameter annotated ``JobContext``, if there is one."""
    names = _parameters_of_type(fn, JobContext)
    return names[0] if names else None


def split_call(item: Sequence[Any] | Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """One bulk item: a list or tuple is positional arguments, a mapping is keyword ones."""
    if isinstance(item, Mapping):
        return [], dict(item)
    if isinstance(item, list | tuple):
        return list(item), {}
    raise InvalidArguments(
        f"bulk items are tuples of positional arguments or dicts of keyword arguments, "
        f"not {type(item).__name__}"
    )


class JobFunction:
    """What ``@app.job`` returns: call it to run the function now, ``.enqueue`` to run it later."""

    def __init__(
        self, app: Conveyor, fn: Callable[..., Any], name: str, options: JobOptions
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.context_parameter = _context_parameter(fn)
        #: parameters annotated ``Upload``: they receive the job's staged file
        self.upload_parameters = _parameters_of_type(fn, Upload)
        if len(self.upload_parameters) > 1:
            raise ConfigurationError(f"job {name!r}: at most one parameter can be an Upload")
        self.uses_staging = bool(self.upload_parameters) or options.staged
        params = [
            p for n, p in inspect.signature(fn).parameters.items() if n != self.context_parameter
        ]
        self.signature = inspect.Signature(params)
        self._fitting_shapes: set[object] = set()
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = fn.__module__
        self.__wrapped__ = fn
        if options.executor not in EXECUTORS:
            raise ConfigurationError(
                f"executor must be one of {', '.join(EXECUTORS)}, not {options.executor!r}"
            )
        if options.executor == "async" and not self.is_async:
            raise ConfigurationError(
                f"job {name!r}: the async executor needs a coroutine function (async def)"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<JobFunction {self.name} queue={self.options.queue}>"

    def check(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """Raise :class:`InvalidArguments` unless the call fits the signature and is JSON;
        return the arguments as JSON text."""
        # Binding depends only on how many positional and which keyword arguments there
        # are, so shapes that fitted once are remembered (bulk enqueues repeat them).
        shape = (len(args), *kwargs) if kwargs else len(args)
        if shape not in self._fitting_shapes:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidArguments(f"job {self.name!r}: {exc}") from None
            if len(self._fitting_shapes) < 64:
                self._fitting_shapes.add(shape)
        return self.check_json(self.name, args, kwargs)

    @staticmethod
    def check_json(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """Raise :class:`InvalidArguments` unless the arguments are strict JSON; return them
        as JSON text."""
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise InvalidArguments(f"job {name!r}: keyword arguments need string names")
        try:
            return dumps(list(args)), dumps(dict(kwargs))
        except NotSerializable as exc:
            raise InvalidArguments(
                f"job {name!r}: arguments must be JSON-serializable ({exc})"
            ) from None

    # -- enqueueing -----------------------------------------------------------------------------
    def enqueue(self, *args: Any, delay: float | None = None, at: datetime | None = None,
                **kwargs: Any) -> JobHandle:
        """Store a call of this job and return its handle. Blocks until it is durable."""
        return self.app.enqueue(self.name, *args, delay=delay, at=at, **kwargs)

    async def enqueue_async(self, *args: Any, delay: float | None = None,
                            at: datetime | None = None, **kwargs: Any) -> JobHandle:
        """Awaitable :meth:`enqueue`."""
        return await self.app.enqueue_async(self.name, *args, delay=delay, at=at, **kwargs)

    def enqueue_with(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
                     delay: float | None = None, at: datetime | None = None,
                     queue: str | None = None) -> JobHandle:
        """Enqueue with explicit ``args``/``kwargs`` (for parameters named ``delay`` or ``at``)
        and, optionally, another queue."""
        return self.app.enqueue_call(self.name, args, kwargs or {}, delay=delay, at=at,
                                     queue=queue)

    def enqueue_many(self, items: Sequence[Sequence[Any] | Mapping[str, Any]], *,
                     delay: float | None = None) -> list[JobHandle]:
        """Enqueue one job per item in one durable write (see :func:`split_call`)."""
        return self.app.enqueue_many(self.name, items, delay=delay)

    async def enqueue_many_async(self, items: Sequence[Sequence[Any] | Mapping[str, Any]], *,
                                 delay: float | None = None) -> list[JobHandle]:
        """Awaitable :meth:`enqueue_many`."""
        return await self.app.enqueue_many_async(self.name, items, delay=delay)
