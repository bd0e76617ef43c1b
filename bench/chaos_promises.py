"""`python -m bench.chaos_promises [--seconds 90] [--store redis|sqlite|cluster] [--replicas 2]
[--kill-redis] [--partition] [--seed N]`: the once-only promises of schedules, triggers,
concurrency keys, rate limits, the step cache and what calls work off, under kill -9 (and with
`--partition`, a replica cut off from Redis now and then while the others go on).

`bench.chaos` searches random workflows for records a killed replica leaves wrong; this soak
holds the features around the workflows to what their docs promise, on the same kill loop (a
replica, or with `--kill-redis` Redis too, killed -9 every 0.5-3 s and started again; every call
to a live replica, retried on another with the same request id):

- **schedules** (docs/schedules.md): two schedules fire every second (overlap ALLOW_ALL, a
  catch-up window of an hour) and are backfilled over what they already fired, now and then.
  Each fire time has exactly one task, and none between the first and the last is missing. Two
  more fire every second a task that takes 1.5 s, one skipping and one buffering a fire while
  the last task is unfinished: no task of theirs begins before the one before it ended;
- **triggers** (docs/events.md): events are published to two workflows that trigger on them,
  some published again with the same id. Each event has exactly one task in each workflow;
- **concurrency keys** (docs/fairness.md): tasks of a key capped at 2 (QUEUE) and at 1
  (CANCEL_IN_PROGRESS) call a plugin that counts its calls in flight per key. Never more than
  the cap at once;
- **rate limits** (docs/rate-limits.md): calls take a unit of a limit of 20 per 2 s, others of
  a template's 10 per 2 s for each of two tenants, each pressed by a backlog; now and then one of
  the two is put again as it is, and the calls waiting for it wake and ask again. The plugin never
  sees more than the limit within any 1.5 s (a window a little shorter than the period, as a
  call reaches the plugin a moment after its grant), nor more than the limit allows over the
  soak;
- **the step cache** (docs/usage-and-cache.md): a cached `whoami` step keyed by one of a few
  values. Its output is always that of the task it says it came from;
- **what calls work off** (bench/chaos_call_offs.py): a debounce, `cancel_on`, queue timeouts,
  and the submission limit every submission and publish passes;
- **bulk actions** (bench/chaos_bulk.py): reruns and cancels of rounds of tasks, each task once.

Every task must end, and end completed unless a promise says otherwise (CANCEL_IN_PROGRESS
replaces tasks). Prints what it saw and every broken promise; exits 1 if any.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from bench import chaos_bulk, chaos_call_offs
from bench.chaos import TERMINAL, TERMINAL_EVENTS, Replicas, Soak, kill_loop, kill_loop_arguments, redis_rows
from bench.harness import percentile
from bench.report import table
from mcp_sdk.proto import (
    events_pb2,
    events_pb2_grpc,
    protocol_pb2,
    protocol_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    task_pb2,
)
from mcp_server.engine.values import as_object, struct_to_dict, value_to_python

EVENT = "chaos.order"
KEYS = ["a", "b", "c"]
QUEUE_CAP, REPLACE_CAP = 2, 1
LIMIT, PERIOD, WINDOW = 20, 2.0, 1.5  # units per period; the plugin-side window checked
SCHEDULES = ["every-second-1", "every-second-2"]
# schedules whose tasks run longer than their interval: never two unfinished at once
OVERLAPPING = {"skip-1": schedule_pb2.OVERLAP_POLICY_SKIP, "buffer-1": schedule_pb2.OVERLAP_POLICY_BUFFER_ONE}
TENANTS, TENANT_LIMIT = ["x", "y"], 10  # `tenant:*`: each tenant's own 10 units per period
SUBMITTERS = 3  # of each kind of request
# workflows whose tasks may end CANCELLED, and the reason that allows it
CANCEL_REASONS = {
    "promise-replace": "CONCURRENCY_LIMIT:",
    chaos_bulk.NAPPING: "bulk action ",
    **chaos_call_offs.CANCEL_REASONS,
}
UNLIMITED = {"promise-scheduled", "promise-slow"}  # a schedule's fires pass no submission limit


def workflows() -> list[dict[str, Any]]:
    """The soak's workflows, one per promise (two for triggers)."""

    def keyed(prefix: str, ms: int) -> dict[str, Any]:
        return {"protocol": "keyed", "input": f"{{'key': '{prefix}:' + input.k, 'ms': {ms}}}"}

    return [
        {
            "workflow_id": "promise-queue",
            "concurrency": {"key": "input.k", "max_running": QUEUE_CAP, "strategy": "CONCURRENCY_STRATEGY_QUEUE"},
            "root": {
                "id": "root",
                "sequence": {
                    "children": [{"id": "one", "step": keyed("q", 80)}, {"id": "two", "step": keyed("q", 80)}]
                },
            },
        },
        {
            "workflow_id": "promise-replace",
            "concurrency": {
                "key": "input.k",
                "max_running": REPLACE_CAP,
                "strategy": "CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS",
            },
            "root": {"id": "hold", "step": keyed("r", 200)},
        },
        {
            "workflow_id": "promise-limited",
            "root": {
                "id": "tick",
                "step": {"protocol": "tick", "input": "{'tag': 'rl'}", "rate_limits": [{"key": "provider:rl"}]},
            },
        },
        {
            "workflow_id": "promise-cached",
            "root": {"id": "who", "step": {"protocol": "whoami", "cache": {"key": "input.k", "ttl": "3600s"}}},
        },
        *(
            {
                "workflow_id": f"promise-triggered-{name}",
                "triggers": [{"event": EVENT, "input": "{'id': event.data.id}"}],
                "root": {"id": "echo", "step": {"protocol": "echo"}},
            }
            for name in ("a", "b")
        ),
        {"workflow_id": "promise-scheduled", "root": {"id": "echo", "step": {"protocol": "echo"}}},
        {"workflow_id": "promise-slow", "root": {"id": "nap", "step": {"protocol": "sleep", "input": "{'ms': 1500}"}}},
        {
            "workflow_id": "promise-tenant",
            "root": {
                "id": "tick",
                "step": {
                    "protocol": "tick",
                    "input": "{'tag': 'tenant:' + input.t}",
                    "rate_limits": [{"key_expression": "'tenant:' + input.t"}],
                },
            },
        },
        *chaos_call_offs.workflows(),
        *chaos_bulk.workflows(),
    ]


