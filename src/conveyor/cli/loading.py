"""Finding the app: ``module:attribute`` specs and the ``--url`` fallbacks."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from conveyor.app import DEFAULT_URL, Conveyor
from conveyor.errors import ConfigurationError, InvalidArguments
from conveyor.priority import QueueWeights, parse_priority, parse_queues, weighing
from conveyor.urls import redact_url


def store_url(text: str) -> str:
    """argparse type: a store URL, not empty (an empty one would fall back unseen)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty store URL; leave --url out for the default")
    return text


def add_store_location(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--namespace``, as every command that opens a store takes them."""
    parser.add_argument("--url", type=store_url,
                        help="store URL (default: $CONVEYOR_URL, then the APP's URL, then "
                        "sqlite:///conveyor.db)")
    parser.add_argument("--namespace", help="namespace inside the store (default: conveyor)")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def priority_arg(text: str) -> int:
    """argparse type: a priority, a whole number from -10 to 10."""
    try:
        return parse_priority(text)
    except InvalidArguments as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def queue_spec(text: str) -> tuple[list[str], dict[str, int] | None]:
    """argparse type: comma-separated queue names, each with an optional ``:WEIGHT``."""
    try:
        return parse_queues(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def worker_queues(args: argparse.Namespace) -> tuple[list[str] | None, QueueWeights | None]:
    """The queues of ``--queues`` (None: the app's) and how claims weigh them (``--strict``
    and weights)."""
    if args.queues is None:
        if args.strict:
            raise CLIError("--strict needs --queues, in the order to drain them")
        return None, None
    names, weights = args.queues
    try:
        return names, weighing(names, weights, args.strict)
    except ConfigurationError as exc:
        raise CLIError(f"--strict: {exc}") from None


class CLIError(Exception):
    """A problem to report in one line, exiting with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load_app(spec: str) -> Conveyor:
    """Import ``module:attribute`` (the current directory importable) and return the app."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"APP must look like module:attribute (as with uvicorn), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"cannot import {module_name!r}: {exc}") from None
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CLIError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, Conveyor):
        raise CLIError(f"{spec} is a {type(target).__name__}, not a Conveyor app")
    return target


def resolve_app(spec: str | None, url: str | None, namespace: str | None) -> Conveyor:
    """The app to work with: ``--url``, then ``CONVEYOR_URL``, then the APP's own URL."""
    chosen = url or os.environ.get("CONVEYOR_URL")
    if spec:
        app = load_app(spec)
        if not url and app.url.lower().startswith("memory:"):
            chosen = None  # as in Conveyor(): CONVEYOR_URL does not override a test's store
        if chosen:
            app.use_url(chosen)
        if namespace:
            app.namespace = namespace
    else:
        app = Conveyor(namespace=namespace or "conveyor")
        app.use_url(chosen or DEFAULT_URL)  # --url beats CONVEYOR_URL, which Conveyor() reads
    if app.url.lower().startswith("memory:"):
        raise CLIError(f"{redact_url(app.url)} is a store inside one process (for tests): a "
                       "command cannot share it with workers or other commands; use "
                       "sqlite:///PATH or redis://HOST")
    return app
