"""Hosts on one machine: a private network of Linux network namespaces.

Each host is a network namespace with one veth link (``eth0``) to a bridge that lives in a
namespace of its own; Redis runs in a namespace of its own on the same bridge. The test
process reaches the bridge through one veth of its own in the root namespace (its only
change there: an interface and its subnet's route, removed at teardown). A host's link is
cut by setting its port on the bridge down (the switch port, as a pulled cable or a dead
switch would: packets vanish and nobody is told) and healed by setting it up again.
Processes of a host run with ``ip netns exec NS``: same filesystem, same interpreter.

Names carry the test process's pid and a counter, so parallel runs (pytest-xdist) never
clash: namespaces ``conveyor-hosts-PID-N-ROLE``, the root interface ``cvhPIDxN`` (at most
15 characters), a /24 of 10.77.0.0/16 not in use in the root namespace (picked under a file
lock). Teardown kills every process in the namespaces and deletes the namespaces and the
interface, even when a test fails (and at exit); leftovers of dead test processes are
removed when the next network is made.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faults.harness import Proc, child_env, pid_alive
from faults.ledger import Ledger
from polling import wait_until

if TYPE_CHECKING:
    from conveyor import Conveyor

PREFIX = "conveyor-hosts-"
#: how long the test's own store calls retry through a cut
OBSERVER_RETRY_FOR = 60.0
_counter = itertools.count()
#: every network not yet torn down, torn down at exit
_live: list[Network] = []


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here (the tests skip with this reason)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; a failure raises :class:`RuntimeError` with ip's message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can (one is made and
    deleted to find out)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    ip("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def kill_inside(ns: str) -> None:
    """SIGKILL every process in namespace ``ns`` and wait for them to go."""
    pids = [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(AssertionError):
            wait_until(lambda p=pid: not pid_alive(p), 10, f"pid {pid} to die", 0.02)


def remove_stale() -> None:
    """Delete the namespaces and interfaces of test processes that are gone."""
    for ns in namespaces():
        if not ns.startswith(PREFIX):
            continue
        owner = ns[len(PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            kill_inside(ns)
            ip("netns", "del", ns, check=False)
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("cvh") and "x" in name:
            owner = name[3:].split("x", 1)[0]
            if owner.isdigit() and not pid_alive(int(owner)):
                ip("link", "del", name, check=False)


@dataclass
class Node:
    """A host (or Redis's namespace) on the network."""

    name: str
    ns: str
    #: its port on the bridge (the interface cut and healed)
    port: str
    address: str

    def wrap(self) -> list[str]:
        """The command prefix that runs a program in this node's namespace."""
        return ["ip", "netns", "exec", self.ns]


class Network:
    """A bridge in a namespace of its own, nodes on it, and the test process's own link."""

    def __init__(self) -> None:
        remove_stale()
        self.tag = f"{os.getpid()}-{next(_counter)}"
        self.bridge_ns = f"{PREFIX}{self.tag}-br"
        self.root_port = f"cvh{self.tag.replace('-', 'x')}"
        assert len(self.root_port) <= 15, self.root_port
        self.nodes: dict[str, Node] = {}
        self.closed = False
        _live.append(self)
        try:
            ip("netns", "add", self.bridge_ns)
            ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            self.subnet = self._link_root()
        except BaseException:
            self.close()
            raise

    def _link_root(self) -> str:
        """Link the root namespace to the bridge on a free 10.77.X.0/24; return its
        ``10.77.X`` (the lock makes picking and taking the subnet one step)."""
        lock = Path(tempfile.gettempdir()) / "conveyor-hosts.lock"
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            used = ip("-4", "-o", "addr", "show").stdout
            start = os.getpid() % 250
            for k in range(250):
                subnet = f"10.77.{(start + k) % 250 + 1}"
                if f" {subnet}." not in used:
                    break
            else:
                raise RuntimeError("no free 10.77.X.0/24 subnet in the root namespace")
            ip("link", "add", self.root_port, "type", "veth", "peer", "name", "p0",
               "netns", self.bridge_ns)
            ip("addr", "add", f"{subnet}.1/24", "dev", self.root_port)
            ip("link", "set", self.root_port, "up")
        ip("-n", self.bridge_ns, "link", "set", "p0", "master", "br0", "up")
        return subnet

    def add(self, name: str) -> Node:
        """A new namespace ``name`` linked to the bridge (its address ``10.77.X.(2+n)``)."""
        ns = f"{PREFIX}{self.tag}-{name}"
        node = Node(name, ns, f"p{len(self.nodes) + 1}",
                    f"{self.subnet}.{len(self.nodes) + 2}")
        self.nodes[name] = node
        ip("netns", "add", ns)
        ip("-n", self.bridge_ns, "link", "add", node.port, "type", "veth", "peer", "name",
           "eth0", "netns", ns)
        ip("-n", self.bridge_ns, "link", "set", node.port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return node

    def cut(self, node: Node) -> None:
        """Cut ``node`` off: its port on the bridge goes down (packets to and from it are
        dropped; no connection is told)."""
        ip("-n", self.bridge_ns, "link", "set", node.port, "down")

    def heal(self, node: Node) -> None:
        ip("-n", self.bridge_ns, "link", "set", node.port, "up")

    def close(self) -> None:
        """Kill every process in the namespaces, delete them and the root interface, and
        wait until they are gone (deletion is asynchronous in the kernel)."""
        if self.closed:
            return
        self.closed = True
        ip("link", "del", self.root_port, check=False)
        mine = [n.ns for n in self.nodes.values()] + [self.bridge_ns]
        for ns in mine:
            kill_inside(ns)
            ip("netns", "del", ns, check=False)
        wait_until(lambda: not set(mine) & set(namespaces()) and ip(
            "link", "show", self.root_port, check=False).returncode != 0, 30,
            f"namespaces {mine} and {self.root_port} to go")
        with contextlib.suppress(ValueError):
            _live.remove(self)


@atexit.register
def _close_all() -> None:
    for network in list(_live):
        with contextlib.suppress(Exception):
            network.close()


class HostProc(Proc):
    """A ``python -m conveyor ...`` process (or ``python -m MODULE`` with ``module``) run in
    a node's namespace; ``ip netns exec`` execs it, so :attr:`pid` is the program's."""

    def __init__(self, node: Node, name: str, argv: Sequence[str], env: dict[str, str],
                 cwd: Path, log: Path, module: str = "conveyor") -> None:
        self.node = node
        self.name = name
        self.log_path = log
        self.argv = [*node.wrap(), sys.executable, "-m", module, *argv]
        with log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, cwd=cwd, env=env, stdout=out,
                                          stderr=subprocess.STDOUT)
        self.pid = self.popen.pid
        self.seen_children: set[int] = set()



class Site:
    """A network with Redis (AOF, ``appendfsync always``) on a node of its own and worker
    hosts ``h1``, ``h2`` ...; the ledger; the test's own app on the same Redis (reached over
    the root link, which no cut touches); every process started, killed at :meth:`close`."""

    def __init__(self, workdir: Path, hosts: int, lease: float) -> None:
        from hosts.hostjobs import make_host_app
        from redis_server import RedisServer

        self.workdir = workdir
        self.lease = lease
        self.network = Network()
        self.procs: list[HostProc] = []
        self.app: Conveyor | None = None
        self.redis: RedisServer | None = None
        try:
            self.redis_node = self.network.add("redis")
            self.hosts = [self.network.add(f"h{k}") for k in range(1, hosts + 1)]
            (workdir / "redis").mkdir(parents=True, exist_ok=True)
            self.redis = RedisServer(workdir / "redis", port=6379, host=self.redis_node.address,
                                     wrap=self.redis_node.wrap()).start()
            self.url = self.redis.url
            self.ledger_path = workdir / "ledger.txt"
            self.ledger = Ledger(self.ledger_path)
            self.env = child_env(FAULTS_LEDGER=str(self.ledger_path), FAULTS_LEASE=str(lease))
            self.app = make_host_app(self.url, lease)
            # the test's own calls wait out a cut (and the reconnection after the heal: a
            # connection idle through a long cut may answer only after redis-py's 5 s read
            # timeout and a new connection) rather than fail on it
            self.app.broker.retry_for = OBSERVER_RETRY_FOR
        except BaseException:
            self.close()
            raise

    def start(self, host: Node, name: str, *argv: str, module: str = "conveyor",
              ledger: bool = True) -> HostProc:
        env = dict(self.env)
        if not ledger:
            env.pop("FAULTS_LEDGER")
        proc = HostProc(host, name, argv, env, self.workdir,
                        self.workdir / f"{len(self.procs):02d}-{name}.log", module)
        self.procs.append(proc)
        return proc

    def worker(self, host: Node, *, slots: int, queues: Sequence[str] = (),
               ledger: bool = True, grace: float = 1.0, processes: int = 1) -> HostProc:
        """``conveyor worker hosts.hostjobs:app --processes N`` on ``host``."""
        argv = ["worker", "hosts.hostjobs:app", "--url", self.url, "--processes", str(processes),
                "--min-workers", str(slots), "--max-workers", str(slots),
                "--grace", str(grace)]
        if queues:
            argv += ["--queues", ",".join(queues)]
        return self.start(host, f"worker-{host.name}", *argv, ledger=ledger)

    def registered(self) -> set[int]:
        """Pids of the worker processes whose heartbeat is current."""
        assert self.app is not None
        return {w.pid for w in self.app.run_sync(self.app.broker.workers())}

    def wait_registered(self, procs: Sequence[HostProc], timeout: float = 60.0) -> None:
        def ready() -> bool:
            for proc in procs:
                if not proc.alive():
                    raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
            return {p.pid for p in procs} <= self.registered()

        wait_until(ready, timeout, f"{[p.name for p in procs]} to register\n{self.logs()}",
                   0.05)

    def redis_info(self, section: str) -> dict[str, Any]:
        """``INFO section`` of the site's Redis (over the root link)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            info: dict[str, Any] = client.info(section)
        finally:
            client.close()
        return info

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name} (pid {p.pid}) ---\n{p.tail()}"
                         for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.cleanup()
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.app.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.kill()
        self.network.close()
