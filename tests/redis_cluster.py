"""A private Redis Cluster for tests: masters (and replicas) on free ports, joined with
``redis-cli --cluster create``; each node a :class:`~redis_server.RedisServer` of its own, so
tests can kill and restart nodes.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from redis.crc import key_slot

from redis_server import RedisServer, free_port

#: a node's cluster bus listens on its port + 10000, so its port is at most this
MAX_PORT = 55535


def cluster_port() -> int:
    """A free port for a cluster node whose bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port > MAX_PORT:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on 127.0.0.1; ``extra``: more
    ``redis-server`` arguments for every node (``--appendonly no`` for a benchmark)."""

    def __init__(self, masters: int = 3, replicas: int = 0, extra: Sequence[str] = ()) -> None:
        if shutil.which("redis-cli") is None:
            pytest.skip("redis-cli is not installed")
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-cluster-"))
        self.replicas = replicas
        self.nodes = [
            RedisServer(self.directory / f"node{index}", port=cluster_port(),
                        choose_port=cluster_port, extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", *extra])
            for index in range(masters * (1 + replicas))
        ]
        for node in self.nodes:
            node.directory.mkdir(parents=True)

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming the first node (the client discovers the rest)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def cli(self, *args: str, port: int | None = None, timeout: float = 60) -> str:
        """Run ``redis-cli`` (against the first node unless ``port``); its output."""
        command = ["redis-cli", "-p", str(port or self.nodes[0].port), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=True)
        return done.stdout

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            self.cli("--cluster", "create", *addresses, "--cluster-replicas",
                     str(self.replicas), "--cluster-yes")
            self.wait_ok()
        except BaseException:
            self.remove()  # no node left running
            raise
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every node reports ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [self.cli("cluster", "info", port=node.port) for node in self.nodes
                     if node.process is not None and node.process.poll() is None]
            if all("cluster_state:ok" in info and "cluster_slots_ok:16384" in info
                   for info in infos) and self._replicas_synced():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle: {infos}")
            time.sleep(0.1)

    def _replicas_synced(self) -> bool:
        """Every replica the cluster was made with follows its master, link up (one that
        has not synced yet could not take over in a failover)."""
        if not self.replicas:
            return True
        roles = [line.split()[2] for line in self.cli("cluster", "nodes").splitlines()]
        if sum("slave" in role for role in roles) < len(self.nodes) - len(self.nodes) // (
                1 + self.replicas):
            return False
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            info = self.cli("info", "replication", port=node.port)
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def slot_owner(self, key: str) -> RedisServer:
        """The node (a master) that serves ``key``'s slot."""
        slot = int(self.cli("cluster", "keyslot", key))
        for line in self.cli("cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def slot_map(self, port: int | None = None) -> dict[int, RedisServer]:
        """Slot -> the master serving it, as the node at ``port`` (else the first) sees it."""
        owners: dict[int, RedisServer] = {}
        for line in self.cli("cluster", "nodes", port=port).splitlines():
            fields = line.split()
            if "master" not in fields[2]:
                continue
            node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            node = next(node for node in self.nodes if node.port == node_port)
            for span in fields[8:]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                for slot in range(int(low), int(high or low) + 1):
                    owners[slot] = node
        return owners

    def masters(self) -> list[RedisServer]:
        """The nodes that serve slots, by port."""
        return sorted(set(self.slot_map().values()), key=lambda node: node.port)

    def namespace_on(self, node: RedisServer, prefix: str = "t") -> str:
        """A fresh random namespace (``prefix`` + hex) whose ``{namespace}`` slot ``node``
        serves."""
        owners = self.slot_map()
        while True:
            namespace = f"{prefix}{secrets.token_hex(6)}"
            if owners.get(key_slot(f"{{{namespace}}}".encode())) is node:
                return namespace

    @staticmethod
    def slot_of(namespace: str) -> int:
        """The slot of ``namespace``'s keys (their hash tag ``{namespace}``)."""
        return int(key_slot(f"{{{namespace}}}".encode()))

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()
        shutil.rmtree(self.directory, ignore_errors=True)


_shared: RedisCluster | None = None


def shared_cluster() -> RedisCluster:
    """One 3-master cluster for the whole test run (tests must not kill its nodes)."""
    global _shared
    if _shared is None:
        _shared = RedisCluster().start()
        atexit.register(_shared.remove)
    return _shared
