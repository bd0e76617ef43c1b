"""The promises of what calls work off, for `bench.chaos_promises`: a debounce, `cancel_on`,
queue timeouts, and the submission limit every submission passes.

- **debounce** (docs/events.md "Debounce"): edits of a few documents are published as events
  that a workflow takes, keyed by the document, capped at 1 with CANCEL_IN_PROGRESS, that sleeps
  before its work. Each edit has exactly one task; a document's work never runs twice at once;
  the task of a document's last edit completes (when it was published after every other edit of
  it was answered), the others end replaced;
- **cancel_on** (docs/events.md "Cancelling a task on an event"): an order's tasks (a sleep, a
  call, a last call that ticks) are called off by a publish of `chaos.cancel` with the order as
  key, sometimes. Each task submitted before the publish began ends CANCELLED by that event, or
  had completed before it was answered; each task the reply lists ends CANCELLED; no task of the
  order makes its last call after the reply (a moment's grace for a call already on its way; with
  `--partition`, two thirds of a lease more, for a replica cut off from Redis);
  a task submitted after the publish completes;
- **queue timeouts** (docs/fairness.md "Queue timeouts"): tasks behind a concurrency key capped
  at 1, each allowed a second in the queue, more than the key serves. A task ended QUEUE_TIMEOUT
  never ran (the plugin never saw its first call, it has no start, no step ran); no task makes its
  first call later than a moment after its deadline, unless a replica that leased it in time
  stopped (killed, or its lease unrenewed) and another took it over, which runs on; each ends;
- **the submission limit** (docs/rate-limits.md "Submissions"): every submission and every task
  a publish starts takes a unit of `submit`, a little less than the soak asks for; the
  submitters wait the time a refusal names and send again with the same request id. No more
  tasks are created within any window than the limit allows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.chaos import Replicas
from mcp_sdk.proto import events_pb2, events_pb2_grpc, task_pb2

EDIT, CANCEL = "chaos.edit", "chaos.cancel"
DOCS = ["d1", "d2", "d3", "d4"]
QUEUE_TIMEOUT_SECONDS = 1.0
SUBMIT_LIMIT = 200  # per PERIOD of bench.chaos_promises: tasks created through submissions and publishes
GRACE = 0.5  # seconds a call already on its way when a task is called off may still reach the plugin
# workflows whose tasks may end CANCELLED, and the reason that allows it
CANCEL_REASONS = {
    "promise-debounced": "CONCURRENCY_LIMIT:",
    "promise-cancellable": "CANCEL_ON:",
    "promise-expiring": "QUEUE_TIMEOUT:",
}


def workflows() -> list[dict[str, Any]]:
    """The debounced, the cancellable and the expiring workflow."""
    return [
        {
            "workflow_id": "promise-debounced",
            "triggers": [{"event": EDIT, "input": "{'doc': event.key, 'id': event.data.id}"}],
            "concurrency": {
                "key": "input.doc",
                "max_running": 1,
                "strategy": "CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS",
            },
            "root": {
                "id": "root",
                "sequence": {
                    "children": [
                        {"id": "quiet", "sleep": {"duration": "0.3s"}},
                        {
                            "id": "work",
                            "step": {"protocol": "keyed", "input": "{'key': 'd:' + input.doc, 'ms': 60}"},
                        },
                    ]
                },
            },
        },
        {
            "workflow_id": "promise-cancellable",
            "cancel_on": [{"event": CANCEL, "key": "input.order"}],
            "root": {
                "id": "root",
                "sequence": {
                    "children": [
                        {"id": "nap", "sleep": {"duration": "0.4s"}},
                        {"id": "work", "step": {"protocol": "sleep", "input": "{'ms': 500}"}},
                        {"id": "done", "step": {"protocol": "tick", "input": "{'tag': 'co:' + input.id}"}},
                    ]
                },
            },
        },
        {
            "workflow_id": "promise-expiring",
            "concurrency": {"key": "input.k", "max_running": 1, "strategy": "CONCURRENCY_STRATEGY_QUEUE"},
            "root": {
                "id": "root",
                "sequence": {
                    "children": [
                        {"id": "first", "step": {"protocol": "tick", "input": "{'tag': 'qt:' + input.id}"}},
                        {"id": "work", "step": {"protocol": "keyed", "input": "{'key': 'e:' + input.k, 'ms': 250}"}},
                    ]
                },
            },
        },
    ]


@dataclass
class Order:
    """An order's tasks (each with when its submission was answered, wall clock) and the publish
    that calls them off, if one was sent."""

    submitted: list[tuple[float, str]] = field(default_factory=list)
    cancel_began: float | None = None
    cancel_answered: float = 0.0
    cancel_id: str = ""
    listed: set[str] = field(default_factory=set)  # the tasks the publish's reply says it cancels
    after: list[str] = field(default_factory=list)  # submitted once the publish was answered


@dataclass
class CallOffs:
    """The load of the call-off promises and what it asked for. `tasks` is the soak's own record of
    every task (task id: workflow id), which checks that each ends."""

    replicas: Replicas
    tasks: dict[str, str]
    # per document, each edit's publish: its start and answer (monotonic) and its task
    edits: collections.defaultdict[str, list[tuple[float, float, str]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    edit_events: list[str] = field(default_factory=list)
    orders: dict[str, Order] = field(default_factory=dict)
    expiring: list[str] = field(default_factory=list)
    stories: dict[str, float] = field(default_factory=dict)  # tasks whose events the report shows, from when

    async def submit(self, workflow_id: str, data: dict[str, Any], queue_timeout: float | None = None) -> str:
        request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, request_id=uuid.uuid4().hex)
        request.input_data.update(data)
        if queue_timeout is not None:
            request.queue_timeout.FromMilliseconds(int(queue_timeout * 1000))
        task = (await self.replicas.call("SubmitTask", request)).task
        self.tasks[task.task_id] = workflow_id
        return str(task.task_id)

    async def publish(self, name: str, key: str, event_id: str) -> events_pb2.PublishEventResponse:
        request = events_pb2.PublishEventRequest(name=name, key=key, request_id=event_id)
        request.data.update({"id": event_id})
        answer: events_pb2.PublishEventResponse = await self.replicas.call(
            "PublishEvent", request, service=events_pb2_grpc.EventServiceStub
        )
        for task in answer.tasks:
            self.tasks[task.task_id] = task.workflow_id
        return answer

    async def edit(self) -> None:
        doc, event_id = random.choice(DOCS), uuid.uuid4().hex
        began = time.monotonic()
        answer = await self.publish(EDIT, doc, event_id)
        self.edit_events.append(event_id)
        for task in answer.tasks:
            self.edits[doc].append((began, time.monotonic(), task.task_id))

    async def order(self) -> None:
        """One to three tasks of a new order; often a publish that calls them off a moment later,
        sometimes a task submitted after it."""
        order_id, order = uuid.uuid4().hex[:12], Order()
        self.orders[order_id] = order
        for _ in range(random.randint(1, 3)):
            task_id = await self.submit("promise-cancellable", {"order": order_id, "id": uuid.uuid4().hex})
            order.submitted.append((time.time(), task_id))
        await asyncio.sleep(random.uniform(0, 1.5))
        if random.random() < 0.4:
            return
        order.cancel_id = uuid.uuid4().hex
        order.cancel_began = time.time()
        answer = await self.publish(CANCEL, order_id, order.cancel_id)
        order.cancel_answered = time.time()
        order.listed = set(answer.cancelled)
        if random.random() < 0.3:
            order.after.append(await self.submit("promise-cancellable", {"order": order_id, "id": uuid.uuid4().hex}))

    async def expire(self) -> None:
        task_id = await self.submit("promise-expiring", {"k": "one", "id": uuid.uuid4().hex}, QUEUE_TIMEOUT_SECONDS)
        self.expiring.append(task_id)

    def kinds(self) -> list[tuple[float, Any]]:
        """The requests of this load with their rates per second (edits in bursts of a document
        a few times a second; more expiring tasks than their key serves)."""
        return [(6, self.edit), (3, self.order), (6, self.expire)]


def ended_by(task: task_pb2.Task, prefix: str) -> bool:
    return task.status == task_pb2.TASK_STATUS_CANCELLED and task.error.message.startswith(prefix)


def debounce_problems(run: CallOffs, ended: dict[str, task_pb2.Task], latest: Any) -> list[str]:
    """The last edit of each document completes its task; every other ends completed or replaced."""
    found = []
    for doc, publishes in run.edits.items():
        task_id = latest(publishes)
        if task_id is not None and ended[task_id].status != task_pb2.TASK_STATUS_COMPLETED:
            task = ended[task_id]
            found.append(
                f"debounce {doc}: the last edit's task {task_id} ended"
                f" {task_pb2.TaskStatus.Name(task.status)} {task.error.message!r}"
            )
    return found


def cancel_on_problems(run: CallOffs, ended: dict[str, task_pb2.Task], ticks: dict[str, list[float]]) -> list[str]:
    """See the module's docstring, cancel_on."""
    found = []
    for order_id, order in run.orders.items():
        for task_id in order.after:
            if ended[task_id].status != task_pb2.TASK_STATUS_COMPLETED:
                task = ended[task_id]
                found.append(
                    f"order {order_id}: task {task_id}, submitted after the call-off, ended"
                    f" {task_pb2.TaskStatus.Name(task.status)} {task.error.message!r}"
                )
        if order.cancel_began is None:
            continue
        why = f"CANCEL_ON: event '{CANCEL}' ({order.cancel_id})"
        for answered, task_id in order.submitted:
            task, name = ended[task_id], f"order {order_id}: task {task_id}"
            ended_at = task.end_time.ToNanoseconds() / 1e9
            if task_id in order.listed and not ended_by(task, why):
                found.append(
                    f"{name}, listed as called off, ended {task_pb2.TaskStatus.Name(task.status)}"
                    f" {ended_at - order.cancel_answered:+.3f} s after the call-off's answer"
                    f" (its publish began at {order.cancel_began - order.cancel_answered:+.3f} s)"
                )
                run.stories[task_id] = order.cancel_answered
            elif task.status == task_pb2.TASK_STATUS_CANCELLED and task.error.message != why:
                found.append(f"{name}: cancelled {task.error.message!r}, not by its event")
            elif task.status == task_pb2.TASK_STATUS_COMPLETED and ended_at > order.cancel_answered:
                late = ended_at - order.cancel_answered
                found.append(f"{name}: completed {late:.2f} s after its call-off was answered")
            last_call = max(ticks.get(f"co:{value_id(task)}", [0.0]))
            # with --partition: a replica cut off from Redis hears of no call-off, and runs on until
            # its lease watch stops it, two thirds of a lease after its last renewal (docs/operations.md)
            grace = GRACE + 2 / 3 * run.replicas.lease_seconds if run.replicas.proxies else GRACE
            if answered < order.cancel_began and last_call > order.cancel_answered + grace:
                found.append(f"{name}: made its last call {last_call - order.cancel_answered:.2f} s after its call-off")
    return found


