"""A private Redis Sentinel deployment for tests: a master, replicas and sentinels, each a
``redis-server`` (the sentinels in ``--sentinel`` mode) on a free port of 127.0.0.1.

The data servers are :class:`~redis_server.RedisServer` (AOF with fsync always); the
replicas start with ``--replicaof`` the master. :meth:`SentinelGroup.kill_master` kills the
master with SIGKILL, :meth:`SentinelGroup.wait_failover` waits until the sentinels name
another one, and restarting the old master (:meth:`SentinelGroup.restart`) makes it, once
the sentinels see it, a replica of the new one.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import redis

from redis_server import RedisServer, free_port

SERVICE = "conveyor"


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel``: a sentinel monitoring one master."""

    def __init__(self, directory: Path, master_port: int, service: str = SERVICE,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 password: str | None = None, master_password: str | None = None) -> None:
        super().__init__(directory)
        self.config = directory / "sentinel.conf"
        lines = [
            "bind 127.0.0.1", f"dir {directory}",
            f"logfile {directory / 'sentinel.log'}", "protected-mode no", "daemonize no",
            f"sentinel monitor {service} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ]
        if password is not None:
            lines.append(f"requirepass {password}")
        if master_password is not None:
            lines.append(f"sentinel auth-pass {service} {master_password}")
        #: the configuration but for the port, written at the first start (a sentinel
        #: rewrites its file with what it learns: a restart keeps that)
        self._lines = lines

    def _start_once(self) -> SentinelServer:
        """Start on :attr:`port` (:meth:`RedisServer.start` tries another free port when a
        first start finds it taken)."""
        if self.choose_port is not None:  # not started yet
            self.config.write_text("\n".join([f"port {self.port}", *self._lines]) + "\n")
        self.launch([self.binary, str(self.config), "--sentinel"], "redis-sentinel",
                    self.directory / "sentinel.log")
        self.choose_port = None
        return self


class Relay:
    """A TCP relay on a free port of 127.0.0.1 to ``target_port``: the replication link of
    a replica. :meth:`cut` drops from then on what crosses it either way, as a network
    partition between the master and that replica would (the connection stays open)."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._cut.set()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._server.accept()
                far = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self._sockets += [near, far]
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self._cut.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        for sock in self._sockets:
            sock.close()


class SentinelGroup:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2)."""

    def __init__(self, replicas: int = 1, sentinels: int = 3, server_extra: Sequence[str] = (),
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 sentinel_password: str | None = None,
                 password: str | None = None, relayed: bool = False) -> None:
        """``relayed``: the replicas replicate through a :class:`Relay` each (see
        :attr:`relays`), which the sentinels would set right after ``failover_timeout_ms``
        (they point replicas that name another master at the real one)."""
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-sentinel-"))
        self.service = SERVICE
        self.sentinel_password = sentinel_password
        port = free_port()
        # a replica's first sync starts at once (Redis waits 5 s for more replicas by default)
        server_extra = ["--repl-diskless-sync-delay", "0", *server_extra]
        self.password = password
        self.servers = [RedisServer(self._dir("server-0"), port, extra=server_extra)]
        self.relays = [Relay(port) for _ in range(replicas)] if relayed else []
        for n in range(1, replicas + 1):
            upstream = self.relays[n - 1].port if relayed else port
            self.servers.append(RedisServer(
                self._dir(f"server-{n}"), free_port(),
                extra=[*server_extra, "--replicaof", "127.0.0.1", str(upstream)]))
        self.sentinels = [
            SentinelServer(self._dir(f"sentinel-{n}"), port, self.service, down_after_ms,
                           failover_timeout_ms, sentinel_password, password)
            for n in range(sentinels)]

    def _dir(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir()
        return path

    def url(self, query: str = "", scheme: str = "redis+sentinel",
            password: str | None = None) -> str:
        """The group's URL (with the master's ``password``, else the group's, if any)."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        password = password if password is not None else self.password
        auth = f":{quote(password, safe='')}@" if password is not None else ""
        return f"{scheme}://{auth}{hosts}/{self.service}" + (f"?{query}" if query else "")

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        try:
            return self._start(timeout)
        except BaseException:
            self.remove()
            raise

    def _start(self, timeout: float) -> SentinelGroup:
        for server in self.servers:
            server.start()
            if self.password is not None:  # set once started (a PING tells it started)
                with redis.Redis(port=server.port, socket_timeout=2) as client:
                    client.config_set("masterauth", self.password)
                    client.config_set("requirepass", self.password)
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_settled(len(self.servers) - 1, timeout)
        return self

    def _sentinel(self, sentinel: SentinelServer) -> redis.Redis:
        return redis.Redis(port=sentinel.port, password=self.sentinel_password,
                           decode_responses=True, socket_timeout=2)

    def wait_settled(self, replicas: int, timeout: float = 30.0) -> None:
        """Wait until every sentinel sees the same master, ``replicas`` replicas of it in
        sync, and the other sentinels (a failover needs them to know each other)."""
        deadline = time.monotonic() + timeout
        want_others = len(self.sentinels) - 1
        while True:
            try:
                views = []
                for sentinel in self.sentinels:
                    with self._sentinel(sentinel) as client:
                        state = client.sentinel_master(self.service)
                        views.append((state["ip"], int(state["port"]),
                                      int(state["num-slaves"]),
                                      int(state["num-other-sentinels"]),
                                      bool(state["is_sdown"] or state["is_odown"])))
                master = self.master()
                with redis.Redis(port=master.port, password=self.password,
                                 socket_timeout=2) as client:
                    info = client.info("replication")
                    synced = sum(1 for n in range(int(info["connected_slaves"]))
                                 if info[f"slave{n}"]["state"] == "online")
                if (len({v[:2] for v in views}) == 1
                        and all(v[2] >= replicas and v[3] >= want_others and not v[4]
                                for v in views)
                        and synced >= replicas):
                    return
            except (redis.RedisError, OSError, LookupError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinel group did not settle; see {self.directory}")
            time.sleep(0.1)

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                with self._sentinel(sentinel) as client:
                    found = client.sentinel_get_master_addr_by_name(self.service)
                    if found:
                        return int(found[1])
            except (redis.RedisError, OSError):
                continue
        raise LookupError("no sentinel names a master")

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def kill_master(self) -> RedisServer:
        """SIGKILL the master (as a crash would); return it (restart it with
        :meth:`restart`)."""
        master = self.master()
        master.kill()
        return master

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> RedisServer:
        """Wait until all sentinels name a master other than ``old_port`` that answers as
        a master; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ports = set()
                for sentinel in self.sentinels:
                    with self._sentinel(sentinel) as client:
                        found = client.sentinel_get_master_addr_by_name(self.service)
                        ports.add(int(found[1]) if found else None)
                if len(ports) == 1 and old_port not in ports and None not in ports:
                    (port,) = ports
                    with redis.Redis(port=port, password=self.password,
                                     socket_timeout=2) as client:
                        if client.info("replication")["role"] == "master":
                            return next(s for s in self.servers if s.port == port)
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no failover within {timeout} s; see {self.directory}")

    def restart(self, server: RedisServer, replica_of: RedisServer | None = None) -> None:
        """Start a killed server again on its port and data. With ``replica_of``, it
        starts as that server's replica (as an operator restarting a failed master would);
        without, as a master, which the sentinels turn into a replica of the current master
        once they look at it again (10 to 20 s later)."""
        if "--replicaof" in server.extra:
            at = server.extra.index("--replicaof")
            del server.extra[at:at + 3]
        if replica_of is not None:
            server.extra += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        server.start()

    def remove(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.kill()  # a replica writing its first AOF ignores SIGTERM for a while
        for relay in self.relays:
            relay.close()
        shutil.rmtree(self.directory, ignore_errors=True)


_shared: SentinelGroup | None = None


def shared_sentinel_url() -> str:
    """One master, one replica and three sentinels for the whole test run: its URL."""
    global _shared
    if _shared is None:
        _shared = SentinelGroup().start()
        atexit.register(_shared.remove)
    return _shared.url()
