"""redis-py clients made cheaper for the hot path.

* :func:`pack_with_hiredis`: redis-py's asyncio connections pack commands in Python, which
  for a settle or claim of small jobs costs more than the rest of the client's work on
  them; hiredis packs them in C (the blocking client already does).
* :class:`BlockingScripts`: the blocking enqueue (a web view calling ``enqueue``) runs its
  script on a connection of its own, without the per-command bookkeeping of redis-py's
  client and pool (a readiness poll of the socket, retry and metrics wrappers), which cost
  about as much as the script itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import redis as syncredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.backends.redis.scripts import source
from conveyor.logs import PACKING_LOGGER

if TYPE_CHECKING:
    from conveyor.backends.redis.replicas import Wait

_pack: Callable[[tuple[Any, ...]], bytes] | None
Reader: Any
try:
    from hiredis import Reader
    from hiredis import pack_command as _pack
except ImportError:  # hiredis>=2.2.1 comes with the redis extra; installed by hand, it may not
    _pack = Reader = None
try:
    from redis._parsers.base import BaseParser

    _error_of: Callable[[str], Exception] = BaseParser.parse_error
except ImportError:  # redis-py's own mapping of error replies to classes moved: keep its base
    _error_of = ResponseError

log = logging.getLogger("conveyor.redis")


def pack_with_hiredis(client: Any) -> None:
    """Give the connections of ``client`` (a redis-py asyncio client) Conveyor's class (see
    :func:`connection_class`); without hiredis, say so once (commands are then packed, more
    slowly, in Python)."""
    if _pack is None:
        _say_packing_is_slow()
    pool = client.connection_pool
    pool.connection_class = connection_class(pool.connection_class)


@cache
def _say_packing_is_slow() -> None:
    logging.getLogger(PACKING_LOGGER).warning(
        "hiredis>=2.2.1 is not installed: Redis commands are packed in Python, which is "
        "slower (pip install 'conveyor[redis]')")


def _packed(args: tuple[Any, ...]) -> list[bytes] | None:
    """``args`` packed by hiredis in one call; None without hiredis, or for a value it cannot
    pack (redis-py's own packing then says which)."""
    if _pack is None:
        return None
    if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD" and the like
        args = (*args[0].split(), *args[1:])
    try:
        return [_pack(args)]
    except TypeError:
        return None


@cache
def connection_class(base: type) -> type:
    """``base`` (a redis-py asyncio connection class) whose write on a connection closed
    under it raises ``ConnectionError`` and, with hiredis, whose commands hiredis packs."""

    class Guarded(base):  # type: ignore[misc]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            try:
                await super().send_packed_command(command, check_health)
            except (AttributeError, TypeError) as exc:
                # a connection closed under the write: redis-py 8.1 lets the transport's
                # own error through (redis-py issue 4287) where it means a lost connection
                raise RedisConnectionError(f"the connection closed while writing ({exc})") \
                    from exc

    chosen: type = Guarded
    if _pack is not None:
        class HiredisPacking(Guarded):
            def pack_command(self, *args: Any) -> list[bytes]:
                return _packed(args) or list(super().pack_command(*args))

        chosen = HiredisPacking
    chosen.__name__ = chosen.__qualname__ = f"{chosen.__name__}{base.__name__}"
    return chosen


#: seconds a connection may sit idle before it is checked on reuse
IDLE_CHECK = 1.0
#: errors that mean the connection is gone
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
#: idle connections kept (one per thread that enqueues at the same time, up to this)
MAX_IDLE = 64
#: seconds a call waits for its reply spinning before it sleeps for it (see :class:`Spin`);
#: a loopback round trip of an enqueue takes about 60 µs
SPIN_FOR = 0.0003
#: seconds an awaited call spinning holds its event loop at most before it lets the loop's
#: other tasks run (see :meth:`AsyncScriptLink._spun`)
SPIN_SLICE = 0.0001
#: seconds an awaited call's last try waits for its reply at least, however close its
#: caller's deadline (see :meth:`AsyncScriptLink.call`)
LAST_TRY = 0.1
#: spins in a row that run out before a connection stops spinning for :data:`SPIN_REST` calls
SPIN_MISSES = 4
SPIN_REST = 256
#: packed script heads kept (one per script and keys: per queue for the enqueue scripts)
MAX_HEADS = 256
#: the reason given for a server that is a read-only replica (once a master, or a master
#: demoted under its clients)
READ_ONLY = "Redis is a read-only replica"
#: how text Redis holds that is not UTF-8 is read (and a str UTF-8 cannot encode is
#: written): as backslash escapes, so that no stored value, however odd, breaks a read
TEXT_ERRORS = "backslashreplace"


class _Link:
    """One connection of :class:`BlockingScripts`: the redis-py connection (it connects,
    authenticates, finds a Sentinel's master, sends the rarer commands) and, with hiredis,
    its socket and a reader of its own, on which the common call (one EVALSHA) is sent
    in one write and its reply read without redis-py's per-command wrappers."""

    __slots__ = ("conn", "reader", "sock", "spin", "spins")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        sock = getattr(conn, "_sock", None)
        encoder = getattr(conn, "encoder", None)
        self.sock: Any = None
        self.reader: Any = None
        #: whether a reply may be read by spinning: a plain socket (not TLS) whose descriptor
        #: does not block (redis-py's sockets with a timeout), on a POSIX system
        self.spins = False
        self.spin = Spin()
        if _pack is not None and sock is not None and encoder is not None:
            self.sock, self.reader = sock, _reader_for(encoder)
            self.spins = (os.name == "posix" and type(sock) is socket.socket
                          and sock.gettimeout() is not None)

    def reply(self) -> Any:
        """The next reply on the socket (an error reply returned, not raised)."""
        reader, recv = self.reader, self.sock.recv
        reply = reader.gets()
        if reply is False:
            with WAITING as alone:
                if alone and self.spins:
                    reply = self._spun()
                while reply is False:
                    reply = _fed(reader, recv(65536))
        return _checked(reply)

    def _spun(self) -> Any:
        """The reply, read without sleeping if it comes within :data:`SPIN_FOR` seconds;
        False if it did not (the caller then waits in the kernel): see :class:`Spin`."""
        spin, fd = self.spin, self.sock.fileno()  # -1 once closed
        if fd < 0 or not spin.wanted():
            return False
        end = time.perf_counter() + SPIN_FOR
        reply = _read_spinning(fd, self.reader, end)
        if reply is not False:
            spin.caught()
        elif time.perf_counter() >= end:
            spin.ran_out()
        return reply


def _read_spinning(fd: int, reader: Any, until: float) -> Any:
    """The reply on descriptor ``fd`` (which does not block), fed to ``reader`` and read
    without sleeping until ``until`` (a :func:`time.perf_counter` reading); False if it
    has not come by then, or at once when another call of the process waits too (see
    :class:`Waiting`)."""
    read, clock = os.read, time.perf_counter
    while True:
        try:
            data = read(fd, 65536)
        except BlockingIOError:
            if clock() < until and WAITING.count == 1:
                continue
            return False
        reply = _fed(reader, data)
        if reply is not False:
            return reply


def _fed(reader: Any, data: bytes) -> Any:
    """The reply ``reader`` holds once fed ``data`` read from the socket (False while it
    is incomplete); an empty read is the connection closed by the server."""
    if not data:
        raise RedisConnectionError("Connection closed by server.")
    reader.feed(data)
    return reader.gets()


class Waiting:
    """How many calls of this process wait for a reply (on :class:`BlockingScripts` and
    :class:`AsyncScriptLink`, and awaited enqueues gathered for the next script call): a
    call spins (see :class:`Spin`) only while it is the only one. A spinning thread holds
    the GIL between its reads, and a thread whose reply has come would wait for it: with
    4 threads enqueuing at once, spinning halved their rate; a spinning awaited call would
    hold its loop from the calls gathering for the next script call.

    The calls are counted in a list that each waiting call appends to and pops from
    (each step atomic, without a lock): two calls that begin to wait at once may both see
    the other and sleep, never both spin."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: list[None] = []

    @property
    def count(self) -> int:
        """How many calls wait."""
        return len(self._calls)

    def reset(self) -> None:
        """None waiting: in a child process just forked (the parent's waits are not its
        own)."""
        self._calls = []

    def __enter__(self) -> bool:
        """Count one more call waiting; True when it is the only one."""
        calls = self._calls
        calls.append(None)
        return len(calls) == 1

    def __exit__(self, *exc: object) -> None:
        calls = self._calls
        if calls:  # empty only when the wait began before a fork in this very thread
            calls.pop()


#: the calls of this process waiting for a reply
WAITING = Waiting()
#: the blocking script runners of this process (see :func:`_after_fork_in_child`)
_RUNNERS: weakref.WeakSet[BlockingScripts] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child starts with no call waiting and with no runner's lock held."""
    WAITING.reset()
    for runner in list(_RUNNERS):
        runner.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Spin:
    """Whether a call waits for its reply spinning, the first :data:`SPIN_FOR` seconds.

    A loopback round trip of one script is shorter than the time the kernel takes to wake
    a thread that slept for its reply: a caller that waits spinning (reading the socket
    without blocking; on an event loop, in short slices between which the loop's other
    tasks run) sends its next call sooner, for about the CPU the wake-up would have cost.
    After :data:`SPIN_MISSES` spins in a row that ran out (a remote or busy server:
    spinning would only burn CPU), a connection waits in the kernel for its next
    :data:`SPIN_REST` calls, then tries again."""

    __slots__ = ("misses", "rest")

    def __init__(self) -> None:
        self.misses = 0  # spins in a row that ran out
        self.rest = 0  # calls left that wait without spinning

    def wanted(self) -> bool:
        """Whether this call spins (False while the connection rests from spinning)."""
        if self.rest:
            self.rest -= 1
            return False
        return True

    def caught(self) -> None:
        """The reply came while spinning."""
        self.misses = 0

    def ran_out(self) -> None:
        """The spin ended without the reply."""
        self.misses += 1
        if self.misses >= SPIN_MISSES:
            self.misses, self.rest = 0, SPIN_REST


def _reader_for(encoder: Any) -> Any:
    """A hiredis reader decoding as the connection's ``encoder`` does, its error replies
    made into redis-py's classes."""
    kwargs: dict[str, Any] = {"replyError": _error_of, "protocolError": InvalidResponse}
    if encoder.decode_responses:
        kwargs.update(encoding=encoder.encoding, errors=encoder.encoding_errors)
    return Reader(**kwargs)


class DemotedMaster(RedisConnectionError):
    """READONLY from a master demoted under the connection: the connection is dropped (as
    redis-py's Sentinel connections do, so the retry finds the new master); a plain URL's
    server is waited out as :data:`READ_ONLY`, its ``store_reason``."""

    store_reason = READ_ONLY


def _checked(reply: Any) -> Any:
    """A reply read by one of our own readers, or what redis-py raises for it where its
    connection would: LOADING and the like; READONLY as :class:`DemotedMaster`. Other
    error replies are returned."""
    if isinstance(reply, RedisConnectionError):
        raise reply
    if isinstance(reply, ReadOnlyError):
        raise DemotedMaster(f"the master is now a replica ({reply})") from reply
    return reply


class BlockingScripts:
    """Runs scripts with EVALSHA (loading them on NOSCRIPT) on blocking connections; safe
    to use from several threads at once: a call takes an idle connection or opens one.

    A connection is reused only after a call read its whole reply; one that failed in any
    way is closed, so what it may still hold is never read as another call's reply. One that
    sat idle for :data:`IDLE_CHECK` seconds is first checked without blocking (the server
    may have closed it: a restart, its ``timeout``); when a call fails on a connection, the
    other idle ones are dropped too (after a restart they are all dead), so a retry opens a
    fresh one. At most :data:`MAX_IDLE` connections are kept.

    ``pool``, when given, supplies the connection class and arguments instead of ``url``
    (a Sentinel pool, whose connections find the current master); with ``wait``, the
    scripts it covers are followed by WAIT in the same round trip (see :mod:`.replicas`).

    The common call (no wait, no ASKING) is packed from a head made once per script and
    keys, and sent and read on the connection's socket directly (see :class:`_Link`).
    """

    def __init__(self, url: str, pool: Any = None, wait: Wait | None = None) -> None:
        if pool is None:
            pool = syncredis.ConnectionPool.from_url(
                url, decode_responses=True, encoding_errors=TEXT_ERRORS,
                health_check_interval=10, socket_keepalive=True,
            )
        self._pool = pool  # a Sentinel pool's connections hold only a weak reference to it
        self._wait = wait
        self._connection_class = pool.connection_class
        self._connection_kwargs = pool.connection_kwargs
        #: (connection, idle since); taken and given back with a list's atomic steps, so
        #: that the threads of a process share it without a lock
        self._idle: list[tuple[_Link, float]] = []
        self._pid = os.getpid()
        _RUNNERS.add(self)
        self._heads: Heads = {}  # see _evalsha

    def forked(self) -> None:
        """In a child process just forked: forget the parent's connections (left open: a
        close here would shut them down under the parent)."""
        self._idle, self._pid = [], os.getpid()

    def _take(self) -> _Link:
        if self._pid != os.getpid():  # a child forked without the at-fork hooks (uWSGI's
            _after_fork_in_child()  # preforking master, by default): as if they had run
        idle = self._idle
        while True:
            try:
                link, since = idle.pop()
            except IndexError:
                break
            if time.monotonic() - since < IDLE_CHECK or _quiet(link.conn):
                return link
            link.conn.disconnect()
        conn = self._connection_class(**self._connection_kwargs)
        # connected here, by the class's own connect(): a Sentinel connection finds the
        # master there (sending on an unconnected one would skip that step)
        conn.connect()
        return _Link(conn)

    def _give_back(self, link: _Link) -> None:
        """Keep ``link`` for the next call, or close it (one too many, or one whose reader
        holds more than the reply it was read for)."""
        idle = self._idle
        if (link.reader is None or not link.reader.has_data()) and len(idle) < MAX_IDLE:
            idle.append((link, time.monotonic()))
        else:
            link.conn.disconnect()

    def _drop_idle(self) -> None:
        idle = self._idle
        while True:
            try:
                link, _ = idle.pop()
            except IndexError:
                return
            link.conn.disconnect()

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any],
             asking: bool = False) -> Any:
        """Run script ``name`` and return its reply (errors raise as redis-py raises them);
        ``asking``: after ASKING (a Redis Cluster node importing the keys' slot)."""
        wait = self._wait if self._wait is not None and self._wait.covers(name) else None
        link = self._take()
        try:
            if wait is None and not asking and link.reader is not None:
                reply, confirmed = self._direct(link, name, keys, args), None
            else:
                reply, confirmed = self._general(link.conn, name, keys, args, wait, asking)
        except BaseException as exc:
            link.conn.disconnect()
            if isinstance(exc, LOST):
                self._drop_idle()
            raise
        self._give_back(link)
        if isinstance(reply, Exception):
            raise reply
        if wait is not None:
            wait.check(confirmed)
        return reply

    def _direct(self, link: _Link, name: str, keys: Sequence[str],
                args: Sequence[Any]) -> Any:
        """EVALSHA in one write on the socket, and its reply (loading the script and
        trying again on NOSCRIPT)."""
        command = _evalsha(self._heads, name, keys, args)
        link.sock.sendall(command)
        reply = link.reply()
        if isinstance(reply, NoScriptError):  # Redis restarted or its scripts were flushed
            link.sock.sendall(_pack(("SCRIPT", "LOAD", source(name))))  # type: ignore[misc]
            loaded = link.reply()
            if isinstance(loaded, Exception):
                return loaded
            link.sock.sendall(command)
            reply = link.reply()
        return reply

    @staticmethod
    def _general(conn: Any, name: str, keys: Sequence[str], args: Sequence[Any],
                 wait: Wait | None, asking: bool) -> tuple[Any, Any]:
        """A call through redis-py's connection: after ASKING, followed by a wait, or
        without hiredis."""
        text = source(name)
        evalsha = ("EVALSHA", _sha(text), len(keys), *keys, *args)
        reply, confirmed = _run(conn, evalsha, wait, asking)
        if isinstance(reply, NoScriptError):  # Redis restarted or its scripts were flushed
            conn.send_command("SCRIPT", "LOAD", text)
            conn.read_response()
            reply, confirmed = _run(conn, evalsha, wait, asking)
        return reply, confirmed

    def close(self) -> None:
        """Close the idle connections (the object stays usable)."""
        self._drop_idle()