def late_first_calls(run: CallOffs, ended: dict[str, task_pb2.Task], ticks: dict[str, list[float]]) -> list[str]:
    """The expiring tasks whose first call came later than a moment after their queue deadline."""
    return [
        task_id
        for task_id in run.expiring
        if not ended_by(task := ended[task_id], "QUEUE_TIMEOUT:")
        and min(ticks.get(f"qt:{value_id(task)}", [0.0])) > task.queue_deadline.ToNanoseconds() / 1e9 + GRACE
    ]


def expiry_problems(
    run: CallOffs, ended: dict[str, task_pb2.Task], ticks: dict[str, list[float]], taken_over: set[str]
) -> list[str]:
    """See the module's docstring, queue timeouts. `taken_over`: the tasks whose first run was a
    takeover (RESUMED): a replica had leased them before their deadline and stopped, and the
    takeover runs on whatever the time (queue_deadlines.expired_unstarted: that replica may have
    begun a call)."""
    found = []
    for task_id in run.expiring:
        task, name = ended[task_id], f"task {task_id} of promise-expiring"
        first_call = min(ticks.get(f"qt:{value_id(task)}", [0.0]))
        deadline = task.queue_deadline.ToNanoseconds() / 1e9
        if ended_by(task, "QUEUE_TIMEOUT:"):
            ran = [state.path for state in task.steps if state.status != task_pb2.STEP_STATUS_PENDING]
            if first_call or task.HasField("start_time") or ran:
                found.append(f"{name}: ended QUEUE_TIMEOUT, yet it ran (call at {first_call}, steps {ran})")
        elif first_call > deadline + GRACE and task_id not in taken_over:
            found.append(f"{name}: first call {first_call - deadline:.2f} s after its queue deadline")
    return found


def expiry_lags(run: CallOffs, ended: dict[str, task_pb2.Task]) -> list[float]:
    """Seconds from each expired task's deadline to its end."""
    return [
        (task.end_time.ToNanoseconds() - task.queue_deadline.ToNanoseconds()) / 1e9
        for task in (ended[task_id] for task_id in run.expiring)
        if ended_by(task, "QUEUE_TIMEOUT:")
    ]


def value_id(task: task_pb2.Task) -> str:
    """The `id` the soak put in the task's input."""
    return str(task.input_data.fields["id"].string_value)


async def story(replicas: Replicas, task_id: str, since: float) -> list[str]:
    """A task's events, one line each (its times in seconds after `since`): what a broken
    promise's report shows of how it came to be."""
    client = replicas.any_client()
    lines = []
    with contextlib.suppress(grpc.aio.AioRpcError):  # an unfinished task's: what came within 5 s
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id), timeout=5):
            at = event.time.ToNanoseconds() / 1e9 - since
            kind = task_pb2.TaskEventType.Name(event.type).removeprefix("TASK_EVENT_TYPE_")
            lines.append(f"    {at:+.3f} s {kind} {event.step_path} {event.message}")
    return lines
