"""The Dramatiq side of bench/peers.py: a no-op actor on a Redis broker with a Redis result
backend (`dramatiq bench.peer_dramatiq --processes 2 --threads 8`). A chain is a pipeline of three."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

URL = os.environ.get("BENCH_PEER_REDIS", "redis://127.0.0.1:6379/0")
broker = RedisBroker(url=URL, namespace="bench-dramatiq")
broker.add_middleware(Results(backend=RedisBackend(url=URL, namespace="bench-dramatiq-results")))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def echo(value: Any) -> Any:
    return value
