"""Known jobs: the names and parameters of the jobs workers run, as they publish them.

A worker publishes one :class:`KnownJob` per registered job at start and again every minute,
so a producer without the job's code (the CLI without ``--app``, ``conveyor serve`` without
an app) can refuse a name no worker runs and check the arguments of one that some worker
does. Everything here is plain data: it goes to the store as JSON.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.errors import InvalidArguments
from conveyor.job import iso
from conveyor.limits import JobLimits, limits_from_dict
from conveyor.priority import MAX_PRIORITY, MIN_PRIORITY
from conveyor.signatures import misfit

if TYPE_CHECKING:
    from conveyor.functions import JobFunction

#: the kind names of :class:`inspect.Parameter`, as published
KINDS = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD", "VAR_POSITIONAL", "KEYWORD_ONLY",
         "VAR_KEYWORD")
#: longest job name, queue or parameter name accepted from the store
MAX_TEXT = 512
#: most parameters accepted from the store for one job
MAX_PARAMETERS = 256
#: a ``seen_at`` past this (the year 5138) is not a time
MAX_TIME = 1e11
_NO_DEFAULT_KINDS = ("VAR_POSITIONAL", "VAR_KEYWORD")


@dataclass(frozen=True, slots=True)
class KnownParameter:
    """One parameter of a published job: its name, its kind (an :class:`inspect.Parameter`
    kind name such as ``POSITIONAL_OR_KEYWORD``), whether it has a default, and whether it
    receives the job's uploaded file (an :class:`~conveyor.Upload`)."""

    name: str
    kind: str = "POSITIONAL_OR_KEYWORD"
    default: bool = False
    upload: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"name": self.name, "kind": self.kind, "default": self.default,
                "upload": self.upload}

    @classmethod
    def from_dict(cls, data: Any) -> KnownParameter:
        """Read one parameter back; ``ValueError`` if ``data`` is not one."""
        if not isinstance(data, Mapping):
            raise ValueError("a parameter is an object")
        name, kind = data.get("name"), data.get("kind", "POSITIONAL_OR_KEYWORD")
        if not isinstance(name, str) or not name.isidentifier() or len(name) > MAX_TEXT:
            raise ValueError(f"bad parameter name {name!r}")
        if kind not in KINDS:
            raise ValueError(f"bad parameter kind {kind!r}")
        default, upload = data.get("default", False), data.get("upload", False)
        if not isinstance(default, bool) or not isinstance(upload, bool):
            raise ValueError("default and upload are true or false")
        return cls(name, kind, default and kind not in _NO_DEFAULT_KINDS, upload)

    def describe(self) -> str:
        """The parameter as it would read in a signature (``*args``, ``x=…``)."""
        if self.kind == "VAR_POSITIONAL":
            return f"*{self.name}"
        if self.kind == "VAR_KEYWORD":
            return f"**{self.name}"
        return f"{self.name}=…" if self.default else self.name


