"""A registered job: the function, its options, and the checks made at enqueue time."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    Unpack,
    overload,
)

from conveyor.bounds import encode_value
from conveyor.context import JobContext
from conveyor.errors import ConfigurationError, InvalidArguments
from conveyor.job import Backoff, BackoffPolicy, JobRecord
from conveyor.limits import JobLimits
from conveyor.options import EnqueueKwargs, EnqueueOptions
from conveyor.serialization import NotSerializable
from conveyor.signatures import misfit
from conveyor.uploads import Upload

if TYPE_CHECKING:
    from pathlib import Path

    from conveyor.app import Conveyor
    from conveyor.handle import JobHandle

P = ParamSpec("P")
R = TypeVar("R")
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
    #: each call's unique key is derived from the name and the canonical JSON of its
    #: arguments (see ``EnqueueOptions.unique_key``)
    unique: bool = False
    #: each call's priority unless the enqueue gives one (-10 .. 10, higher runs sooner)
    priority: int = 0
    #: caps on running attempts and rate limits, per name and per group (None: none)
    limits: JobLimits | None = None


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


@dataclass(frozen=True, slots=True)
class CallBinding:
    """How a stored call becomes the arguments of a job function: the one binding that every
    executor (async, thread and the process child) uses.

    The stored arguments fit the signature without the ``JobContext`` parameter (that is what
    :meth:`JobFunction.check` binds at enqueue time); an ``Upload`` parameter is stored as the
    JSON of :meth:`Upload.describe`.
    """

    #: the parameter annotated ``JobContext``, if any
    context_parameter: str | None = None
    #: its index among the positional parameters, None if it is keyword-only
    context_position: int | None = None
    #: the parameters annotated ``Upload``, with their index among the positional parameters
    #: of the signature without the context (None if keyword-only)
    upload_parameters: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> CallBinding:
        """The binding of ``fn``, read from its signature and annotations."""
        context = _context_parameter(fn)
        uploads = _parameters_of_type(fn, Upload)
        params = list(inspect.signature(fn).parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

        def position(name: str, among: list[inspect.Parameter]) -> int | None:
            for index, param in enumerate(among):
                if param.name == name:
                    return index if param.kind in positional else None
            return None

        rest = [p for p in params if p.name != context]
        return cls(context, position(context, params) if context else None,
                   tuple((name, position(name, rest)) for name in uploads))

    def arguments(self, record: JobRecord, context: JobContext | None,
                  staged: Path | None) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments to call the function with: the record's,
        with each ``Upload`` parameter rebuilt from its stored description and the file at
        ``staged``, and ``context`` passed to the ``JobContext`` parameter."""
        args: list[Any] = record.args
        kwargs: dict[str, Any] = record.kwargs
        if staged is not None:
            for name, index in self.upload_parameters:
                if index is not None and index < len(args):
                    if isinstance(args[index], dict):
                        args = [*args[:index], Upload.from_json(args[index], staged),
                                *args[index + 1:]]
                elif isinstance(kwargs.get(name), dict):
                    kwargs = {**kwargs, name: Upload.from_json(kwargs[name], staged)}
        if self.context_parameter is not None and context is not None:
            index = self.context_position
            if index is not None and index <= len(args):  # the arguments after it are positional
                args = [*args[:index], context, *args[index:]]
            else:
                kwargs = {**kwargs, self.context_parameter: context}
        return args, kwargs


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


