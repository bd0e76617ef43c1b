"""`python -m bench --only events`: what a publish costs, by what its event may reach.

- A name no workflow waits for (nor starts on): the publish reads the name's subscriptions and
  its record of waits (one store read) and is done. Every other row is a ratio to this one.
- A name a workflow waits for, with no task waiting now: that read, and a look at the waits index.
- A name a workflow waits for with a `lookback`: the event is kept first, then the look.
- A name a workflow's `cancel_on` names, with no task in flight: the look, and one at the label
  index for the tasks it would call off.
- A publish that reaches one parked wait (each task waits for its own key): the look, and the
  signal that resumes the task on the publishing replica.
- A publish that reaches 100 parked waits for a name without a key: each task resumed in turn.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from bench.harness import Orchestrated, Proc, Stat, fresh_store, percentile, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.proto import events_pb2, events_pb2_grpc, task_pb2


def _waiting_for(workflow_id: str, event: str, **wait: str) -> dict[str, object]:
    return {"workflow_id": workflow_id, "root": {"id": "w", "wait": {"event": event, **wait}}}


async def bench_events(plugin: Proc, quick: bool) -> None:
    rounds, publishes = (3, 150) if quick else (5, 400)
    for backend in ("redis", "sqlite"):
        store = fresh_store(backend, REDIS)
        orchestrator = start_orchestrator(store, [plugin.address], MCP_WAIT_IN_MEMORY_SECONDS="0.1")
        client = Orchestrated(orchestrator.address)
        events = events_pb2_grpc.EventServiceStub(client.channel)
        try:
            await client.create(_waiting_for("waited", "waited", key="input.id"))
            await client.create(_waiting_for("looked", "looked", key="input.id", lookback="60s"))
            await client.create(_waiting_for("reached", "reached", key="input.id"))
            await client.create(_waiting_for("broadcast", "broadcast"))
            await client.create(
                {
                    "workflow_id": "calling-off",
                    "root": {"id": "s", "step": {"protocol": "echo"}},
                    "cancel_on": [{"event": "calledoff", "key": "input.id"}],
                }
            )
            names = ("nothing", "waited", "looked", "calledoff", "reached", "broadcast")
            stats = {name: Stat() for name in names}
            for _ in range(rounds):
                for name in ("nothing", "waited", "looked", "calledoff"):
                    stats[name].runs.append(await _publish_p50(events, name, publishes))
                stats["reached"].runs.append(await _reach_one_each(client, events, publishes // 3))
                stats["broadcast"].runs.append(await _reach_many(client, events, 100))
        finally:
            await client.close()
            orchestrator.stop()
        floor = stats["nothing"].median
        table(
            f"PublishEvent, one server process ({backend} store), p50 of {publishes} per round",
            [
                ("a name no workflow waits for: p50 ms", stats["nothing"], "1.00x"),
                ("a name a workflow waits for, none waiting: p50 ms", stats["waited"], _ratio(stats["waited"], floor)),
                ("the same with a lookback (the event kept): p50 ms", stats["looked"], _ratio(stats["looked"], floor)),
                (
                    "a name a workflow's cancel_on names, none in flight: p50 ms",
                    stats["calledoff"],
                    _ratio(stats["calledoff"], floor),
                ),
                ("reaching one parked wait by its key: p50 ms", stats["reached"], _ratio(stats["reached"], floor)),
                ("reaching 100 parked waits of no key: ms", stats["broadcast"], _ratio(stats["broadcast"], floor)),
            ],
        )


def _ratio(stat: Stat, floor: float) -> str:
    return f"{stat.median / floor:.2f}x the first row"


async def _publish_p50(events: events_pb2_grpc.EventServiceStub, name: str, count: int) -> float:
    took = []
    for i in range(count):
        request = events_pb2.PublishEventRequest(name=name, key=f"k{i % 7}", request_id=uuid.uuid4().hex)
        request.data.update({"n": i})
        start = time.perf_counter()
        await events.PublishEvent(request)
        took.append(time.perf_counter() - start)
    return percentile(took, 0.5) * 1000


async def _parked(client: Orchestrated, workflow_id: str, inputs: list[dict[str, str]]) -> None:
    """Submit a task per input and wait until every one of them is parked."""
    for data in inputs:
        request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id)
        request.input_data.update(data)
        await client.tasks.SubmitTask(request)
    listing = task_pb2.ListTasksRequest(statuses=[task_pb2.TASK_STATUS_WAITING], workflow_id=workflow_id, page_size=1)
    async with asyncio.timeout(120):
        while (await client.tasks.ListTasks(listing)).total_size < len(inputs):
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # parked: their runs have let go of them


async def _reach_one_each(client: Orchestrated, events: events_pb2_grpc.EventServiceStub, count: int) -> float:
    keys = [uuid.uuid4().hex for _ in range(count)]
    await _parked(client, "reached", [{"id": key} for key in keys])
    took = []
    for key in keys:
        start = time.perf_counter()
        reply = await events.PublishEvent(events_pb2.PublishEventRequest(name="reached", key=key))
        took.append(time.perf_counter() - start)
        assert len(reply.woken) == 1, reply
    return percentile(took, 0.5) * 1000


async def _reach_many(client: Orchestrated, events: events_pb2_grpc.EventServiceStub, count: int) -> float:
    await _parked(client, "broadcast", [{"n": str(i)} for i in range(count)])
    start = time.perf_counter()
    reply = await events.PublishEvent(events_pb2.PublishEventRequest(name="broadcast"))
    took = (time.perf_counter() - start) * 1000
    assert len(reply.woken) == count, len(reply.woken)
    return took