@dataclass
class PromiseSoak:
    """The load, and what it asked for: the tasks by workflow, the events published."""

    replicas: Replicas
    tasks: dict[str, str] = field(default_factory=dict)  # task id: workflow id
    events: list[str] = field(default_factory=list)
    # the tasks each publish of an event answered, by (event, workflow): one each, however often sent
    answered: collections.defaultdict[tuple[str, str], set[str]] = field(
        default_factory=lambda: collections.defaultdict(set)
    )
    republished: int = 0
    backfills: int = 0
    puts: int = 0  # of a rate limit, again, while calls wait for it
    scheduled_from: float = 0.0
    # per key of promise-replace, each submission's start and answer (monotonic) and its task
    replacing: collections.defaultdict[str, list[tuple[float, float, str]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    slowest: float = 0.0  # seconds, the longest a request took, retries on other replicas included
    call_offs: chaos_call_offs.CallOffs = field(init=False)
    bulk: chaos_bulk.Bulk = field(init=False)

    def __post_init__(self) -> None:
        self.call_offs = chaos_call_offs.CallOffs(self.replicas, self.tasks)
        self.bulk = chaos_bulk.Bulk(self.replicas, self.tasks)

    async def submit(self, workflow_id: str, data: dict[str, Any]) -> None:
        request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, request_id=uuid.uuid4().hex)
        request.input_data.update(data)
        began = time.monotonic()
        task = (await self.replicas.call("SubmitTask", request)).task
        self.tasks[task.task_id] = workflow_id
        if workflow_id == "promise-replace":
            self.replacing[data["k"]].append((began, time.monotonic(), task.task_id))

    async def publish(self) -> None:
        again = bool(self.events) and random.random() < 0.2  # as a publisher whose answer was lost would
        event_id = random.choice(self.events) if again else uuid.uuid4().hex
        request = events_pb2.PublishEventRequest(name=EVENT, request_id=event_id)
        request.data.update({"id": event_id})
        answer = await self.replicas.call("PublishEvent", request, service=events_pb2_grpc.EventServiceStub)
        for task in answer.tasks:
            self.tasks[task.task_id] = task.workflow_id
            self.answered[(event_id, task.workflow_id)].add(task.task_id)
        if again:
            self.republished += 1
        else:
            self.events.append(event_id)

    async def put_again(self) -> None:
        """The plain limit or the template put again as it is: every call waiting for it wakes and
        asks again (docs/rate-limits.md), and its windows must hold all the same."""
        key, units = random.choice([("provider:rl", LIMIT), ("tenant:*", TENANT_LIMIT)])
        limit = registry_pb2.RateLimit(key=key, limit=units, period=duration_pb2.Duration(seconds=int(PERIOD)))
        request = registry_pb2.PutRateLimitRequest(rate_limit=limit)
        await self.replicas.call("PutRateLimit", request, service=registry_pb2_grpc.ProtocolRegistryStub)
        self.puts += 1

    async def backfill(self) -> None:
        """Fire times a schedule already fired, again: none may start a second task."""
        start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
        start.FromMilliseconds(int(self.scheduled_from * 1000))
        end.FromMilliseconds(int((time.time() - 1) * 1000))
        request = schedule_pb2.BackfillScheduleRequest(
            schedule_id=random.choice(SCHEDULES), start_time=start, end_time=end
        )
        await self.replicas.call("BackfillSchedule", request, service=schedule_pb2_grpc.ScheduleServiceStub)
        self.backfills += 1

    async def load(self, until: float) -> None:
        """Each kind of request at its own steady rate (per second), from a few submitters each:
        near what the capped keys and the rate limit can serve, so that they are pressed and the
        backlog stays bounded."""
        kinds: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (20, lambda: self.submit("promise-queue", {"k": random.choice(KEYS)})),
            (8, lambda: self.submit("promise-replace", {"k": random.choice(KEYS)})),
            (LIMIT / PERIOD * 1.6, lambda: self.submit("promise-limited", {})),
            (TENANT_LIMIT / PERIOD * 3.2, lambda: self.submit("promise-tenant", {"t": random.choice(TENANTS)})),
            (20, lambda: self.submit("promise-cached", {"k": random.choice(KEYS)})),
            (20, self.publish),
            (0.2, self.backfill),
            (0.3, self.put_again),
            *self.call_offs.kinds(),
        ]

        async def submitter(rate: float, request: Callable[[], Awaitable[None]]) -> None:
            while time.monotonic() < until:
                await asyncio.sleep(random.expovariate(rate / SUBMITTERS))
                began = time.monotonic()
                await request()
                self.slowest = max(self.slowest, time.monotonic() - began)

        submitters = (submitter(rate, request) for rate, request in kinds for _ in range(SUBMITTERS))
        await asyncio.gather(*submitters, self.bulk.load(until))


