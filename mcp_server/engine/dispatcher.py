"""Dispatcher: takes tasks from the store's priority queue and runs them, within limits.

It claims a task with a lease, which engine/leases.py keeps while the task runs (and stops the
run when the store has not renewed it in time), and takes over tasks whose lease ran out (their
replica died). At most `max_tasks_in_flight` tasks run at once on this replica; the rest wait in
the queue in priority order. A task that parked (every
branch waits) is not running: it goes back to the queue when a signal comes or its timer is
due (every replica looks for due timers every quarter second), and a run here that waits for
signals in some branches is told when its task has new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mcp_sdk.proto import task_pb2
from mcp_server.engine.cancelling import cancel_and_wait, cancel_until_stopped, raise_if_cancelled
from mcp_server.engine.failure_notes import FailureNotes
from mcp_server.engine.leases import LeaseKeeper
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import TaskQueue, TaskStore, WaitStore
from mcp_server.engine.queue_deadlines import SWEPT
from mcp_server.engine.queued_cancels import cancel_expired
from mcp_server.engine.runner import TaskRunner
from mcp_server.errors import LeaseLost, McpError, Unavailable
from mcp_server.settings import Settings

log = logging.getLogger(__name__)
# Tasks claimed at once: a batch per round trip, never more than there is room for. It starts at
# CLAIM_BATCH and doubles (up to CLAIM_BATCH_MAX) while claims come back full, so a burst (due
# timers, a deep queue) is drained in few round trips, while a shallow queue is shared out among
# replicas a few tasks at a time.
CLAIM_BATCH = 8
CLAIM_BATCH_MAX = 128
# a task claimed in these had run before: a cancel may have been left for it meanwhile
RESUMED = (task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING)


@dataclass
class _Running:
    lease_token: int
    lease_until: float  # monotonic: when its lease runs out unless renewed (counted from before the ask)
    stopped: bool = False  # stopped here, its lease about to run out unrenewed
    task: asyncio.Task[None] = field(init=False)
    cancel: dict[str, str] = field(default_factory=dict)
    final_live: bytes | None = None  # set when the run has ended and written its end
    waits: bool = False  # its workflow has wait nodes: it listens for signals
    signals: asyncio.Event = field(default_factory=asyncio.Event)  # set when it has new signals
    ending: asyncio.Event = field(default_factory=asyncio.Event)  # set when only its last write remains


class Dispatcher:
    """Runs queued tasks on this replica."""

    def __init__(
        self,
        queue: TaskQueue,
        tasks: TaskStore,
        runner: TaskRunner,
        plans: PlanCache,
        settings: Settings,
        waits: WaitStore | None = None,
        on_purged: Callable[[int], object] | None = None,
        on_stopped: Callable[[str], object] = lambda reason: None,
    ) -> None:
        self.queue = queue
        self.on_purged = on_purged  # told how many finished tasks each purge removed
        self.tasks = tasks
        self.waits = waits
        self.runner = runner
        self.plans = plans
        self.settings = settings
        self._running: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._finished = asyncio.Event()
        self._started = False
        self._queue_empty = False
        self._claim_failures = FailureNotes(log, "claiming tasks")
        self._upkeep_failures = FailureNotes(log, "taking over expired leases")
        self._leases = LeaseKeeper(queue, self._running, settings.lease_seconds, on_stopped)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._started = True
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._leases.renew_loop(), name="leases"),
            asyncio.create_task(self._leases.watch_loop(), name="lease watch"),
            asyncio.create_task(self._upkeep_loop(), name="takeovers"),
            asyncio.create_task(self._cancel_loop(), name="cancels"),
            asyncio.create_task(self._cancel_nudge_loop(), name="cancel nudges"),
        ]
        if self.waits is not None:
            self._loops.append(asyncio.create_task(self._timer_loop(), name="timers"))
            self._loops.append(asyncio.create_task(self._signal_loop(), name="signals"))
            self._loops.append(asyncio.create_task(self._nudge_loop(), name="signal nudges"))

    def wake(self) -> None:
        """Something was queued: look at the queue now rather than at the next poll."""
        self._wake.set()

    def has_room(self) -> bool:
        """Whether this replica may start another task now (not once it is stopping)."""
        return self._started and len(self._running) < self.settings.limits.max_tasks_in_flight

    def queue_seen_empty(self) -> bool:
        """Whether this replica's latest look at the queue found nothing waiting (it looks at
        least every quarter second while it has room, and at once when woken)."""
        return self._queue_empty

    def adopt(self, task: task_pb2.Task, lease_token: int, cancel_reason: str = "") -> asyncio.Task[None]:
        """Run a task this replica leased itself (when it stored it, or a waiting task it resumes
        or cancels): it starts at once, without a trip through the queue. With `cancel_reason` the
        run ends CANCELLED at once (whatever the in-flight limit: it is brief)."""
        snapshot = task_pb2.Task()
        snapshot.CopyFrom(task)  # the run changes its copy; the caller keeps its own
        running = self._start(snapshot, lease_token, time.monotonic())
        if cancel_reason:
            running.cancel["reason"] = cancel_reason  # the run sees it as it starts
        return running.task

    def signalled(self, task_id: str) -> None:
        """The task has a new signal: if it runs here, it takes it in now."""
        running = self._running.get(task_id)
        if running is not None:
            running.signals.set()

    def end_of(self, task_id: str) -> asyncio.Future[bytes | None] | None:
        """For a task running here: a future of the live part of its header once its run has
        ended and written it (None if the run ended otherwise: lease lost, store trouble, this
        replica stopping). None when the task does not run here. Waiting on the future (or
        dropping it) neither holds up nor cancels the run."""
        running = self._running.get(task_id)
        if running is None:
            return None
        ended: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def settle(run: asyncio.Task[None]) -> None:
            if not ended.done():
                ended.set_result(None if run.cancelled() else running.final_live)

        running.task.add_done_callback(settle)
        return ended

    async def cancel(self, task_id: str, reason: str, wait: bool = True) -> bool:
        """Cancel a task running here: its plugin calls are cancelled and it ends CANCELLED (after
        its clean-up, if it has one), waited for unless not `wait`. Returns False when the task
        does not run on this replica, or its run had ended or parked already (then its last write
        lands first: look at the task again)."""
        running = self._running.get(task_id)
        if running is None:
            return False
        if running.ending.is_set():
            await asyncio.wait([running.task])  # not `await`: a caller that goes away must not cancel it
            return False
        if running.cancel.get("reason"):  # being cancelled already: a second cancel waits for the first
            if wait:
                await asyncio.wait([running.task])
            return True
        running.cancel["reason"] = reason
        if wait:
            await cancel_and_wait(running.task)
        else:
            running.task.cancel()
        return True

    async def stop(self, grace: float) -> None:
        """Stop claiming; give running tasks `grace` seconds, then leave the rest to be resumed."""
        self._started = False
        stuck_loops = await cancel_until_stopped(self._loops, within=5)
        for loop in stuck_loops:
            frames = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in loop.get_stack(limit=5))
            log.error("the %s loop did not stop within 5 s of being cancelled (at %s)", loop.get_name(), frames)
        if self._running:
            await asyncio.wait([r.task for r in self._running.values()], timeout=grace)
        leftovers = list(self._running.items())
        for _, running in leftovers:
            running.task.cancel()
        if leftovers:
            _, stuck = await asyncio.wait([r.task for _, r in leftovers], timeout=5)
            if stuck:
                log.error("%d task runs did not stop within 5 s of being cancelled", len(stuck))
        # Expire the leases now so that a restart or another replica resumes those tasks at once.
        with contextlib.suppress(McpError):
            async for _ in self.queue.renew_leases({task_id: r.lease_token for task_id, r in leftovers}, 0):
                pass

    async def _claim_loop(self) -> None:
        with contextlib.suppress(Unavailable):
            await self.queue.release_expired_leases()  # tasks of a replica that died while we were down
        batch = CLAIM_BATCH
        while True:
            raise_if_cancelled()  # a store call may have swallowed it (engine/cancelling.py)
            claimed: list[tuple[task_pb2.Task, int]] = []
            room = self.settings.limits.max_tasks_in_flight - len(self._running)
            if room > 0:
                asked = time.monotonic()
                try:
                    claimed = await self.queue.claim_tasks(
                        self.settings.replica_id, self.settings.lease_seconds, min(room, batch)
                    )
                    batch = min(2 * batch, CLAIM_BATCH_MAX) if len(claimed) == batch else CLAIM_BATCH
                    self._claim_failures.worked()
                except Unavailable as exc:
                    self._claim_failures.failed(exc)
                    await asyncio.sleep(0.5)
                    continue
                except Exception:  # a bug must not stop this replica from ever claiming again
                    log.exception("claiming tasks failed unexpectedly; trying again")
                    await asyncio.sleep(0.5)
                    continue
            self._queue_empty = not claimed
            if not claimed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):  # not wait_for: see engine/cancelling.py
                        await self._wake.wait()
                continue
            if self._leases.slow(asked):
                claimed, asked = await self._leases.renew_first(claimed)
            for task, token in claimed:
                stale = self._running.get(task.task_id)
                if stale is not None:
                    # Our own lease ran out (the store was unreachable) and we claimed the task again:
                    # the old run is fenced out already; stop it before the new one starts.
                    await cancel_and_wait(stale.task)
                self._start(task, token, asked)

    def _start(self, task: task_pb2.Task, token: int, leased_at: float) -> _Running:
        running = _Running(token, leased_at + self.settings.lease_seconds)
        running.task = asyncio.create_task(self._run(task, running), name=f"task {task.task_id}")
        self._running[task.task_id] = running
        return running

    async def _run(self, task: task_pb2.Task, running: _Running) -> None:
        try:
            if task.status in RESUMED and not running.cancel:
                await self._cancel_left_for(task.task_id, running)
            plan = await self.plans.get(task.workflow_id, task.workflow_version)
            running.waits = bool(plan.waits)
            running.final_live = await self.runner.resume_from(
                task,
                plan,
                running.lease_token,
                running.cancel,
                running.signals,
                running.ending,
                lambda: self._leases.stale(task.task_id, running),
            )
        except LeaseLost:
            pass
        except McpError as exc:
            log.error("task %s could not run: %s", task.task_id, exc)
        finally:
            was_full = len(self._running) >= self.settings.limits.max_tasks_in_flight
            if self._running.get(task.task_id) is running:
                del self._running[task.task_id]
            # Look at the queue now only if the freed room may be wanted: this replica was full,
            # or its last look found tasks waiting. Otherwise the regular look (every quarter
            # second) finds what other replicas queue meanwhile, as it does on an idle replica.
            if was_full or not self._queue_empty:
                self._wake.set()

    async def _cancel_left_for(self, task_id: str, running: _Running) -> None:
        """A run taken over from a replica that stopped, or a parked one resumed, acts on a cancel
        left for it before anything of it runs again (its step in flight would be called again
        first, a clean-up would undo a charge it had just made again, and a parked task the
        request put back in the queue would only park again)."""
        with contextlib.suppress(Unavailable):  # the poll finds it once the store answers
            if reason := (await self.queue.cancel_requests([task_id])).get(task_id):
                running.cancel["reason"] = reason

    async def _cancel_loop(self) -> None:
        """Act on cancel requests that other replicas left for tasks running here (those the
        nudges told of are acted on already; a second cancel of a task changes nothing). Each in a
        task of its own: a cancel waits for the run's end, which a clean-up may put off for minutes."""
        acting: set[asyncio.Task[bool]] = set()
        try:
            while True:
                await asyncio.sleep(self.settings.cancel_poll_seconds)
                raise_if_cancelled()
                if not self._running:
                    continue
                try:
                    requests = await self.queue.cancel_requests(list(self._running))
                except Unavailable:
                    continue
                except Exception:  # a bug must not stop cancels for good
                    log.exception("reading cancel requests failed unexpectedly; trying again")
                    continue
                for task_id, reason in requests.items():
                    running = self._running.get(task_id)
                    if running is None or running.cancel.get("reason"):
                        continue  # ended meanwhile, or being cancelled already
                    act = asyncio.create_task(self.cancel(task_id, reason), name=f"cancel {task_id}")
                    acting.add(act)
                    act.add_done_callback(acting.discard)
        finally:  # stopping: a cancel under way must not outlive the loops
            for act in acting:
                act.cancel()

    async def _cancel_nudge_loop(self) -> None:
        """Act at once on the cancel requests other replicas leave for tasks running here, as the
        store tells of them (`_cancel_loop` finds what it does not tell)."""
        acting: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    async for task_id in self.queue.cancel_nudges():
                        if task_id in self._running:  # each in a task of its own: a cancel waits for the run's end
                            act = asyncio.create_task(self._act_on_cancel_request(task_id), name=f"cancel {task_id}")
                            acting.add(act)
                            act.add_done_callback(acting.discard)
                    return  # a store that cannot tell other processes: the poll alone
                except Exception:  # a bug must not stop nudges for good; the poll covers meanwhile
                    log.exception("following cancel nudges failed unexpectedly; trying again")
                    await asyncio.sleep(1)
        finally:  # stopping: a cancel under way must not outlive the loops
            for act in acting:
                act.cancel()

    async def _act_on_cancel_request(self, task_id: str) -> None:
        try:
            requests = await self.queue.cancel_requests([task_id])
        except Unavailable:
            return  # the poll finds it once the store answers
        for requested, reason in requests.items():
            await self.cancel(requested, reason)

    async def _timer_loop(self, interval: float = 0.25) -> None:
        """Queue the waiting tasks whose timers are due (any replica's; each once), and cancel the
        queued ones past their queue deadline."""
        assert self.waits is not None
        while True:
            await asyncio.sleep(interval)
            raise_if_cancelled()
            try:
                released, expired = await self.waits.release_due()
                if released:
                    self._wake.set()
                # queued past their queue deadline: they end, never started
                await cancel_expired(self.queue, self.runner.listeners, expired, SWEPT)
            except Unavailable:
                continue
            except Exception:  # a bug must not stop timers for good
                log.exception("releasing due timers failed unexpectedly; trying again")

    async def _nudge_loop(self) -> None:
        """Tell the runs here of signals sent through other replicas as the store hears of them."""
        assert self.waits is not None
        while True:
            try:
                async for task_id in self.waits.signal_nudges():
                    self.signalled(task_id)
                return  # a store that cannot tell other processes: the poll alone
            except Exception:  # a bug must not stop nudges for good; the poll covers meanwhile
                log.exception("following signal nudges failed unexpectedly; trying again")
                await asyncio.sleep(1)

    async def _signal_loop(self) -> None:
        """Tell the runs here that wait for signals when their tasks have new ones sent through
        another replica (this one's own are told at once, see `signalled`): what the nudges
        missed, every `signal_poll_seconds`."""
        assert self.waits is not None
        while True:
            await asyncio.sleep(self.settings.signal_poll_seconds)
            raise_if_cancelled()
            listening = [task_id for task_id, running in self._running.items() if running.waits]
            if not listening:
                continue
            try:
                pending = await self.waits.pending_signals(listening)
            except Unavailable:
                continue
            except Exception:  # a bug must not stop signals for good
                log.exception("reading pending signals failed unexpectedly; trying again")
                continue
            for task_id in pending:
                self.signalled(task_id)

    async def _upkeep_loop(self) -> None:
        """Every third of a lease, queue again the tasks whose leases ran out (their replica died
        or was cut off); every tenth time, purge finished tasks past their retention."""
        rounds = 0
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            raise_if_cancelled()
            rounds += 1
            try:
                if await self.queue.release_expired_leases():
                    self._wake.set()
                if rounds % 10 == 0:
                    purged = await self.tasks.purge_finished()
                    if purged and self.on_purged is not None:
                        self.on_purged(purged)
                self._upkeep_failures.worked()
            except Unavailable as exc:
                self._upkeep_failures.failed(exc)
            except Exception:  # a bug must not stop takeovers for good
                log.exception("taking over expired leases failed unexpectedly; trying again")
