"""A private Redis Cluster for tests: masters (and replicas) on free ports, joined with
``redis-cli --cluster create``; each node a :class:`~redis_server.RedisServer` of its own, so
tests can kill and restart nodes.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from redis_server import RedisServer


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        if shutil.which("redis-cli") is None:
            pytest.skip("redis-cli is not installed")
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-cluster-"))
        self.replicas = replicas
        self.nodes = [
            RedisServer(self.directory / f"node{index}", extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000"])
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
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        self.cli("--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                 "--cluster-yes")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every node reports ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [self.cli("cluster", "info", port=node.port) for node in self.nodes
                     if node.process is not None and node.process.poll() is None]
            if all("cluster_state:ok" in info and "cluster_slots_ok:16384" in info
                   for info in infos):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle: {infos}")
            time.sleep(0.1)

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
