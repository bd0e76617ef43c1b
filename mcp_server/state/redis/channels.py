"""Following a Redis pub/sub channel: what one replica tells every other (a signal for a task
another holds, a deleted task's cached outputs), at once and best-effort. What the channel
carries is always also in the store, so a message lost to a dropped connection only delays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from redis.exceptions import NoPermissionError, RedisError

from mcp_server.engine.cancelling import raise_if_cancelled
from mcp_server.engine.failure_notes import FailureNotes
from mcp_server.state.redis.connection import LEAKED_CONNECTION_ERRORS, RedisConnection, raised_by_the_connection
from mcp_server.state.redis.opening import text

PAUSE_SECONDS = 0.5
PAUSE_MAX_SECONDS = 5.0
READ_SECONDS = 5.0  # a bounded read: a blocking one meets the client's socket timeout when idle
log = logging.getLogger(__name__)


async def follow_channel(conn: RedisConnection, channel: str, meanwhile: str) -> AsyncIterator[str]:
    """The messages of `channel`, as text, on a pub/sub connection of their own, for as long as
    it is iterated; after a failure, subscribe again with a growing pause (what was published
    meanwhile is lost). `meanwhile` says what waits while the channel is not followed (logged)."""
    pause = PAUSE_SECONDS
    failures = FailureNotes(log, f"the channel {channel} ({meanwhile})")
    while True:
        pubsub = conn.r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            # redis-py's subscribe can swallow a cancellation that lands while it connects: the
            # loop then read on, and the server's stop waited 5 s for it (engine/cancelling.py)
            raise_if_cancelled()
            pause = PAUSE_SECONDS
            failures.worked()
            while True:
                message = await pubsub.get_message(timeout=READ_SECONDS)  # None: nothing yet
                raise_if_cancelled()
                if message is not None and message.get("type") == "message":
                    yield text(message["data"])
        except NoPermissionError:  # an ACL without pub/sub: asking again will not help
            log.warning("this Redis user may not subscribe to %s: %s", channel, meanwhile)
            return
        except (RedisError, OSError) as exc:
            failures.failed(exc)
        except LEAKED_CONNECTION_ERRORS as exc:
            if not raised_by_the_connection(exc):
                raise
            failures.failed(exc)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        await asyncio.sleep(pause)
        pause = min(pause * 2, PAUSE_MAX_SECONDS)
        if conn.cluster:  # a failover may have moved the node it listened on
            with contextlib.suppress(Exception):
                await conn.r.nodes_manager.initialize()
