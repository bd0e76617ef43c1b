"""RateLimitGate: where runs take rate-limit units (the UnitGate of engine/ports), and where
operators set and read the limits (PutRateLimit, ListRateLimits, GetRateLimit, DeleteRateLimit).

The limits live in the store, shared by every replica (RateLimitStore). Each replica keeps the
set of keys that have a limit, refreshed every second and at once on its own changes, so that
a call asking only keys without a limit costs no round trip; a limit put on another replica
takes effect here as its announcement arrives (through the store), else within that second. A
key with no limit of its own falls under the template with the longest prefix of it (`tenant:*`
for `tenant:acme`), if any. A limit put or deleted
wakes the calls waiting for it, here, on the other replicas (through the store) and parked, so
they ask again under the new limit at once. A call that gives up its place in a line (its task
cancelled, its step timed out) wakes those waiting in memory for the same limit, here and on the
other replicas, at most once every LINE_WAKE_SECONDS, and makes the parked ones at the front of
its line due: they stood behind it, and their turns come sooner without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence

from google.protobuf import duration_pb2

from mcp_sdk.proto import registry_pb2
from mcp_server.engine.compiler.fields import RATE_LIMIT_KEY
from mcp_server.engine.ports import Grant, KeyRoom, RateLimitSpec, RateLimitStore
from mcp_server.errors import FieldViolation, InvalidArgument, McpError, NotFound

logger = logging.getLogger(__name__)

TEMPLATE = "*"  # a key ending so is a template for every key starting with what comes before it
MIN_PERIOD = 0.001
MAX_PERIOD = 30 * 24 * 3600.0
LINE_WAKE_SECONDS = 0.2  # the waiters of a limit whose line a call left are woken at most this often
LEAVE_RESUMES = 32  # the calls at the front of a line a call left that are made due if parked


class RateLimitGate:
    def __init__(
        self,
        store: RateLimitStore,
        counted: Callable[[str, bool], None] = lambda key, granted: None,
        refresh_seconds: float = 1.0,
        resume_soon: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.counted = counted  # told of each answer for a limited key (for metrics)
        self.refresh_seconds = refresh_seconds
        self.resume_soon = resume_soon  # makes parked tasks due now (WaitStore.resume_soon)
        self.limited: frozenset[str] = frozenset()
        self.templates: tuple[str, ...] = ()  # the prefixes of template keys, longest first
        self.waiters: Counter[str] = Counter()  # steps of this replica waiting, by limit key
        self._wakes: defaultdict[str, set[Callable[[], None]]] = defaultdict(set)  # how to wake each
        self._leaving: set[asyncio.Future[None]] = set()  # calls that gave up, leaving their lines
        self._line_wakes: dict[str, set[str]] = {}  # limits whose waiters are about to be woken: the keys left
        self.last: list[tuple[RateLimitSpec, float]] = []  # the limits as last read, with the room they had

    # ---- the engine's side ------------------------------------------------------------------
    def limit_key(self, key: str) -> str | None:
        if key in self.limited:
            return key
        for prefix in self.templates:
            if key.startswith(prefix):
                return prefix + TEMPLATE
        return None

    async def take_units(self, asks: Sequence[tuple[str, float]], waiter: str = "", priority: int = 0) -> Grant:
        limited = [(key, units, limit) for key, units in asks if (limit := self.limit_key(key)) is not None]
        if not limited:
            return Grant(True)
        grant = await self.store.take_units(limited, waiter, priority)
        for key, _, limit in limited:  # metrics by limit: a template's keys (one per tenant) count as one
            self.counted(limit, grant.granted or key != grant.key)
        return grant

    def give_up(self, keys: Sequence[str], waiter: str) -> None:
        limited = [key for key in keys if self.limit_key(key) is not None]
        if limited:
            leaving = asyncio.ensure_future(self._leave(limited, waiter))
            self._leaving.add(leaving)
            leaving.add_done_callback(self._leaving.discard)

    async def _leave(self, keys: list[str], waiter: str) -> None:
        try:
            await self.store.leave_lines(keys, waiter)
        except Exception:  # the store away: the places age out as if the waiter had gone
            logger.debug("could not take %s out of the lines of %s", waiter, keys, exc_info=True)
            return
        for key in keys:
            limit = self.limit_key(key) or key
            if limit not in self._line_wakes:  # a burst of leavers (a bulk cancel) wakes each waiter once
                self._line_wakes[limit] = set()
                asyncio.get_running_loop().call_later(LINE_WAKE_SECONDS, self._wake_behind, limit)
            self._line_wakes[limit].add(key)

    def _wake_behind(self, limit: str) -> None:
        """Wake the calls waiting in memory for `limit`, here and on the other replicas: a call in
        its line left, and they ask again for a sooner turn; so do the first LEAVE_RESUMES calls of
        each line left that are parked (deeper in a long line, parked calls keep the turn they were
        told: making every parked task of a long line due at each leave would cost more than it
        gives, while those in front are the ones a leave brings nearest)."""
        keys = self._line_wakes.pop(limit, set())
        self.wake(limit)
        announcing = asyncio.ensure_future(self._after_leave(limit, keys))
        self._leaving.add(announcing)
        announcing.add_done_callback(self._leaving.discard)

    async def _after_leave(self, limit: str, keys: set[str]) -> None:
        with contextlib.suppress(McpError):  # the store away: the others' waiters ask at their turn
            await self.store.announce_change(limit)
            if self.resume_soon is not None:
                for key in sorted(keys)[:LEAVE_RESUMES]:  # a bulk cancel over many tenants' keys: bounded
                    if front := await self.store.waiting_tasks(key, LEAVE_RESUMES):
                        await self.resume_soon(front)

    @contextlib.contextmanager
    def waiting(self, key: str, wake: Callable[[], None]) -> Iterator[None]:
        limit = self.limit_key(key) or key
        self.waiters[limit] += 1
        self._wakes[limit].add(wake)
        try:
            yield
        finally:
            self.waiters[limit] -= 1
            self._wakes[limit].discard(wake)
            if self.waiters[limit] <= 0:
                del self.waiters[limit], self._wakes[limit]

    def wake(self, limit_key: str) -> None:
        """Wake this replica's steps that wait for units of `limit_key`'s limit: it changed, and
        they ask again now rather than at the turn the old limit gave them."""
        for wake in list(self._wakes.get(limit_key, ())):
            wake()

    async def follow_changes(self) -> None:
        """Wake the waiting steps of the limits other replicas change, as the store tells of them
        (run as a background task). A key heard of that has no limit here was put through another
        replica: it is limited here at once, not at the next refresh (were it a delete, its calls
        ask the store, which grants anything, until the refresh)."""
        while True:
            try:
                async for limit_key in self.store.limit_changes():
                    if limit_key not in self.limited:
                        self._know(self.limited | {limit_key})
                    self.wake(limit_key)
                return  # a store no other process shares
            except Exception:  # a bug must not stop the wakes for good: the steps ask at their turn meanwhile
                logger.exception("following rate-limit changes failed unexpectedly; trying again")
                await asyncio.sleep(1)

    async def _changed(self, limit_key: str, waiting: list[str] | None = None) -> None:
        """A limit was put or deleted here: the calls waiting for it, on every replica and parked
        or not, ask again now (`waiting`: the tasks in its line, read before a delete took it)."""
        self.wake(limit_key)
        with contextlib.suppress(McpError):  # the store away: they ask at their turn
            await self.store.announce_change(limit_key)
            waiting = await self.store.waiting_tasks(limit_key) if waiting is None else waiting
            if self.resume_soon is not None and waiting:
                await self.resume_soon(waiting)

    async def refresh(self) -> list[tuple[RateLimitSpec, float]]:
        found = self.last = await self.store.list_rate_limits()
        self._know(frozenset(spec.key for spec, _ in found))
        return found

    def _know(self, limited: frozenset[str]) -> None:
        self.limited = limited
        prefixes = (key[: -len(TEMPLATE)] for key in limited if key.endswith(TEMPLATE))
        self.templates = tuple(sorted(prefixes, key=len, reverse=True))

    async def keep_fresh(self) -> None:
        """Refresh the set of limited keys forever (run as a background task): their keys alone,
        not every limit with its room (that costs a read of every key's grants; the gauges take it
        at their own pace, see sampled())."""
        while True:
            with contextlib.suppress(McpError):  # the store is down: the set in hand serves meanwhile
                self._know(await self.store.rate_limit_keys())
            await asyncio.sleep(self.refresh_seconds)

    async def sampled(self) -> list[tuple[RateLimitSpec, float]]:
        """Every limit with its room now, for the gauges (the last look when the store is away)."""
        with contextlib.suppress(McpError):
            await self.refresh()
        return self.last

    # ---- the operators' side ----------------------------------------------------------------
    async def put(self, given: registry_pb2.RateLimit) -> registry_pb2.RateLimit:
        spec = checked(given)
        await self.store.put_rate_limit(spec)
        self._know(self.limited | {spec.key})
        await self._changed(spec.key)
        return next(limit for limit in await self.list() if limit.key == spec.key)

    async def list(self) -> list[registry_pb2.RateLimit]:
        return [message_of(spec, room) for spec, room in await self.refresh()]

    async def get(self, key: str) -> registry_pb2.RateLimit:
        """The limit that applies to `key` (its own, else its template's, named in `template`) with
        the units `key` has available now; NotFound when none applies."""
        if not RATE_LIMIT_KEY.match(key):
            raise InvalidArgument(
                "the key is invalid",
                violations=[FieldViolation("key", "must be 1-256 characters, none a space or a control character")],
            )
        read = await self._read(key)
        if read is None:
            raise NotFound(
                f"no rate limit applies to key {key!r}", reason="RATE_LIMIT_NOT_FOUND", metadata={"key": key}
            )
        message = message_of(read.spec, read.available)
        if read.spec.key != key:
            message.key, message.template = key, read.spec.key
        if read.next_unit is not None:
            message.next_unit.FromNanoseconds(round(read.next_unit * 1e9))
        message.waiting = read.waiting
        return message

    async def _read(self, key: str) -> KeyRoom | None:
        """The key's own limit (one read), else its template's as this replica knows them (one
        more); only when neither is found, every limit is read again (this replica's set may be up
        to a second behind a put elsewhere) and the key looked up in it."""
        read = await self.store.read_rate_limit(key, key)
        template = self.limit_key(key)
        if read is None and template is not None and template != key:
            read = await self.store.read_rate_limit(key, template)
        if read is None:
            await self.refresh()
            template = self.limit_key(key)
            read = None if template is None else await self.store.read_rate_limit(key, template)
        return read

    async def delete(self, key: str) -> None:
        if not key:
            raise InvalidArgument("key is required", violations=[FieldViolation("key", "is required")])
        waiting: list[str] = []
        with contextlib.suppress(McpError):  # read before the line goes with the limit
            waiting = await self.store.waiting_tasks(key)
        if not await self.store.delete_rate_limit(key):
            raise NotFound(f"no rate limit has key {key!r}", reason="RATE_LIMIT_NOT_FOUND", metadata={"key": key})
        self._know(self.limited - {key})
        await self._changed(key, waiting)


def checked(given: registry_pb2.RateLimit) -> RateLimitSpec:
    """The limit a PutRateLimit asks for; InvalidArgument naming every field that is wrong."""
    problems = []
    if not RATE_LIMIT_KEY.match(given.key):
        problems.append(
            FieldViolation("rate_limit.key", "must be 1-256 characters, none a space or a control character")
        )
    elif TEMPLATE in given.key[:-1] or given.key == TEMPLATE:
        problems.append(
            FieldViolation("rate_limit.key", "a `*` may only end a key, after a prefix (a template: `tenant:*`)")
        )
    if not (math.isfinite(given.limit) and given.limit > 0):
        problems.append(FieldViolation("rate_limit.limit", "must be a number above 0"))
    period = given.period.ToNanoseconds() / 1e9 if given.HasField("period") else 0.0
    if not MIN_PERIOD <= period <= MAX_PERIOD:
        problems.append(FieldViolation("rate_limit.period", "must be between 1 ms and 30 days"))
    if not (math.isfinite(given.burst) and given.burst >= 0):
        problems.append(FieldViolation("rate_limit.burst", "must be 0 or more"))
    if problems:
        raise InvalidArgument("the rate limit is invalid", violations=problems, reason="BAD_RATE_LIMIT")
    return RateLimitSpec(given.key, given.limit, period, given.burst)


def message_of(spec: RateLimitSpec, room: float) -> registry_pb2.RateLimit:
    period = duration_pb2.Duration()
    period.FromNanoseconds(round(spec.period * 1e9))
    return registry_pb2.RateLimit(
        key=spec.key, limit=spec.limit, period=period, burst=spec.burst, available=round(room, 6)
    )