class JobFunction(Generic[P, R]):
    """What ``@app.job`` returns: call it to run the function now, ``.enqueue`` to run it later.

    It is generic in the job's parameters (without a leading ``JobContext``) and its result
    (awaited, for ``async def``), so a type checker checks ``fn.enqueue(...)`` against the
    function and types ``handle.result()``.
    """

    def __init__(
        self, app: Conveyor, fn: Callable[..., Any], name: str, options: JobOptions
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        #: how a stored call becomes the function's arguments (see :class:`CallBinding`)
        self.binding = CallBinding.of(fn)
        self.context_parameter = self.binding.context_parameter
        #: parameters annotated ``Upload``: they receive the job's staged file
        self.upload_parameters = [name for name, _ in self.binding.upload_parameters]
        #: parameters annotated ``str``: an HTTP query value for them is never JSON-decoded
        self.text_parameters = frozenset(_parameters_of_type(fn, str))
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

    def staged_path(self, job_id: str) -> Path | None:
        """Where the uploaded file of job ``job_id`` is staged, if this job takes one."""
        return self.app.staging.path_of(job_id) if self.upload_parameters else None

    def call_arguments(self, ctx: JobContext) -> tuple[list[Any], dict[str, Any]]:
        """The arguments of the attempt ``ctx`` runs (see :meth:`CallBinding.arguments`)."""
        return self.binding.arguments(ctx.record, ctx, self.staged_path(ctx.id))

    def __repr__(self) -> str:
        return f"<JobFunction {self.name} queue={self.options.queue}>"

    def check(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """Raise :class:`InvalidArguments` unless the call fits the signature and is JSON;
        return the arguments as JSON text."""
        # Binding depends only on how many positional and which keyword arguments there
        # are, so shapes that fitted once are remembered (bulk enqueues repeat them).
        shape = (len(args), *kwargs) if kwargs else len(args)
        if shape not in self._fitting_shapes:
            why = misfit(self.signature, args, kwargs)
            if why is not None:
                raise InvalidArguments(f"job {self.name!r}: {why}")
            if len(self._fitting_shapes) < 64:
                self._fitting_shapes.add(shape)
        if not kwargs and type(kwargs) is dict and type(args) is tuple:  # the commonest call
            try:  # (as _encoded_arguments, one call shorter)
                return encode_value(args, "an argument", wrapped=True), "{}"
            except NotSerializable as exc:
                raise _not_json(self.name, exc) from None
        return self.check_json(self.name, args, kwargs)

    @staticmethod
    def check_json(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """Raise :class:`InvalidArguments` unless the arguments are strict JSON; return them
        as JSON text."""
        # the commonest call: no keywords (a dict is told apart first: isinstance of an
        # abstract class costs more than encoding a few arguments)
        if not kwargs and (type(kwargs) is dict or isinstance(kwargs, Mapping)):
            return _encoded_arguments(name, args), "{}"
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise InvalidArguments(f"job {name!r}: keyword arguments need string names")
        try:
            return (_encoded_arguments(name, args),
                    encode_value(dict(kwargs), "an argument", wrapped=True))
        except NotSerializable as exc:
            raise _not_json(name, exc) from None

    # -- enqueueing -----------------------------------------------------------------------------
    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Store a call of this job and return its handle. Blocks until it is durable.

        Every argument goes to the job; per-call options go through :meth:`enqueue_with`."""
        return self.app.enqueue_call(self.name, args, kwargs)

    def enqueue_async(self, *args: P.args,
                      **kwargs: P.kwargs) -> Coroutine[Any, Any, JobHandle[R]]:
        """Awaitable :meth:`enqueue`: the coroutine of the app's enqueue itself (a layer of
        coroutine less on the path of every awaited call)."""
        return self.app.enqueue_call_async(self.name, args, kwargs)

    def enqueue_with(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                     options: EnqueueOptions | None = None,
                     **given: Unpack[EnqueueKwargs]) -> JobHandle[R]:
        """Enqueue with explicit ``args``/``kwargs`` and per-call options (see
        :meth:`Conveyor.enqueue_call`): ``delay``, ``at``, ``queue``, ``job_id``,
        ``unique_key``, ``unique_for``, ``on_conflict``."""
        return self.app.enqueue_call(self.name, args, kwargs or {}, options, **given)

    async def enqueue_with_async(self, args: Sequence[Any] = (),
                                 kwargs: Mapping[str, Any] | None = None,
                                 options: EnqueueOptions | None = None,
                                 **given: Unpack[EnqueueKwargs]) -> JobHandle[R]:
        """Awaitable :meth:`enqueue_with`."""
        return await self.app.enqueue_call_async(self.name, args, kwargs or {}, options,
                                                 **given)

    def enqueue_many(self, items: Sequence[Sequence[Any] | Mapping[str, Any]], *,
                     job_ids: Sequence[str] | None = None,
                     **given: Unpack[EnqueueKwargs]) -> list[JobHandle[R]]:
        """Enqueue one job per item in one durable write (see :func:`split_call`); the
        options apply to every item, ``job_ids`` names them."""
        return self.app.enqueue_many(self.name, items, job_ids=job_ids, **given)

    async def enqueue_many_async(self, items: Sequence[Sequence[Any] | Mapping[str, Any]], *,
                                 job_ids: Sequence[str] | None = None,
                                 **given: Unpack[EnqueueKwargs]) -> list[JobHandle[R]]:
        """Awaitable :meth:`enqueue_many`."""
        return await self.app.enqueue_many_async(self.name, items, job_ids=job_ids, **given)


def _encoded_arguments(name: str, args: Sequence[Any]) -> str:
    """The positional arguments of a call as a JSON array (a list or tuple as it is, any
    other sequence copied), checked by :func:`encode_value`."""
    try:
        return encode_value(args if type(args) is list or type(args) is tuple else list(args),
                            "an argument", wrapped=True)
    except NotSerializable as exc:
        raise _not_json(name, exc) from None


def _not_json(name: str, exc: NotSerializable) -> InvalidArguments:
    return InvalidArguments(f"job {name!r}: arguments must be JSON-serializable ({exc})")


class JobDecorator(Protocol):
    """What ``@app.job(...)`` with options returns: it registers a function and types the
    :class:`JobFunction` from its signature (a leading ``JobContext`` parameter is not the
    caller's to give; an ``async def`` job's result is what it returns, awaited)."""

    @overload
    def __call__(
        self, fn: Callable[Concatenate[JobContext, P], Awaitable[R]], /
    ) -> JobFunction[P, R]: ...

    @overload
    def __call__(self, fn: Callable[Concatenate[JobContext, P], R], /) -> JobFunction[P, R]: ...

    @overload
    def __call__(
        self, fn: Callable[P, Awaitable[R]], /
    ) -> JobFunction[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> JobFunction[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> JobFunction[..., Any]: ...
