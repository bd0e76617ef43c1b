"""The leases of the runs on one replica: renewed every third of a lease (from ask to ask, however
long one takes, and whether or not the last has come back; an ask unanswered for a sixth of a lease
is asked again on a connection of its own), renewed before they start when their claim took long, and
their runs stopped when the store has not renewed them in time.

Once a lease has run out, another replica may take the run over and call its step again; this
replica's call still in flight must not go on beside that one (a concurrency key's cap counts at
the plugin). So a lease counts from before it was asked for, and the watch stops a run two thirds
of a lease after the last renewal that came back, whatever the renewal is doing: a store that does
not answer at all fails nothing. A run asks the same before each node (`stale`), for a replica
woken from a pause, where its next call may come before the watch's turn. A run stopped here goes
on from its last write wherever it is claimed next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from mcp_sdk.proto import task_pb2
from mcp_server.engine.cancelling import raise_if_cancelled
from mcp_server.engine.failure_notes import FailureNotes
from mcp_server.engine.ports import TaskQueue
from mcp_server.errors import Unavailable

log = logging.getLogger(__name__)


class LeasedRun(Protocol):
    """What the keeper needs of a run: its lease, when it runs out (monotonic, counted from before
    it was asked for), and the run to stop."""

    lease_token: int
    lease_until: float
    stopped: bool  # stopped here, its lease about to run out unrenewed
    task: asyncio.Task[None]


class LeaseKeeper:
    """Keeps the leases of `runs` (the dispatcher's, by task id) for `lease_seconds` at a time;
    `on_stopped` hears of each run stopped for its lease (`lease_lost`, `lease_unrenewed`)."""

    def __init__(
        self,
        queue: TaskQueue,
        runs: Mapping[str, LeasedRun],
        lease_seconds: float,
        on_stopped: Callable[[str], object],
    ) -> None:
        self.queue = queue
        self.runs = runs
        self.lease_seconds = lease_seconds
        self.on_stopped = on_stopped
        self._failures = FailureNotes(log, "lease upkeep")

    def slow(self, asked: float) -> bool:
        """Whether a claim asked at `asked` took so long that its leases may run out before the
        next renewal comes back: more than a sixth of a lease."""
        return time.monotonic() - asked > self.lease_seconds / 6

    async def renew_first(
        self, claimed: Sequence[tuple[task_pb2.Task, int]]
    ) -> tuple[list[tuple[task_pb2.Task, int]], float]:
        """Renew the leases of a slow claim before its runs start (else a run could make its first
        call and be stopped by the watch at once, over and over on a slow store): the claims the
        renewal kept, and when it was asked. Those it did not keep are left to run out."""
        asked = time.monotonic()
        kept: set[str] = set()
        with contextlib.suppress(Unavailable, TimeoutError):
            async with asyncio.timeout(2 * self.lease_seconds / 3):  # later, it would save no run (see _renew)
                async for reply in self.queue.renew_leases(
                    {t.task_id: token for t, token in claimed}, self.lease_seconds
                ):
                    kept.update(reply.renewed)
        return [(task, token) for task, token in claimed if task.task_id in kept], asked

    async def renew_loop(self) -> None:
        """Renew every lease held here, a third of a lease apart from ask to ask, whether or not
        the last ask has come back (a master that went silent answers only at its socket timeout,
        and must not hold up the others' leases until then); stop the runs whose leases another
        replica holds now."""
        interval = self.lease_seconds / 3
        rounds: set[asyncio.Task[None]] = set()
        asked = time.monotonic()
        try:
            while True:
                await asyncio.sleep(max(0.0, asked + interval - time.monotonic()))
                raise_if_cancelled()
                asked = time.monotonic()
                renewal = asyncio.create_task(self._renew(dict(self.runs), asked), name="lease renewal")
                rounds.add(renewal)
                renewal.add_done_callback(rounds.discard)
        finally:
            for renewal in rounds:
                renewal.cancel()

    async def _renew(self, held: dict[str, LeasedRun], asked: float) -> None:
        """One round: the leases of `held`, asked at `asked`. An ask with no answer a sixth of a
        lease on may have gone out on a connection that went silent (its peer gone, nothing
        refused, until the socket timeout): the round asks again beside it on a connection of its own,
        and the first to answer counts (a renewal is idempotent). Two thirds of a lease after its
        ask an answer saves no run (the watch has stopped those it did not renew), so the round
        ends there, and the one after it asks again."""
        lost: set[str] = set()
        asks = {asyncio.create_task(self._ask(held, asked, lost, fresh=False))}
        try:
            async with asyncio.timeout(2 * self.lease_seconds / 3):
                if not (await asyncio.wait(asks, timeout=self.lease_seconds / 6))[0]:
                    asks.add(asyncio.create_task(self._ask(held, asked, lost, fresh=True)))
                while True:
                    done, _ = await asyncio.wait(asks, return_when=asyncio.FIRST_COMPLETED)
                    if any(ask.exception() is None for ask in done):
                        break
                    asks -= done
                    if not asks:
                        raise next(iter(done)).exception()  # type: ignore[misc]
            self._failures.worked()
        except TimeoutError:
            self._failures.failed(
                Unavailable(f"the store did not answer a renewal within {2 * self.lease_seconds / 3:.1f} s")
            )
        except Unavailable as exc:
            self._failures.failed(exc)
        except Exception:  # a bug must not stop lease upkeep for good
            log.exception("lease upkeep failed unexpectedly; trying again")
        finally:
            for ask in asks:
                ask.cancel()

    async def _ask(self, held: dict[str, LeasedRun], asked: float, lost: set[str], fresh: bool) -> None:
        """One ask of a round (`lost`: the runs the round has stopped, by either of its asks)."""
        async for reply in self.queue.renew_leases(
            {t: r.lease_token for t, r in held.items()}, self.lease_seconds, fresh=fresh
        ):
            for task_id in reply.renewed:
                run = held[task_id]
                run.lease_until = max(run.lease_until, asked + self.lease_seconds)
            for task_id in reply.lost:
                if task_id not in lost and self.runs.get(task_id) is held[task_id]:
                    lost.add(task_id)
                    log.warning("task %s: lease lost, stopping it here", task_id)
                    held[task_id].task.cancel()
                    self.on_stopped("lease_lost")

    def stale(self, task_id: str, run: LeasedRun) -> bool:
        """Whether `run` must stop now: its lease has gone unrenewed for two thirds of a lease (from
        then on another replica may take it over). Asked by the watch, and by the run itself before
        each node: a replica that wakes from a pause (a frozen VM, SIGSTOP) may come to a run's next
        call before the watch's turn, and that call would go on beside the new owner's."""
        if run.stopped:
            return True
        if run.lease_until > time.monotonic() + self.lease_seconds / 3:
            return False
        run.stopped = True
        log.warning("task %s: the store has not renewed its lease in time: stopping it here", task_id)
        self.on_stopped("lease_unrenewed")
        return True

    async def watch_loop(self) -> None:
        """Stop the runs whose leases the store has not renewed for two thirds of a lease (it is
        away, or too slow to answer)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 6)
            raise_if_cancelled()
            for task_id, run in list(self.runs.items()):
                if not run.stopped and self.stale(task_id, run):
                    run.task.cancel()