async def set_up(replicas: Replicas) -> float:
    """The workflows, the rate limit and the schedules; the time the schedules were created."""
    client = replicas.any_client()
    for definition in workflows():
        await client.create(definition)
    period = duration_pb2.Duration(seconds=int(PERIOD))
    for key, limit in (("provider:rl", LIMIT), ("tenant:*", TENANT_LIMIT), ("submit", chaos_call_offs.SUBMIT_LIMIT)):
        await replicas.call(
            "PutRateLimit",
            registry_pb2.PutRateLimitRequest(rate_limit=registry_pb2.RateLimit(key=key, limit=limit, period=period)),
            service=registry_pb2_grpc.ProtocolRegistryStub,
        )
    created = time.time()
    plans = [(schedule_id, schedule_pb2.OVERLAP_POLICY_ALLOW_ALL, "promise-scheduled") for schedule_id in SCHEDULES]
    plans += [(schedule_id, overlap, "promise-slow") for schedule_id, overlap in OVERLAPPING.items()]
    for schedule_id, overlap, workflow_id in plans:
        schedule = schedule_pb2.Schedule(
            schedule_id=schedule_id,
            spec=schedule_pb2.ScheduleSpec(every=[duration_pb2.Duration(seconds=1)]),
            action=task_pb2.SubmitTaskRequest(workflow_id=workflow_id),
            overlap=overlap,
            catchup_window=duration_pb2.Duration(seconds=3600),
        )
        request = schedule_pb2.CreateScheduleRequest(schedule=schedule)
        await replicas.call("CreateSchedule", request, service=schedule_pb2_grpc.ScheduleServiceStub)
    await asyncio.sleep(1.2)  # every replica knows of the limit within a second
    return created