@dataclass(frozen=True, slots=True)
class KnownJob:
    """A job as a worker published it: name, queue, executor, parameters (the JobContext
    one left out), whether it takes its file from ``POST /uploads`` (``staged``), when it was
    last published by the store's clock (``seen_at``) and by which worker."""

    name: str
    queue: str = "default"
    executor: str = "async"
    parameters: tuple[KnownParameter, ...] = ()
    staged: bool = False
    seen_at: float = 0.0
    worker_id: str | None = None
    #: the job's caps and rate limits (see :mod:`conveyor.limits`), if it has any
    limits: JobLimits | None = None
    #: the job's default priority (see :mod:`conveyor.priority`)
    priority: int = 0
    _signature: inspect.Signature | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, job_fn: JobFunction[..., Any]) -> KnownJob:
        """Describe a registered job (``seen_at`` is set by the store)."""
        uploads = set(job_fn.upload_parameters)
        params = tuple(
            KnownParameter(p.name, p.kind.name, p.default is not inspect.Parameter.empty,
                           p.name in uploads)
            for p in job_fn.signature.parameters.values()
        )
        return cls(job_fn.name, job_fn.options.queue, job_fn.options.executor, params,
                   job_fn.options.staged, limits=job_fn.options.limits,
                   priority=job_fn.options.priority)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the shape stored, printed by the CLI and served over HTTP)."""
        return {
            "name": self.name,
            "queue": self.queue,
            "executor": self.executor,
            "parameters": [p.to_dict() for p in self.parameters],
            "staged": self.staged,
            "seen_at": self.seen_at,
            "worker_id": self.worker_id,
            "limits": None if self.limits is None else self.limits.to_dict(),
            "priority": self.priority,
        }

    def to_display(self) -> dict[str, Any]:
        """:meth:`to_dict` with ``seen_at`` as ISO 8601 text and the call as a signature."""
        return {**self.to_dict(), "seen_at": iso(self.seen_at), "signature": self.signature_text}

    @classmethod
    def from_dict(cls, data: Any, seen_at: float | None = None) -> KnownJob:
        """Read a stored job back, with ``seen_at`` instead of the stored one if given;
        ``ValueError`` for anything that is not one (callers skip such records)."""
        if not isinstance(data, Mapping):
            raise ValueError("a known job is an object")
        name, queue = data.get("name"), data.get("queue", "default")
        executor = data.get("executor", "async")
        for label, text in (("name", name), ("queue", queue), ("executor", executor)):
            if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
                raise ValueError(f"bad {label} {text!r}")
        raw_params = data.get("parameters", [])
        if not isinstance(raw_params, list) or len(raw_params) > MAX_PARAMETERS:
            raise ValueError("parameters is a list")
        stamp = data.get("seen_at", 0.0) if seen_at is None else seen_at
        if isinstance(stamp, bool) or not isinstance(stamp, int | float) or \
                not 0 <= stamp < MAX_TIME:
            raise ValueError(f"bad seen_at {stamp!r}")
        worker = data.get("worker_id")
        if worker is not None and not isinstance(worker, str):
            raise ValueError("worker_id is text")
        params = tuple(KnownParameter.from_dict(p) for p in raw_params)
        priority = data.get("priority", 0)
        if (isinstance(priority, bool) or not isinstance(priority, int)
                or not MIN_PRIORITY <= priority <= MAX_PRIORITY):
            priority = 0  # an odd record is read as the default, never refused
        job = cls(str(name), str(queue), str(executor), params, data.get("staged") is True,
                  float(stamp), worker, limits_from_dict(data.get("limits")), priority)
        object.__setattr__(job, "_signature", job._build_signature())  # checks the order too
        return job

    # -- checking calls ---------------------------------------------------------------------
    def _build_signature(self) -> inspect.Signature:
        try:
            return inspect.Signature([
                inspect.Parameter(p.name, getattr(inspect.Parameter, p.kind),
                                  default=None if p.default else inspect.Parameter.empty)
                for p in self.parameters])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the parameters do not make a signature: {exc}") from None

    @property
    def signature(self) -> inspect.Signature:
        """The job's signature rebuilt from the published parameters (defaults are
        placeholders: only their presence is known)."""
        return self._signature if self._signature is not None else self._build_signature()

    @property
    def signature_text(self) -> str:
        """``name(a, b=…, *, c)``: the call as a reader would write it."""
        parts: list[str] = []
        star = False
        for p in self.parameters:
            if p.kind == "VAR_POSITIONAL":
                star = True
            elif p.kind == "KEYWORD_ONLY" and not star:
                parts.append("*")
                star = True
            parts.append(p.describe())
            if p.kind == "POSITIONAL_ONLY" and (
                    p is self.parameters[-1] or
                    self.parameters[self.parameters.index(p) + 1].kind != "POSITIONAL_ONLY"):
                parts.append("/")
        return f"{self.name}({', '.join(parts)})"

    @property
    def upload_parameter(self) -> str | None:
        """The parameter that receives the uploaded file, if any."""
        return next((p.name for p in self.parameters if p.upload), None)

    def check(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidArguments` unless the call fits the published parameters."""
        why = misfit(self.signature, args, kwargs)
        if why is not None:
            raise InvalidArguments(f"job {self.name!r}: {why} (published signature: "
                                   f"{self.signature_text})")


def read_known(raw: Any, seen_at: float | None = None) -> KnownJob | None:
    """A stored known job from its JSON text, or ``None`` when it is not one (a read path
    shows what it can and never fails on an odd record)."""
    from conveyor.serialization import loads

    try:
        data = loads(raw) if isinstance(raw, str | bytes) else raw
        return KnownJob.from_dict(data, seen_at)
    except Exception:
        return None
