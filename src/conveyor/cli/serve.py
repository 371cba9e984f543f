"""``conveyor serve [APP]``: the HTTP API and a worker pool in one process, on one event loop.

uvicorn (httptools, on uvloop) answers the API while a :class:`~conveyor.worker.pool.Worker`
runs the jobs of the app's queues and ``uploads``. The first SIGTERM or SIGINT stops
accepting connections, lets requests in flight finish, and stops the worker gracefully
(running jobs get ``--grace`` seconds, then go back to the queue), then exits 0; a second
signal exits at once with status 1, as ``conveyor worker`` does.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from the proxies named with
``--forwarded-allow-ips`` (or $CONVEYOR_FORWARDED_ALLOW_IPS): from them, the client address
(counted by the throttle of wrong tokens, logged) and the scheme (https makes the session
cookie ``Secure``) are the forwarded ones; from any other peer, both are the connection's own,
and the first request carrying either header is logged once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import serverlimits
from conveyor.backends.outage import opened, waits_out
from conveyor.cli.loading import (
    CLIError,
    add_store_location,
    positive_int,
    queue_spec,
    resolve_app,
    worker_queues,
)
from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.logs import duration, plural
from conveyor.serverlimits import ServerLimits
from conveyor.uploads import StagingArea

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from conveyor.app import Conveyor
    from conveyor.worker.pool import Worker

log = logging.getLogger("conveyor.serve")
UPLOAD_QUEUE = "uploads"
#: the environment variable read when ``--forwarded-allow-ips`` is not given
FORWARDED_ENV = "CONVEYOR_FORWARDED_ALLOW_IPS"


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def add_serve_parser(sub: Any) -> None:
    """Register ``conveyor serve`` and its options."""
    p = sub.add_parser("serve", help="run the HTTP API and a worker pool in one process")
    p.add_argument("app_spec", metavar="APP", nargs="?",
                   help="module:attribute of your app (default: only the built-in jobs)")
    add_store_location(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (8000)")
    p.add_argument("--containers",
                   help="where uploads are pushed: dir:PATH (PATH must exist; a container "
                   "NAME is the directory PATH/NAME), incus or incus:SOCKET "
                   "(default dir:./containers)")
    p.add_argument("--staging", help="directory uploads wait in (default: the app's)")
    p.add_argument("--max-upload-bytes", type=positive_int, default=1 << 30,
                   help="largest request body accepted (default 1 GiB)")
    tokens = p.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", metavar="PATH",
                        help="read the bearer token required by every route but /healthz "
                        "from PATH (one line); or set $CONVEYOR_TOKEN")
    tokens.add_argument("--token", help="the bearer token itself: every local user can read "
                        "it in the process list, so prefer --token-file or $CONVEYOR_TOKEN")
    p.add_argument("--max-wrong-tokens", type=int, default=10, metavar="N",
                   help="wrong tokens (bearer or login) from one client address within a "
                   "minute before its tokens get 429 for a growing time (default 10; 0: no "
                   "throttling, for a proxy in front that does it)")
    p.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="comma-separated addresses or networks (10.0.0.0/8) of the proxies "
                   "whose X-Forwarded-For (client address, for the throttle and the logs) and "
                   "X-Forwarded-Proto (https: Secure session cookie) are believed; * for "
                   "every peer (default: $CONVEYOR_FORWARDED_ALLOW_IPS, else none)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without a token")
    p.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                   help="a site (https://jobs.example.com) whose browser requests may change "
                   "things besides the request's own Host, for a proxy that rewrites Host; "
                   "repeatable")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="without a token: a host name to answer to besides the loopback "
                   "names (default: any name when listening beyond loopback); repeatable")
    p.add_argument("--no-worker", action="store_true", help="serve the API only")
    p.add_argument("--queues", type=queue_spec, metavar="QUEUE[:WEIGHT],...",
                   help="comma-separated queues the worker takes jobs from (default: the "
                   "app's queues and uploads), optionally weighted as for conveyor worker")
    p.add_argument("--strict", action="store_true",
                   help="drain the --queues in the order given, each before the next")
    p.add_argument("--min-workers", type=positive_int, default=1,
                   help="least concurrent jobs (default 1)")
    p.add_argument("--max-workers", type=positive_int, default=10,
                   help="most concurrent jobs (default 10)")
    p.add_argument("--access-log", action="store_true",
                   help="log every request (off by default: it costs throughput)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds running jobs get to finish on shutdown (default 30)")
    limits = p.add_argument_group("limits on clients")
    limits.add_argument("--header-timeout", type=_seconds, metavar="SECONDS",
                        default=serverlimits.HEADER_TIMEOUT,
                        help="seconds a client has to send a request's headers, from the "
                        "connection's opening or the first byte of the next request; then "
                        f"408 (default {serverlimits.HEADER_TIMEOUT:g})")
    limits.add_argument("--max-header-bytes", type=positive_int, metavar="BYTES",
                        default=serverlimits.MAX_HEADER_BYTES,
                        help="largest request line and headers; larger get 431 (default "
                        f"{serverlimits.MAX_HEADER_BYTES})")
    limits.add_argument("--body-timeout", type=_seconds, metavar="SECONDS",
                        default=serverlimits.BODY_TIMEOUT,
                        help="seconds a request body may send nothing before the request "
                        f"is aborted with 408 (default {serverlimits.BODY_TIMEOUT:g})")
    limits.add_argument("--keepalive-timeout", type=_seconds, metavar="SECONDS",
                        default=serverlimits.KEEPALIVE_TIMEOUT,
                        help="seconds an idle kept-alive connection is kept open (default "
                        f"{serverlimits.KEEPALIVE_TIMEOUT:g})")
    limits.add_argument("--max-connections", type=positive_int, metavar="N",
                        help="most open connections; past it a new one gets 503 at once "
                        f"(default {serverlimits.MAX_CONNECTIONS}, or the open-file limit "
                        f"minus {serverlimits.FD_RESERVE} if lower)")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it); one-line errors."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc}", code=1) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", code=1) from None
    return sock


def read_token(path: str) -> str:
    """The token in the file at ``path``: its one line, stripped; a :class:`CLIError` for a
    file that cannot be read, is empty or holds more than one line. A file that other users
    may read is used with a warning."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read(65536).strip()
            shared = os.fstat(file.fileno()).st_mode & 0o077
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CLIError(f"--token-file {path}: cannot read it: {reason}") from None
    if not token:
        raise CLIError(f"--token-file {path}: the file is empty")
    if any(c.isspace() for c in token):
        raise CLIError(f"--token-file {path}: a token is one line without spaces")
    if shared:
        log.warning("--token-file %s can be read by other users: chmod 600 it", path)
    return token


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token-file``, ``--token`` (with a warning), $CONVEYOR_TOKEN."""
    if args.token_file is not None:
        return read_token(args.token_file)
    if args.token:
        log.warning("--token is visible to every local user in the process list; use "
                    "--token-file PATH or CONVEYOR_TOKEN instead")
        return str(args.token)
    return os.environ.get("CONVEYOR_TOKEN") or None


def forwarded_allow_ips(args: argparse.Namespace) -> list[str]:
    """The proxies whose forwarded headers are believed, as given (``--forwarded-allow-ips``,
    else $CONVEYOR_FORWARDED_ALLOW_IPS), each address or network in its usual spelling;
    ``["*"]`` for every peer, ``[]`` for none. A :class:`CLIError` names one that is no IP
    address or network (a host name would never match a peer)."""
    source, text = "--forwarded-allow-ips", args.forwarded_allow_ips
    if text is None:
        source, text = FORWARDED_ENV, os.environ.get(FORWARDED_ENV, "")
    proxies: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item == "*":
            return ["*"]
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item.removeprefix("[").replace("]", ""),
                                           strict=False)
        except ValueError:
            raise CLIError(f"{source}: not an IP address or network: {item!r}") from None
        single = network.prefixlen == network.max_prefixlen
        proxies.append(str(network.network_address) if single else str(network))
    return proxies


def trusted_peers(proxies: list[str]) -> list[str]:
    """What uvicorn compares peers with: ``proxies``, and each IPv4 one also as the
    IPv4-mapped IPv6 address a dual-stack socket reports (``::ffff:127.0.0.1``)."""
    peers = list(proxies)
    for proxy in proxies:
        if proxy == "*":
            continue
        network = ipaddress.ip_network(proxy)
        if isinstance(network, ipaddress.IPv4Network):
            mapped = ipaddress.IPv6Address(f"::ffff:{network.network_address}")
            peers.append(str(ipaddress.IPv6Network((mapped, 96 + network.prefixlen))))
    return peers


def _prepare(args: argparse.Namespace) -> tuple[Conveyor, Starlette, str | None]:
    """The app with the built-in jobs installed, and its HTTP API."""
    from conveyor.containers import DEFAULT_TARGET, DirectoryTarget, IncusTarget, open_target
    from conveyor.http import create_app
    from conveyor.http.throttle import Throttle

    token = _token(args)
    if token is None and not is_loopback(args.host) and not args.insecure:
        raise CLIError(f"refusing to listen on {args.host} without a token: anyone who can "
                       "reach it could run jobs. Set --token-file (or CONVEYOR_TOKEN), or pass "
                       "--insecure if that is really meant")
    if args.min_workers > args.max_workers:
        raise CLIError("--min-workers must not exceed --max-workers")
    if args.max_wrong_tokens < 0:
        raise CLIError("--max-wrong-tokens must be 0 or more")
    app = resolve_app(args.app_spec, args.url, args.namespace)
    app.broker  # noqa: B018 -- made now: a store that cannot be (no such directory) stops here
    if args.staging:
        app.staging = StagingArea(args.staging)
    try:
        target = open_target(args.containers or DEFAULT_TARGET)
    except ConfigurationError as exc:
        raise CLIError(f"--containers: {exc}") from None
    if isinstance(target, DirectoryTarget):  # a missing root is a typo, or a step skipped
        try:
            target.check_root()
        except ConfigurationError as exc:
            if args.containers:
                raise CLIError(f"--containers {args.containers}: {exc}") from None
            log.warning("uploads have nowhere to go: %s, or pass --containers; until then "
                        "POST /uploads answers 404", exc)
    elif isinstance(target, IncusTarget) and not os.path.exists(target.socket_path):
        log.warning("no Incus socket at %s (is incus running?): pushes are retried until "
                    "it answers", target.socket_path)
    hosts = args.allow_host or (["*"] if not is_loopback(args.host) else [])
    api = create_app(app, token=token, max_upload_bytes=args.max_upload_bytes,
                     target=target, origins=args.allow_origin or (), hosts=hosts,
                     throttle=Throttle(limit=args.max_wrong_tokens))
    return app, api, token


class _Server:
    """uvicorn's server (httptools, JSON errors for malformed requests) without its own
    signal handling (``serve`` handles signals). Forwarded headers are believed from
    ``proxies`` only (see :func:`forwarded_allow_ips`); with none, they are ignored and the
    first request that carries one is logged."""

    def __init__(self, api: Starlette, grace: float, access_log: bool = False,
                 limits: ServerLimits | None = None, proxies: Sequence[str] = ()) -> None:
        import uvicorn

        from conveyor.http.origin import ForwardingIgnored
        from conveyor.http.protocol import protocol_class

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        protocol = protocol_class(limits or ServerLimits())
        # no WebSocket routes: an Upgrade request is answered as plain HTTP (an upgraded
        # connection would leave the protocol that counts connections)
        # forwarded_allow_ips is always given: uvicorn's default trusts loopback peers, and
        # its own $FORWARDED_ALLOW_IPS would be read otherwise
        app = api if proxies else ForwardingIgnored(api)
        config = uvicorn.Config(app, http=protocol, ws="none", lifespan="off", log_config=None,
                                timeout_graceful_shutdown=max(1, int(grace)),
                                server_header=False, access_log=access_log,
                                proxy_headers=bool(proxies),
                                forwarded_allow_ips=trusted_peers(list(proxies)))
        self.server = Server(config)

    def stop(self) -> None:
        """Stop accepting, finish the requests in flight, return from :meth:`run`."""
        self.server.should_exit = True

    async def run(self, sock: socket.socket) -> None:
        """Serve on ``sock`` until :meth:`stop`."""
        await self.server.serve(sockets=[sock])


def server_limits(args: argparse.Namespace) -> ServerLimits:
    """The limits on clients set by ``args``; a warning when the open-file limit leaves less
    room than ``--max-connections`` asks for."""
    room = serverlimits.default_max_connections()
    wanted = args.max_connections or room
    soft = serverlimits.open_file_limit()
    if soft is not None and wanted > soft - serverlimits.FD_RESERVE:
        log.warning("--max-connections %d: the open-file limit is %d, so connections past "
                    "about %d fail to be accepted; raise it (ulimit -n)", wanted, soft,
                    max(0, soft - serverlimits.FD_RESERVE))
    return ServerLimits(header_timeout=args.header_timeout,
                        max_header_bytes=args.max_header_bytes,
                        body_timeout=args.body_timeout,
                        keepalive_timeout=args.keepalive_timeout,
                        max_connections=wanted)


#: seconds between sweeps of the staging area while serving, and the least age of a staged
#: file they look at (a file is staged milliseconds before its job is enqueued)
SWEEP_INTERVAL = 600.0


async def _sweep_staging(app: Conveyor, interval: float = SWEEP_INTERVAL) -> None:
    """Now and then remove staged files whose job ended without removing them (through lease
    recovery, say, or a cancel on another machine). A failed sweep waits for the next."""
    from conveyor import builtin

    while True:
        await asyncio.sleep(interval)
        try:
            removed = await builtin.sweep(app, min_age=interval)
        except Exception as exc:
            log.warning("could not sweep the staging area: %s", exc)
            continue
        if removed:
            log.info("removed %s", plural(removed, "orphan staged file"))


async def _start_up(app: Conveyor, check: bool) -> None:
    """Once the store answers (waiting quietly while it is down): with ``check``, warn about
    store settings that lose jobs (a worker does it itself), then sweep the staging area.
    Raise what cannot pass by itself (a wrong password, a file that is no database)."""
    from conveyor import builtin

    pause = 0.5
    while True:
        try:
            await opened(app.broker)
            if check:
                await app.broker.check_settings()
            removed = await builtin.sweep(app)
        except Exception as trouble:
            if not waits_out(app.broker, trouble):
                raise
            await asyncio.sleep(pause)  # logged once per outage
            pause = min(pause * 2, 5.0)
            continue
        if removed:
            log.info("removed %s", plural(removed, "orphan staged file"))
        return


async def _serve(app: Conveyor, server: _Server, worker: Worker | None,
                 sock: socket.socket) -> int:
    from conveyor.worker import shutdown
    from conveyor.worker.supervisor import ShutdownSignals

    # serve at once, even while the store is down: /healthz says so (503) until it is back
    starting = asyncio.create_task(_start_up(app, check=worker is None), name="conveyor-start")

    def stop(name: str) -> None:
        if worker is None:
            log.info("%s: shutting down (again to exit at once)", name)
        else:
            log.info("%s: shutting down (running jobs get up to %s; again to exit at once)",
                     name, duration(worker.grace))
        server.stop()
        if worker is not None:
            worker.request_stop()

    reported: set[str] = set()  # errors said already, not to be said again at the end

    def started(task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:  # the store cannot be used as configured: no point serving
            log.error("cannot use the store: %s; shutting down", error)
            reported.add(str(error))
            server.stop()
            if worker is not None:
                worker.request_stop()

    starting.add_done_callback(started)
    signals = ShutdownSignals(stop)
    sweeper = asyncio.create_task(_sweep_staging(app), name="conveyor-sweep")
    tasks = {asyncio.create_task(server.run(sock), name="conveyor-http")}
    if worker is not None:
        tasks.add(asyncio.create_task(worker.run(), name="conveyor-worker"))
    host, port = sock.getsockname()[:2]
    log.info("serving http://%s:%d/ (dashboard at /, API docs at /docs)%s", host, port,
             f"; worker on queues {','.join(worker.queues)}" if worker else "; no worker")
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if signals.count == 0:  # one half ended by itself: take the other down too
            log.error("%s stopped on its own; shutting down", next(iter(done)).get_name())
            server.stop()
            if worker is not None:
                worker.request_stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        signals.remove()
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await shutdown.finish({starting})
        await app.broker.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed:
        if not isinstance(exc, ConveyorError):  # a fault of Conveyor's own: its traceback
            log.error("serve failed: %r", exc, exc_info=exc)
        elif str(exc) not in reported:  # a known error, one line, once
            log.error("serve failed: %s", exc)
    return 0 if signals.count and not failed else 1


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``conveyor serve``; returns the exit code."""
    try:
        import uvloop
    except ImportError:  # not installed on Windows: asyncio's own loop
        uvloop = None  # type: ignore[assignment]

    from conveyor.worker.heap import freeze_startup_heap
    from conveyor.worker.pool import Worker

    proxies = forwarded_allow_ips(args)
    app, api, _ = _prepare(args)
    sock = listen(args.host, args.port)
    worker = None
    if not args.no_worker:
        queues, weights = worker_queues(args)
        queues = queues or sorted(
            {fn.options.queue for fn in app.registry.values()} | {UPLOAD_QUEUE})
        worker = Worker(app, queues, weights=weights, min_workers=args.min_workers,
                        max_workers=args.max_workers, grace=args.grace, metrics=app.metrics)
    server = _Server(api, args.grace, args.access_log, server_limits(args), proxies)
    if proxies:
        log.info("trusting X-Forwarded-For and X-Forwarded-Proto from %s", ", ".join(proxies))
    loop_factory = None if uvloop is None else uvloop.new_event_loop
    freeze_startup_heap()
    with sock, asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(app, server, worker, sock))