#: (script, keys) -> the packed ``EVALSHA sha numkeys keys...`` without its leading item
#: count, and how many items it holds
Heads = dict[tuple[str, tuple[str, ...]], tuple[bytes, int]]


def _evalsha(heads: Heads, name: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    """EVALSHA of script ``name`` packed (needs hiredis): its head made once per script
    and keys (kept in ``heads``), the arguments packed by hiredis in one call."""
    index = (name, tuple(keys))
    head = heads.get(index)
    if head is None:
        assert _pack is not None
        packed = _pack(("EVALSHA", _sha(source(name)), len(keys), *keys))
        head = (packed[packed.index(b"\n") + 1:], 3 + len(keys))
        if len(heads) >= MAX_HEADS:
            heads.clear()
        heads[index] = head
    tail = _pack(tuple(args)) if args else b"*0\r\n"  # type: ignore[misc]
    return b"".join((b"*%d\r\n" % (head[1] + len(args)), head[0],
                     tail[tail.index(b"\n") + 1:]))


def _send(conn: Any, command: tuple[Any, ...]) -> None:
    """Send one command, packed by hiredis in one call when it can (redis-py's own packing
    walks the arguments in Python, which costs as much as the rest of a one-job enqueue)."""
    packed = _packed(command)
    if packed is None:
        conn.send_command(*command)
    else:
        conn.send_packed_command(packed)


def _run(conn: Any, evalsha: tuple[Any, ...], wait: Wait | None,
         asking: bool = False) -> tuple[Any, Any]:
    """Send EVALSHA (after ASKING when ``asking``; then the wait's commands), all in one
    write, and read the replies: the script's reply or error reply, and how many replicas
    confirmed (None without ``wait``)."""
    if wait is None and not asking:  # the common case: one command
        _send(conn, evalsha)
        return _reply(conn), None
    after = wait.commands if wait is not None else []
    commands = [*([("ASKING",)] if asking else []), evalsha, *after]
    packed = [_packed(command) for command in commands]
    if any(p is None for p in packed):
        conn.send_packed_command(conn.pack_commands(commands))
    else:
        conn.send_packed_command([b"".join(p[0] for p in packed if p is not None)])
    if asking:
        conn.read_response()
    reply = _reply(conn)
    if wait is None:
        return reply, None
    for _ in after[:-1]:
        conn.read_response()
    return reply, conn.read_response()


def _reply(conn: Any) -> Any:
    """The next reply, an error reply returned rather than raised (the connection stays
    usable; a connection error still raises)."""
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


def _quiet(conn: Any) -> bool:
    """True when an idle connection is still open and holds nothing unread."""
    try:
        return not conn.can_read(timeout=0)
    except LOST:
        return False


@cache
def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class AsyncScriptLink:
    """A connection of its own, on one event loop, for calls made one at a time (the
    broker's enqueue calls on a loop are: see its coalescer): EVALSHA is written on the
    stream from a head packed once per script and keys, and the reply read by a reader of
    its own, without redis-py's per-command tasks and wrappers (a single awaited enqueue
    otherwise pays for them several times over its round trip).

    The connection is made by the client pool's connection class (it authenticates and
    selects the database); one that failed or was cancelled during a call is closed, and
    the next call opens another. After its spin (see :meth:`_spun`), a call waits at most
    the connection's socket timeout for a reply.
    """

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = pool.connection_kwargs
        self._conn: Any = None
        self._reader: Any = None
        self._transport: Any = None  # the connection's
        #: the socket's descriptor, read while a call spins; -1: calls never spin
        self.fd = -1
        self._heads: Heads = {}  # see _evalsha
        self._spin = Spin()
        #: a call is under way (the caller then takes redis-py's way)
        self.busy = False

    @staticmethod
    def usable() -> bool:
        """True when hiredis (and so this link) is there."""
        return _pack is not None

    async def _connected(self) -> Any:
        """The link's connection, opened again when it is closed or holds anything
        unread."""
        conn = self._conn
        if conn is not None:
            if not conn._reader.at_eof() and not self._reader.has_data() \
                    and not self._transport.is_closing():
                return conn
            self._drop()
        conn = self._connection_class(**self._connection_kwargs)
        await conn.connect()
        self._conn, self._reader = conn, _reader_for(conn.encoder)
        self._transport = transport = conn._writer.transport
        self.fd = _spin_fd(transport)
        return conn

    def _drop(self) -> None:
        """Close the connection at once (no reply it may still get is ever read)."""
        conn, self._conn, self._reader, self.fd = self._conn, None, None, -1
        self._transport = None
        if conn is None:
            return
        close = getattr(conn, "_close", None)  # redis-py's close without waiting
        if close is not None:
            close()
        elif conn._writer is not None:
            conn._writer.close()

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any],
                   until: float | None = None) -> Any:
        """Run script ``name`` and return its reply (errors raise as redis-py raises
        them); not to be called again before it returns. ``until`` (``time.monotonic()``):
        the caller's deadline, which cuts the wait for the reply short of the socket
        timeout (a server that stopped answering costs the caller no more than its own
        timeout), though never below :data:`LAST_TRY` seconds."""
        self.busy = True
        try:
            reply = await self._run(await self._connected(), name, keys, args, until)
        except BaseException:
            self._drop()
            raise
        finally:
            self.busy = False
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _run(self, conn: Any, name: str, keys: Sequence[str],
                   args: Sequence[Any], until: float | None = None) -> Any:
        command = _evalsha(self._heads, name, keys, args)
        write = self._transport.write
        write(command)
        reply = await self._reply(conn, until)
        if isinstance(reply, NoScriptError):  # Redis restarted or its scripts were flushed
            write(_pack(("SCRIPT", "LOAD", source(name))))  # type: ignore[misc]
            loaded = await self._reply(conn, until)
            if isinstance(loaded, Exception):
                return loaded
            write(command)
            reply = await self._reply(conn, until)
        return reply

    async def _reply(self, conn: Any, until: float | None = None) -> Any:
        if self._conn is not conn:  # closed by another task while this call waited
            raise RedisConnectionError("Connection closed during the call.")
        reply = self._reader.gets()
        if reply is False:
            with WAITING as alone:
                if alone and self.fd >= 0 and self._spin.wanted():
                    reply = await self._spun(conn)
                if reply is False:
                    reply = await self._waited(conn, until)
        return _checked(reply)

    async def _waited(self, conn: Any, until: float | None = None) -> Any:
        """The reply, read from the connection's stream (the loop sleeps until data
        comes), in at most the connection's socket timeout (none when it has none, or 0),
        or until ``until`` (see :meth:`call`)."""
        reader, read = self._reader, conn._reader.read
        timeout = conn.socket_timeout or None
        if until is not None:
            left = max(until - time.monotonic(), LAST_TRY)
            timeout = left if timeout is None else min(timeout, left)
        async with asyncio.timeout(timeout):
            while True:
                reply = _fed(reader, await read(65536))
                if reply is not False:
                    return reply

    async def _spun(self, conn: Any) -> Any:
        """The reply, read from the socket without sleeping if it comes within
        :data:`SPIN_FOR` seconds; False if it did not (see :class:`Spin`).

        The loop is held at most :data:`SPIN_SLICE` seconds at a time (a loopback reply
        mostly comes within the first): between slices its other tasks run, and the
        transport's reading is paused so that the reply stays on the socket for this call
        (resumed when the spin ends). The spin ends at once when another call of the
        process waits too, or when the connection was closed meanwhile."""
        reader, fd, spin, clock = self._reader, self.fd, self._spin, time.perf_counter
        end = clock() + SPIN_FOR
        paused = None
        try:
            while True:
                reply = _read_spinning(fd, reader, min(end, clock() + SPIN_SLICE))
                if reply is not False:
                    spin.caught()
                    return reply
                if clock() >= end:
                    spin.ran_out()
                    return False
                if WAITING.count > 1:  # another call waits too (see Waiting)
                    return False
                if paused is None:
                    paused = self._transport
                    paused.pause_reading()
                await asyncio.sleep(0)
                # closed meanwhile? then its descriptor may already be another file's
                if self._conn is not conn or paused.is_closing():
                    raise RedisConnectionError("Connection closed during the call.")
        finally:
            if paused is not None:
                paused.resume_reading()

    def close(self) -> None:
        """Close the connection (the link stays usable)."""
        self._drop()


def _spin_fd(transport: Any) -> int:
    """The descriptor of ``transport``'s socket, which an awaited call reads while it
    spins; -1 (it never spins) over TLS, where the descriptor carries records, off POSIX,
    or when the transport does not tell."""
    if os.name != "posix" or transport.get_extra_info("sslcontext") is not None \
            or transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1
