"""The queue port: creating tasks, claiming them under leases, and cancelling them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports.tasks import StepRecord


@dataclass(frozen=True)
class Kept:
    """What a rerun keeps of the task it reruns (`source_task_id`): its step records as the new task
    stores them, and the digests of the large values they and its input refer to, which the store
    copies from the source's values itself (they never travel through the server)."""

    source_task_id: str
    records: Sequence[StepRecord]
    digests: Sequence[str]


@dataclass(frozen=True)
class LeaseReply:
    """One part of the store's answer to a renewal of leases: those it renewed, and those it
    found lost (another replica holds them now, or the task ended)."""

    renewed: Sequence[str]
    lost: Sequence[str]


@dataclass(frozen=True)
class QueueGroup:
    """What a task is queued under. Within a priority the queue is served round robin across
    groups (an owner's, or a workflow's concurrency key value), and at most `max_running` tasks
    of a group run at once (0: no cap), across every replica."""

    name: str
    max_running: int = 0

    @staticmethod
    def of_owner(owner: str) -> QueueGroup:
        return QueueGroup(f"o:{owner}")

    @staticmethod
    def of_key(workflow_id: str, key: str, max_running: int) -> QueueGroup:
        return QueueGroup(f"k:{workflow_id}:{key}", max_running)


@dataclass(frozen=True)
class OwnerShare:
    """How much of the queue one owner (the principal that submitted) may hold: `tasks` queued,
    and `bytes`, what their submissions stored (each task's fixed part and the values its input
    put beside it); 0: no limit. Tasks started at once and tasks waiting for a signal or a timer
    are not queued and do not count."""

    tasks: int = 0
    bytes: int = 0


NO_SHARE = OwnerShare()


@dataclass(frozen=True)
class GroupMember:
    """An unfinished task of a concurrency key's group (see TaskQueue.group_members)."""

    task_id: str
    status: int
    leased: bool

    @property
    def running(self) -> bool:
        """What counts against max_running: held by a replica and not waiting."""
        return self.leased and self.status in (task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING)


@dataclass(frozen=True)
class RequestedTask:
    """A task found by the request that made it, and that request's fingerprint."""

    task: task_pb2.Task
    fingerprint: str


class TaskQueue(Protocol):
    """Pending tasks in priority order, round robin across groups within a priority (FIFO within
    a group), leases, cancel requests."""

    async def create_task(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
        group: QueueGroup | None = None,
        share: OwnerShare = NO_SHARE,
    ) -> tuple[task_pb2.Task, bool]:
        """Store `task` (its fixed part: everything but status and what changes while it runs)
        with its first event and the `values` its input refers to, and queue it. A task of the
        same owner with the same request_id is returned instead (created False) when its
        fingerprint matches; when it does not, RequestIdReused. QueueFull past `max_queue`,
        OwnerQueueFull past its owner's `share` of the queue (every count may be up to
        QUEUE_LENGTH_CACHE_SECONDS old, plus what this process queued since; 0: no limit)."""
        ...

    async def create_leased(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
        kept: Kept | None = None,
        group: QueueGroup | None = None,
        follow: bool = False,
        share: OwnerShare = NO_SHARE,
    ) -> tuple[task_pb2.Task, bool, int]:
        """create_task for a task that `holder` starts at once: it is stored already leased
        (the lease token is returned; 0 when an existing task was returned) and never queued.
        If the holder dies, the lease runs out and the task is queued like any other. With
        `kept`, the task is a rerun: it is stored with those step records and values, in the same
        write, and listed among the source's reruns (the store may give it another task_id, in
        the source's partition; its request_id dedupes reruns apart from submissions). `group` (default:
        the owner's) is what the task is queued under; a group with max_running full gets the task
        queued, not leased (token 0). With `follow`, a task created and leased here has its log
        followed in this process from its first event (a watcher about to start reads nothing)."""
        ...

    async def task_of_request(self, owner: str, request_id: str, rerun: bool = False) -> RequestedTask | None:
        """The task `owner` made with `request_id` (a rerun's, with `rerun`: their ids are kept
        apart) and the fingerprint of the request that made it; None when none is stored. How a
        retry refused by a check that did not hold when it was first sent finds its task."""
        ...

    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        """The first queued task, leased to `owner` (with its new fencing token); None if none waits."""
        ...

    async def claim_tasks(self, owner: str, lease_seconds: float, count: int) -> list[tuple[task_pb2.Task, int]]:
        """Up to `count` queued tasks in queue order, leased to `owner`, in one round trip."""
        ...

    async def claim_waiting(self, task_id: str, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        """Lease a WAITING task to `owner` at once, queued or not (to cancel it, or to resume it
        where its signal came); None if it is not waiting (any more)."""
        ...

    async def group_members(self, group: QueueGroup) -> list[GroupMember]:
        """The unfinished tasks of a concurrency key's group (a `k:` group), in no order."""
        ...

    def renew_leases(
        self, leases: Mapping[str, int], lease_seconds: float, fresh: bool = False
    ) -> AsyncIterator[LeaseReply]:
        """Renew the leases {task_id: token} in one call, yielding each part of the store's answer
        as it comes (a store of one part answers once). A part that does not answer raises
        Unavailable once the others have answered: on a cluster, a master that is away holds up
        the leases of its own tasks only. `fresh`: the ask hedges one that has not answered, so it
        goes out on a connection opened for it (those idle beside a dead one may be dead too); a
        store without connections (SQLite) ignores it, and so does a Redis Cluster (its client
        keeps the nodes' pools)."""
        ...

    async def release_expired_leases(self) -> int:
        """Queue again the unfinished tasks whose lease ran out; return how many."""
        ...

    async def queue_length(self) -> int: ...

    async def queue_depth_by_priority(self) -> dict[int, int]: ...

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None:
        """Cancel a task that is still queued (writing `event`, numbered after its last);
        None when it is not queued (it runs, or it ended)."""
        ...

    async def request_cancel(self, task_id: str, reason: str) -> bool:
        """Leave a cancel request for the replica that runs the task; False (and nothing left)
        when the task has ended, or is gone."""
        ...

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The cancel requests left for any of `task_ids`: reason by task id."""
        ...

    def cancel_nudges(self) -> AsyncIterator[str]:
        """The ids of tasks a cancel request was just left for (through any replica), as they
        come, for as long as it is iterated; reconnects by itself. It may miss some (a dropped
        connection): `cancel_requests` is the record. A store with no way to tell another process
        ends it at once (the replicas' poll of `cancel_requests` finds every request)."""
        ...
