"""Where everything lives in Redis (state layout 2), on one node or on a Redis Cluster.

Tasks are spread over a fixed number of partitions (16 by default, fixed when the store is
first used). Each partition has its own hash tag, and everything of a partition shares it:
its queue, its leases, its listing indexes and every key of every task in it. So each write
(create, claim, checkpoint, cancel, purge) touches one slot and is one Lua script, atomic on a
single node and on a cluster alike. The tags are chosen so that their slots spread evenly
over the 16,384 slots, hence over a cluster's masters.

    {P}              the prefix (`mcp:` unless the URL says `?prefix=`), T a partition tag
    P{T}:q           queue: zset, score -priority, member a group's turn `<micros>:<micros>:g:<group>|<priority>`
                     (round robin across groups within a priority), and beside it each group's
                     FIFO of tasks and its running tasks (see fair_lua.py)
    P{T}:l           leases: zset task_id -> expiry (ms)
    P{T}:xe          finished tasks: zset task_id -> when it ended (ms); purged once the retention has passed
    P{T}:x           retention of tasks that ended before xe existed: zset task_id -> when it is purged (ms)
    P{T}:c           cancel requests: zset task_id -> when it was asked (ms), until the task ends
    P{T}:d           due times: zset task_id -> when a WAITING task resumes without a signal (ms)
    P{T}:sg          signals not taken in by the replica holding the task: zset task_id -> when (ms)
    P{T}:w           the wake-up stream of this replica set's watchers (see streams.py)
    P{T}:i:<index>   listing indexes: zset task_id -> create micros; <index> is `a` (all),
                     `s:<status>`, `o:<owner>`, `os:<status>:<owner>`, `w:<workflow>`, `ws:<status>:<workflow>`,
                     `l:<digest>` (a label `key=value`: see label_index)
    P{T}:t:<id>      the task's header hash: f (fixed part), v (live part), st, tok (fencing
                     token), seq (last event written), pr, ow, wf, ct, fp, qm, by, cx, ro (rerun of),
                     lb (the digests of its labels' indexes, space-separated)
    P{T}:t:<id>:s    step records: hash path -> serialized StepState
    P{T}:t:<id>:o    step order: hash index -> path
    P{T}:t:<id>:e    events: stream, entry id 0-<sequence>
    P{T}:t:<id>:v    large values: hash SHA-256 -> serialized Value
    P{T}:t:<id>:vl   large values a rerun shares with the task that holds them: hash SHA-256 -> that task
    P{T}:t:<id>:b    the tasks that share this task's values (its :v is then kept until it is purged): set
    P{T}:t:<id>:r    the task's reruns: zset task_id -> create micros (a rerun lives in its source's partition)
    P{T}:t:<id>:c    the step-cache keys its steps stored outputs under: set (see cache.py), so that
                     DeleteTask removes those outputs
    P{T}:t:<id>:g    signals: hash n (how many), tk (how many taken in), <index> -> SignalTaskRequest,
                     s:<index> -> `<SIGNAL_RECEIVED sequence>|<step>`, r:<request_id> -> index
    P{T}:t:<id>:w    waiting steps: hash path -> `<signal>|<deadline ms>|<since ms>|<assigned index>`
    P{wf}:...        workflows;  P{reg}:...  registry and breakers
    P{meta}:layout   the layout, with retention_ms and labels_indexed (retention.py, label_index.py)
    P{cap}:...       the capacity ledger of plugin instances: grants, waiters, capacities, use
    P{rl}:...        rate limits: definitions, GCRA state, window sums, each key's recent grants
    P{fair}:last     when each queue group was last granted a task (see fair_lua.py)
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from functools import cached_property

from redis.crc import key_slot

SLOTS = 16384
DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 1024


def partition_tags(count: int) -> tuple[str, ...]:
    """One hash tag per partition, the i-th hashing into the i-th of `count` equal slot ranges."""
    tags = []
    for index in range(count):
        low, high = index * SLOTS // count, (index + 1) * SLOTS // count
        attempt = 0
        while not low <= key_slot(f"p{index}.{attempt}".encode()) < high:
            attempt += 1
        tags.append(f"p{index}.{attempt}")
    return tuple(tags)


@dataclass(frozen=True)
class TaskKeys:
    header: str
    steps: str
    order: str
    events: str
    values: str
    signals: str
    waits: str
    links: str
    reruns: str
    caches: str

    @property
    def all(self) -> tuple[str, ...]:
        return (self.header, self.steps, self.order, self.events, self.values)


@dataclass(frozen=True)
class Layout:
    """Key names for one prefix and partition count."""

    prefix: str
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(
                f"the key prefix {self.prefix!r} must not contain braces (they would change the hash tags)"
            )
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}")

    @cached_property
    def tags(self) -> tuple[str, ...]:
        return partition_tags(self.partitions)

    def partition_of(self, task_id: str) -> int:
        return zlib.crc32(task_id.encode()) % self.partitions

    def base(self, partition: int) -> str:
        return f"{self.prefix}{{{self.tags[partition]}}}:"

    def task(self, task_id: str) -> TaskKeys:
        head = f"{self.base(self.partition_of(task_id))}t:{task_id}"
        return TaskKeys(head, *(f"{head}:{suffix}" for suffix in ("s", "o", "e", "v", "g", "w", "vl", "r", "c")))

    def task_prefix(self, partition: int) -> str:
        """What a script prepends to a task id to name its header (and, with a suffix, its other keys)."""
        return f"{self.base(partition)}t:"

    def queue(self, partition: int) -> str:
        return f"{self.base(partition)}q"

    def leases(self, partition: int) -> str:
        return f"{self.base(partition)}l"

    def expiry(self, partition: int) -> str:
        return f"{self.base(partition)}x"

    def ends(self, partition: int) -> str:
        """Finished tasks of this partition: zset task_id -> when it ended (ms)."""
        return f"{self.base(partition)}xe"

    def cancels(self, partition: int) -> str:
        """Cancel requests for tasks of this partition: zset task_id -> when it was asked (ms)."""
        return f"{self.base(partition)}c"

    def due(self, partition: int) -> str:
        """When WAITING tasks of this partition resume without a signal, and when its queued tasks
        with a queue deadline end unstarted: zset task_id -> ms."""
        return f"{self.base(partition)}d"

    def event_waits(self, partition: int) -> str:
        """The prefix of this partition's index of steps that wait for an event: a set per
        (signal, key), `<prefix><signal>|<key>`, of `<task_id>|<path>` (see waits_lua.PUT_WAIT)."""
        return f"{self.base(partition)}ew:"

    def signals_pending(self, partition: int) -> str:
        """Tasks of this partition holding signals their replica has not taken in: zset task_id -> ms."""
        return f"{self.base(partition)}sg"

    def wake(self, partition: int) -> str:
        return f"{self.base(partition)}w"

    def index_prefix(self, partition: int) -> str:
        return f"{self.base(partition)}i:"

    def index(self, partition: int, status: int = 0, owner: str | None = None, workflow: str | None = None) -> str:
        """The index that lists exactly the tasks of one status (0: any), owner and/or workflow.
        With both an owner and a workflow, the owner's index (the caller filters the rest)."""
        base = self.index_prefix(partition)
        if owner is not None:
            return f"{base}os:{status}:{owner}" if status else f"{base}o:{owner}"
        if workflow is not None:
            return f"{base}ws:{status}:{workflow}" if status else f"{base}w:{workflow}"
        return f"{base}s:{status}" if status else f"{base}a"

    def label_index(self, partition: int, key: str, value: str) -> str:
        """The index of the tasks that carry label `key`=`value` (named by a digest: a label's
        value may hold any character; a listing checks the labels of what it reads)."""
        digest = hashlib.sha1(f"{key}\0{value}".encode()).hexdigest()[:24]
        return f"{self.index_prefix(partition)}l:{digest}"

    def indexes_of(self, partition: int, status: int, owner: str, workflow: str) -> list[str]:
        """Every index a task of this status, owner and workflow belongs to."""
        return [
            self.index(partition),
            self.index(partition, status),
            self.index(partition, 0, owner),
            self.index(partition, status, owner),
            self.index(partition, 0, workflow=workflow),
            self.index(partition, status, workflow=workflow),
        ]

    # ---- global structures, each in one slot ------------------------------------------------
    @property
    def meta(self) -> str:
        return f"{self.prefix}{{meta}}:layout"

    def workflow(self, workflow_id: str) -> str:
        return f"{self.prefix}{{wf}}:wf:{workflow_id}"

    def event_subscribers(self, event: str) -> str:
        """The workflows whose version named `event` in its triggers: workflow_id -> that version
        (see RedisWorkflows.subscribers). Nothing else: a replica of an earlier build takes every
        field for a workflow's and drops those whose workflow is gone."""
        return f"{self.prefix}{{wf}}:on:{event}"

    @property
    def waited_events(self) -> str:
        """The events some version waits for -> the longest lookback of those waits (a hash)."""
        return f"{self.prefix}{{wf}}:waited"

    @property
    def cancelling_events(self) -> str:
        """The event names some version's cancel_on names (a set). Apart from the subscriber
        hashes: a replica from before cancel_on would take a field there for a workflow's and drop it."""
        return f"{self.prefix}{{wf}}:cancelling"

    @property
    def waited_events_recorded(self) -> str:
        """Set once `waited_events` records every stored version's waits (a store from before it had
        none, or kept them where a replica of an earlier build dropped them; see
        RedisWorkflows.event_interest)."""
        return f"{self.prefix}{{wf}}:waited:apart"

    def deleted_workflow(self, workflow_id: str) -> str:
        """A workflow's deleted versions (see RedisWorkflows)."""
        return f"{self.prefix}{{wf}}:wfd:{workflow_id}"

    @property
    def deleted_workflows(self) -> str:
        """The ids of workflows with deleted versions, scored by when they were last deleted (ms)."""
        return f"{self.prefix}{{wf}}:wfdel"

    @property
    def cancel_channel(self) -> str:
        """The pub/sub channel that tells every replica of a cancel request for a task (not a key)."""
        return f"{self.prefix}cancels"

    @property
    def rate_limit_channel(self) -> str:
        """The pub/sub channel that tells every replica of a rate limit put or deleted (not a key)."""
        return f"{self.prefix}ratelimits"

    @property
    def signal_channel(self) -> str:
        """The pub/sub channel that tells every replica of a task with a new signal (not a key)."""
        return f"{self.prefix}signals"

    @property
    def cache_channel(self) -> str:
        """The pub/sub channel that tells every replica of a task whose cached outputs were removed
        (its id), so that each drops the copies it keeps in memory (not a key)."""
        return f"{self.prefix}cache-removed"

    @property
    def workflow_versions(self) -> str:
        return f"{self.prefix}{{wf}}:ver"

    @property
    def workflow_ids(self) -> str:
        return f"{self.prefix}{{wf}}:ids"

    @property
    def protocols(self) -> str:
        return f"{self.prefix}{{reg}}:protocols"

    @property
    def breakers(self) -> str:
        return f"{self.prefix}{{reg}}:breakers"

    @property
    def rate_limits(self) -> tuple[str, ...]:
        """The rate limits, in one slot: definitions, theoretical arrival times, window sums,
        the grant counter (see ratelimits_lua.py)."""
        return tuple(f"{self.prefix}{{rl}}:{name}" for name in ("d", "t", "w", "n"))

    @property
    def rate_grants_prefix(self) -> str:
        """Prefix of each key's grants of the last period (a zset), in the same slot."""
        return f"{self.prefix}{{rl}}:g:"

    @property
    def rate_lines_prefix(self) -> str:
        """Prefix of the structures of each key's line of waiting calls (ratelimits_lua.py), in
        the same slot."""
        return f"{self.prefix}{{rl}}:l:"

    @property
    def rate_state_prefix(self) -> str:
        """Prefix of the GCRA state of each key limited by a template (a hash that expires once
        it could hold nothing back), in the same slot."""
        return f"{self.prefix}{{rl}}:s:"

    @property
    def fair_turns(self) -> str:
        """When each queue group was last granted a task, on any partition (ms): a hash, a hint
        the claim orders groups by (see queue.py)."""
        return f"{self.prefix}{{fair}}:last"

    @property
    def capacity(self) -> tuple[str, ...]:
        """The capacity ledger, in one slot: grants, grant data, waiters, waiter data,
        capacities, in use (see capacity_lua.ACQUIRE_CAPACITY)."""
        return tuple(f"{self.prefix}{{cap}}:{name}" for name in ("g", "gd", "w", "wd", "c", "u"))
