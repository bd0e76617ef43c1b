"""The Celery side of bench/peers.py: a no-op task on a Redis broker and result backend
(`celery -A bench.peer_celery worker --pool prefork --concurrency 2`). A chain is three in a chain()."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

URL = os.environ.get("BENCH_PEER_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("bench_peer", broker=URL, backend=URL)
app.conf.update(task_default_queue="bench-celery", worker_prefetch_multiplier=4, result_expires=600)


@app.task
def echo(value: Any) -> Any:
    return value