async def pause_schedules(replicas: Replicas) -> float:
    """Pause every schedule; the time they stopped firing."""
    for schedule_id in [*SCHEDULES, *OVERLAPPING]:
        request = schedule_pb2.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(schedule_id=schedule_id, paused=True)
        )
        request.update_mask.paths.append("paused")
        await replicas.call("UpdateSchedule", request, service=schedule_pb2_grpc.ScheduleServiceStub)
    return time.time()


async def schedule_problems(replicas: Replicas, created: float, paused: float) -> tuple[int, list[str]]:
    """Exactly one task per fire time of each schedule, none missing from the first to the
    last; the number of fire times seen."""
    found, fired = [], 0
    for schedule_id in SCHEDULES:
        tasks = await replicas.labelled({"mcp/schedule": schedule_id})
        by_time = collections.Counter(task.labels["mcp/fire-time"] for task in tasks)
        found += [f"schedule {schedule_id}: fire time {at} has {n} tasks" for at, n in by_time.items() if n > 1]
        seconds = sorted(timestamp_of(at) for at in by_time)
        fired += len(seconds)
        if not seconds:
            found.append(f"schedule {schedule_id}: no task at all")
            continue
        missing = sorted(set(range(seconds[0], seconds[-1] + 1)) - set(seconds))
        if missing:
            found.append(f"schedule {schedule_id}: fire times {missing[:10]} have no task ({len(missing)} missing)")
        if seconds[0] > created + 3:
            found.append(f"schedule {schedule_id}: first fire {seconds[0] - created:.1f} s after its creation")
        if seconds[-1] < paused - 5:
            found.append(f"schedule {schedule_id}: last fire {paused - seconds[-1]:.1f} s before it was paused")
    return fired, found


async def overlap_problems(replicas: Replicas) -> tuple[list[task_pb2.Task], list[str]]:
    """A schedule that skips or buffers never has two tasks unfinished at once: each task is
    created after the one before it ended. Their tasks, and what broke."""
    found, every = [], []
    for schedule_id, overlap in OVERLAPPING.items():
        listed = [
            (await replicas.call("GetTask", task_pb2.GetTaskRequest(task_id=task.task_id))).task
            for task in await replicas.labelled({"mcp/schedule": schedule_id})
        ]
        every += listed
        policy = schedule_pb2.OverlapPolicy.Name(overlap)
        if len(listed) < 3:
            found.append(f"schedule {schedule_id} ({policy}): {len(listed)} tasks")
        ordered = sorted(listed, key=lambda task: task.create_time.ToNanoseconds())
        for before, after in itertools.pairwise(ordered):
            if before.status not in TERMINAL or after.create_time.ToNanoseconds() < before.end_time.ToNanoseconds():
                found.append(
                    f"schedule {schedule_id} ({policy}): task {after.task_id} began before {before.task_id} ended"
                )
    return every, found


def timestamp_of(rfc3339: str) -> int:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(rfc3339)
    return stamp.seconds


async def trigger_problems(replicas: Replicas, events: list[str], workflow_ids: tuple[str, ...]) -> list[str]:
    """Each event published has exactly one task in each workflow that triggers on it."""
    found = []
    for start in range(0, len(events), 50):
        batch = events[start : start + 50]
        listed = await asyncio.gather(*(replicas.labelled({"mcp/event-id": event_id}) for event_id in batch))
        for event_id, tasks in zip(batch, listed, strict=True):
            by_workflow = collections.Counter(task.workflow_id for task in tasks)
            for name in workflow_ids:
                if by_workflow[name] != 1:
                    found.append(f"event {event_id}: {by_workflow[name]} tasks of {name}")
    return found


def most_within(ticks: list[float], window: float) -> int:
    """The most of these times within any `window` seconds."""
    ticks = sorted(ticks)
    most = first = 0
    for last, at in enumerate(ticks):
        while at - ticks[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def limit_problems(ticks: list[float], seconds: float, key: str, limit: int) -> list[str]:
    """No more than the limit (there is no burst) in any window a little shorter than the period,
    nor over the whole soak more than the limit allows."""
    found = []
    if (most := most_within(ticks, WINDOW)) > limit:
        found.append(f"rate limit {key}: {most} calls within {WINDOW} s, the limit is {limit} per {PERIOD} s")
    allowed = limit * (seconds / PERIOD + 1)
    if len(ticks) > allowed:
        found.append(f"rate limit {key}: {len(ticks)} calls in {seconds:.1f} s, at most {allowed:.0f} allowed")
    return found


def latest(submissions: list[tuple[float, float, str]]) -> str | None:
    """The task submitted last, when its submission began after every other one was answered:
    the one CANCEL_IN_PROGRESS lets win."""
    ordered = sorted(submissions)
    if not ordered:
        return None
    *others, (began, _, task_id) = ordered
    return task_id if all(answered < began for _, answered, _ in others) else None


def task_problems(task: task_pb2.Task, workflow_id: str, outputs: dict[tuple[str, str], Any]) -> list[str]:
    """An unfinished or failed task, a replaced task without its reason, a cached output that is
    not its source's."""
    name = f"task {task.task_id} of {workflow_id}"
    if task.status == task_pb2.TASK_STATUS_COMPLETED or (
        task.status == task_pb2.TASK_STATUS_FAILED and workflow_id == chaos_bulk.FAILING
    ):
        found = []
    elif task.status == task_pb2.TASK_STATUS_CANCELLED and (why := CANCEL_REASONS.get(workflow_id)):
        found = [] if task.error.message.startswith(why) else [f"{name}: cancelled {task.error.message!r}"]
    else:
        found = [f"{name}: {task_pb2.TaskStatus.Name(task.status)} {task.error.message!r}"]
    for state in task.steps:
        if state.status == task_pb2.STEP_STATUS_RUNNING:
            found.append(f"{name}: step {state.path} left running")
        if workflow_id == "promise-cached" and state.status == task_pb2.STEP_STATUS_COMPLETED:
            output = as_object(value_to_python(state.output))
            made_by = output.get("task_id")
            source = state.cached_from if state.cached else task.task_id
            if made_by != source:
                found.append(f"{name}: output made by {made_by}, said to come from {source}")
            outputs[(task.task_id, state.path)] = output
    return found


async def soak(args: argparse.Namespace) -> int:
    random.seed(args.seed)
    async with kill_loop(args) as (replicas, redis):
        created = await set_up(replicas)
        run = PromiseSoak(replicas, scheduled_from=created)
        killing = Soak(replicas, {}, redis)
        started = time.monotonic()
        until = started + args.seconds
        await asyncio.gather(run.load(until), killing.killer(until))
        soaked = time.monotonic() - started
        paused = await pause_schedules(replicas)
        return await report(run, killing, args, soaked, created, paused)


async def report(
    run: PromiseSoak, killing: Soak, args: argparse.Namespace, soaked: float, created: float, paused: float
) -> int:
    replicas = run.replicas
    await asyncio.sleep(3)  # the fire times due at the pause have started their tasks
    fired, broken = await schedule_problems(replicas, created, paused)
    for _ in range(20):  # the slow schedules' last tasks end within 1.5 s of their start
        slow, overlapping = await overlap_problems(replicas)
        if all(task.status in TERMINAL for task in slow):
            break
        await asyncio.sleep(0.5)
    broken += overlapping
    for task in slow:
        run.tasks[task.task_id] = "promise-slow"
    for schedule_id in SCHEDULES:
        for task in await replicas.labelled({"mcp/schedule": schedule_id}):
            run.tasks[task.task_id] = "promise-scheduled"
    broken += await trigger_problems(replicas, run.events, ("promise-triggered-a", "promise-triggered-b"))
    broken += await trigger_problems(replicas, run.call_offs.edit_events, ("promise-debounced",))
    broken += [
        f"event {event_id}: publishes of it answered {len(ids)} tasks of {workflow_id}: {sorted(ids)}"
        for (event_id, workflow_id), ids in run.answered.items()
        if len(ids) > 1 or event_id not in run.events
    ]
    # the last task of each key of promise-replace completes (the latest wins), when it was last
    winners = {task_id for submissions in run.replacing.values() if (task_id := latest(submissions))}
    statuses: collections.Counter[str] = collections.Counter()
    outputs: dict[tuple[str, str], Any] = {}
    waits: list[float] = []  # seconds from submission to end of each rate-limited task
    every: dict[str, task_pb2.Task] = {}  # each task as it ended
    checked = list(run.tasks.items())
    for start in range(0, len(checked), 100):
        batch = checked[start : start + 100]
        ended = await asyncio.gather(*(settled(killing, task_id) for task_id, _ in batch))
        full = await asyncio.gather(
            *(replicas.call("GetTask", task_pb2.GetTaskRequest(task_id=task.task_id)) for task in ended)
        )
        for (task_id, workflow_id), answer in zip(batch, full, strict=True):
            every[task_id] = answer.task
            if answer.task.status not in TERMINAL:  # its events go with the report
                run.call_offs.stories[task_id] = answer.task.create_time.ToNanoseconds() / 1e9
            statuses[f"{workflow_id} {task_pb2.TaskStatus.Name(answer.task.status)}"] += 1
            if workflow_id == "promise-limited":
                waits.append(
                    answer.task.end_time.ToMilliseconds() / 1000 - answer.task.create_time.ToMilliseconds() / 1000
                )
            broken += task_problems(answer.task, workflow_id, outputs)
            if answer.task.status == task_pb2.TASK_STATUS_COMPLETED:
                winners.discard(task_id)
    broken += [f"task {task_id}, the last of its key (CANCEL_IN_PROGRESS), did not complete" for task_id in winners]
    async with grpc.aio.insecure_channel(replicas.plugin) as channel:
        stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
        stats = struct_to_dict((await stub.Execute(protocol_pb2.ExecuteRequest(protocol="stats"))).output)
    most = stats["keyed_max"]
    capped = [(f"{prefix}:{key}", cap) for key in KEYS for prefix, cap in (("q", QUEUE_CAP), ("r", REPLACE_CAP))]
    capped += [(f"d:{doc}", 1) for doc in chaos_call_offs.DOCS] + [("e:one", 1)]
    broken += [
        f"concurrency key {key!r} of cap {cap}: {most[key]} at once" for key, cap in capped if most.get(key, 0) > cap
    ]
    offs = run.call_offs
    broken += chaos_call_offs.debounce_problems(offs, every, latest)
    broken += chaos_call_offs.cancel_on_problems(offs, every, stats["ticks"])
    late = chaos_call_offs.late_first_calls(offs, every, stats["ticks"])
    first_runs = await asyncio.gather(*(first_run_was_a_takeover(replicas, task_id) for task_id in late))
    taken_over = {task_id for task_id, takeover in zip(late, first_runs, strict=True) if takeover}
    broken += chaos_call_offs.expiry_problems(offs, every, stats["ticks"], taken_over)
    made = [task.create_time.ToNanoseconds() / 1e9 for task in every.values() if task.workflow_id not in UNLIMITED]
    broken += limit_problems(made, time.time() - created, "submit", chaos_call_offs.SUBMIT_LIMIT)
    lags = chaos_call_offs.expiry_lags(offs, every)
    broken += await chaos_bulk.bulk_problems(run.bulk)
    ticks = stats["ticks"].get("rl", [])
    broken += limit_problems(ticks, time.time() - created, "provider:rl", LIMIT)
    by_tenant = {f"tenant:{t}": stats["ticks"].get(f"tenant:{t}", []) for t in TENANTS}
    for key, times in by_tenant.items():
        broken += limit_problems(times, time.time() - created, key, TENANT_LIMIT)
    cached = sum(1 for (task_id, _), output in outputs.items() if output.get("task_id") != task_id)
    rows: list[tuple[str, float | str, str]] = [
        ("seconds under kills", round(soaked, 1), f"{args.replicas} replicas on {args.store}"),
        ("replicas killed -9", replicas.kills, f"their logs: {replicas.logs}"),
        *redis_rows(killing.redis),
        *(
            [("replicas cut off from Redis", killing.replicas.partitions, "0.5-4 s each, refused or silent")]
            if killing.replicas.proxies
            else []
        ),
        ("tasks", len(run.tasks), ""),
        *((f"  {name}", count, "") for name, count in sorted(statuses.items())),
        ("slowest request, s", round(run.slowest, 2), "retried while replicas die"),
        ("schedule fire times", fired, f"{len(SCHEDULES)} schedules every 1 s; {run.backfills} backfills over them"),
        ("slow schedules' tasks (skip, buffer one)", len(slow), "never two unfinished at once"),
        ("events published", len(run.events), f"and {run.republished} again with the same id"),
        ("most calls at once per key", max(most.values(), default=0), f"caps {QUEUE_CAP} and {REPLACE_CAP}"),
        (
            "rate-limited calls",
            len(ticks),
            f"limit {LIMIT} per {PERIOD:.0f} s; it or the template put again {run.puts} times",
        ),
        (f"  most within {WINDOW} s", most_within(ticks, WINDOW), f"at most {LIMIT}"),
        *(
            (f"  {key}: calls, most within {WINDOW} s", f"{len(times)}, {most_within(times, WINDOW)}", "each")
            for key, times in by_tenant.items()
        ),
        ("  submission to end, s: p50", round(percentile(waits, 0.5), 2) if waits else "-", "behind the backlog"),
        ("  p99 / max", f"{percentile(waits, 0.99):.2f} / {max(waits):.2f}" if waits else "-", ""),
        ("cache hits", cached, f"of {len(outputs)} cached steps"),
        *offs_rows(offs, every, lags, len(taken_over)),
        ("bulk actions", len(run.bulk.rounds), f"reruns and cancels of {chaos_bulk.ROUND} tasks each"),
        ("tasks submitted or published", len(made), f"limit {chaos_call_offs.SUBMIT_LIMIT} per {PERIOD:.0f} s"),
        (f"  most within {WINDOW} s", most_within(made, WINDOW), f"at most {chaos_call_offs.SUBMIT_LIMIT}"),
        ("broken promises", len(broken), ""),
    ]
    table("chaos: once-only promises under kill -9", rows)
    for line in broken[:200]:
        print(f"  {line}")
    for task_id, since in list(offs.stories.items())[:5]:
        print(f"  task {task_id}, its events:")
        print("\n".join(await chaos_call_offs.story(replicas, task_id, since)))
    return 1 if broken else 0


async def settled(killing: Soak, task_id: str) -> task_pb2.Task:
    """The task once it has ended, or as it is after two minutes (then a broken promise)."""
    try:
        return await killing.ended(task_id, timeout=120)
    except TimeoutError:
        request = task_pb2.GetTaskRequest(task_id=task_id, view=task_pb2.TASK_VIEW_BASIC)
        task: task_pb2.Task = (await killing.replicas.call("GetTask", request)).task
        return task


def offs_rows(
    offs: chaos_call_offs.CallOffs, every: dict[str, task_pb2.Task], lags: list[float], taken_over: int
) -> list[tuple[str, float | str, str]]:
    """The report's rows of the call-off promises."""

    def ended(workflow_id: str, status: int) -> int:
        return sum(1 for task in every.values() if task.workflow_id == workflow_id and task.status == status)

    completed, cancelled = task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_CANCELLED
    calls_off = [order for order in offs.orders.values() if order.cancel_began is not None]
    return [
        ("edits (debounced)", len(offs.edit_events), f"{ended('promise-debounced', completed)} tasks completed"),
        (
            "orders called off",
            f"{len(calls_off)} of {len(offs.orders)}",
            f"{sum(len(o.listed) for o in calls_off)} listed",
        ),
        (
            "  tasks completed",
            ended("promise-cancellable", completed),
            f"{ended('promise-cancellable', cancelled)} cancelled",
        ),
        ("tasks with a queue timeout", len(offs.expiring), f"{len(lags)} expired unstarted"),
        ("  deadline to end, s: p50 / max", f"{percentile(lags, 0.5):.2f} / {max(lags):.2f}" if lags else "-", ""),
        ("  first call past the deadline, taken over", taken_over, "leased in time by a replica that stopped"),
    ]


async def first_run_was_a_takeover(replicas: Replicas, task_id: str) -> bool:
    """Whether the task's first run that wrote anything was a takeover (RESUMED, not STARTED): a
    replica had leased it before and stopped without a word."""
    request = task_pb2.WatchTaskRequest(task_id=task_id)
    async for message in replicas.any_client().tasks.WatchTaskEvents(request):
        for event in message.events:
            if event.type in (task_pb2.TASK_EVENT_TYPE_STARTED, task_pb2.TASK_EVENT_TYPE_RESUMED):
                return bool(event.type == task_pb2.TASK_EVENT_TYPE_RESUMED)
            if event.type in TERMINAL_EVENTS:
                return False
    return False


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_promises", description=__doc__.split("\n\n")[0])
    kill_loop_arguments(parser, seconds=90)
    args = parser.parse_args()
    if args.store == "sqlite" and args.replicas != 1:
        parser.error("the embedded store serves one process: --store sqlite takes --replicas 1")
    if args.store == "cluster" and args.partition:
        parser.error("--partition cuts a path to one Redis; a cluster's clients reach every node on its own")
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
