"""Hostile and random input against a running server: it never crashes, never answers
UNKNOWN or INTERNAL for bad input, never hangs, and loses no task it accepted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_sdk.proto import registry_pb2, schedule_pb2, task_pb2, workflow_pb2
from tests.helpers import create, step, violations, wait_done, workflow
from tests.support.random_messages import RandomRequests

pytestmark = pytest.mark.asyncio
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
weird_text = st.text(max_size=300) | st.sampled_from(
    ["", " ", "../../etc/passwd", "a" * 5000, "\x00", "%s%n", "' OR 1=1 --", "🙂" * 50]
)


async def call(awaitable: Any) -> grpc.StatusCode:
    """Run one RPC with a deadline; return its status code."""
    try:
        await asyncio.wait_for(awaitable, 10)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


@FUZZ
@given(
    workflow_id=weird_text,
    data=st.dictionaries(st.text(max_size=20), json_values, max_size=6),
    priority=st.integers(-(2**31), 2**31 - 1),
    request_id=weird_text,
    labels=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4),
)
async def test_random_submissions_get_a_clear_answer(client, workflow_id, data, priority, request_id, labels):
    request = task_pb2.SubmitTaskRequest(
        workflow_id=workflow_id, priority=priority, request_id=request_id, labels=labels
    )
    request.input_data.update(data)
    assert await call(client.tasks.SubmitTask(request)) not in FORBIDDEN


@FUZZ
@given(
    task_id=weird_text,
    page_size=st.integers(-(2**31), 2**31 - 1),
    page_token=weird_text,
    statuses=st.lists(st.integers(0, 2**31 - 1), max_size=4),
    after=st.integers(0, 2**64 - 1),
)
async def test_random_reads_get_a_clear_answer(client, task_id, page_size, page_token, statuses, after):
    codes = [
        await call(client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))),
        await call(client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id, reason=page_token))),
        await call(
            client.tasks.ListTasks(
                task_pb2.ListTasksRequest(page_size=page_size, page_token=page_token, statuses=statuses)
            )
        ),
        await call(
            client.workflows.ListWorkflows(
                workflow_pb2.ListWorkflowsRequest(page_size=page_size, page_token=page_token)
            )
        ),
        await call(
            client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id=task_id, version=page_size))
        ),
    ]

    async def drain() -> None:
        async for _ in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=after)):
            pass

    codes.append(await call(drain()))
    assert not FORBIDDEN & set(codes), codes


node_kinds = st.sampled_from(["step", "sequence", "parallel", "map", "supervise", "adaptive", None])
cel = st.sampled_from(
    ["", "input.x", "1 +", "input.a.b.c", "[1,2].map(x, x*2)", "size(input) > 0", "{'a': 1}", "'x' * 3", "()"]
) | st.text(max_size=40)


@st.composite
def random_nodes(draw: Any, depth: int = 0) -> dict[str, Any]:
    kind = draw(node_kinds) if depth < 4 else "step"
    node: dict[str, Any] = {"id": draw(st.text(max_size=12) | st.sampled_from(["a", "b", "a"]))}
    children = st.lists(random_nodes(depth + 1), max_size=3)  # type: ignore[call-arg]
    if kind == "step":
        node["step"] = {
            "protocol": draw(st.sampled_from(["echo", "nope", "", "sleep"])),
            "input": draw(cel),
            "retry": {"max_attempts": draw(st.integers(-5, 200)), "jitter": draw(st.floats(-1, 2))},
        }
    elif kind in ("sequence", "parallel", "supervise"):
        node[kind] = {"children": draw(children)}
        if kind == "parallel":
            node[kind]["join"] = draw(st.sampled_from(["JOIN_POLICY_ANY", "JOIN_POLICY_QUORUM", "JOIN_POLICY_ALL"]))
            node[kind]["quorum"] = draw(st.integers(-3, 5))
        if kind == "supervise":
            node[kind]["supervisor"] = draw(st.sampled_from(["threshold_supervisor", "echo", "", "nope"]))
            node[kind]["max_rounds"] = draw(st.integers(-2, 50))
    elif kind == "map":
        node["map"] = {
            "items": draw(cel),
            "body": draw(random_nodes(depth + 1)),
            "max_concurrency": draw(st.integers(-2, 5000)),
        }
    elif kind == "adaptive":
        names = draw(st.lists(st.sampled_from(["s1", "s2", "s3", ""]), max_size=3))
        node["adaptive"] = {
            "max_transitions": draw(st.integers(-1, 500)),
            "states": [
                {
                    "name": n,
                    "node": draw(random_nodes(depth + 1)),
                    "terminal": draw(st.booleans()),
                    "transitions": [{"when": draw(cel), "to": draw(st.sampled_from(["s1", "s2", "zz"]))}],
                }
                for n in names
            ],
        }
    return node


@FUZZ
@given(root=random_nodes(), workflow_id=st.sampled_from(["fuzz", "fuzz-2", "bad id"]))
async def test_random_definitions_are_accepted_or_rejected_cleanly_and_accepted_tasks_finish(client, root, workflow_id):
    definition = json_format.ParseDict({"workflow_id": workflow_id, "root": root}, workflow_pb2.Workflow())
    code = await call(client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=definition)))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    if code == grpc.StatusCode.OK:
        created = await create(client, definition)
        task = (
            await client.tasks.SubmitTask(
                task_pb2.SubmitTaskRequest(workflow_id=created.workflow_id, workflow_version=created.version)
            )
        ).task
        finished = await wait_done(client, task.task_id, timeout=30)  # accepted => reaches an end, never lost
        assert finished.status in (task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED)
        assert "internal error" not in finished.error.message


SERVICES = [
    service
    for module in (task_pb2, workflow_pb2, registry_pb2, schedule_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
]


@pytest.mark.parametrize("seed", range(4))
async def test_every_rpc_answers_random_requests_clearly(client, plugins, seed):
    """Every RPC of every service, requests made from the descriptors (every field kind and range
    edge), ids from earlier answers reused: never UNKNOWN or INTERNAL, and the server still works
    (once the plugins the random requests deregistered are registered again)."""
    make = RandomRequests(seed)
    await create(client, workflow("fuzz-known", step("s", "echo")))
    make.known["workflow_id"].append("fuzz-known")
    answered: dict[str, set[str]] = {}
    for _ in range(25):
        for service in SERVICES:
            for method in service.methods:
                request_type, answer_type = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
                request = make.fill(request_type())
                call = (client.channel.unary_stream if method.server_streaming else client.channel.unary_unary)(
                    f"/{service.full_name}/{method.name}",
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=answer_type.FromString,
                )
                code = await _answer(call, request, make)
                assert code not in FORBIDDEN, (method.name, code, str(request)[:2000])
                answered.setdefault(method.name, set()).add(code.name)
    assert len(answered) == sum(len(s.methods) for s in SERVICES)
    assert any("OK" in codes for codes in answered.values())  # the requests are not all refused at the door
    for plugin in plugins.values():
        await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=plugin.address))
    await still_serves(client)


async def _answer(call: Callable[..., Any], request: Message, make: RandomRequests) -> grpc.StatusCode:
    try:
        answer = call(request, timeout=10)
        if isinstance(answer, grpc.aio.UnaryStreamCall):
            for _ in range(50):  # a watch of a task that runs on: enough of it
                message = await answer.read()
                if message is grpc.aio.EOF:
                    break
                make.remember(message)
            answer.cancel()
        else:
            make.remember(await answer)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


def _stamp(seconds: int, nanos: int = 0) -> dict[str, int]:
    return {"seconds": seconds, "nanos": nanos}


async def test_times_out_of_range_are_refused_naming_the_field(client):
    """Timestamps and Durations past protobuf's ranges, or past what a schedule can compute with,
    anywhere in a request: INVALID_ARGUMENT naming the field (each answered INTERNAL before)."""
    await create(client, workflow("timed", step("s", "echo")))
    every = schedule_pb2.Schedule(schedule_id="hourly", action=task_pb2.SubmitTaskRequest(workflow_id="timed"))
    every.spec.every.add(seconds=3600)
    await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=every))

    def schedule(**spec: dict[str, int]) -> schedule_pb2.CreateScheduleRequest:
        request = schedule_pb2.CreateScheduleRequest(schedule=every)
        request.schedule.schedule_id = "edge"
        for name, value in spec.items():
            getattr(request.schedule.spec, name).MergeFrom(type(getattr(request.schedule.spec, name))(**value))
        return request

    def backfill(start: dict[str, int], end: dict[str, int]) -> schedule_pb2.BackfillScheduleRequest:
        request = schedule_pb2.BackfillScheduleRequest(schedule_id="hourly")
        request.start_time.MergeFrom(type(request.start_time)(**start))
        request.end_time.MergeFrom(type(request.end_time)(**end))
        return request

    registration = registry_pb2.RegisterProtocolRequest(address="127.0.0.1:1")
    registration.ttl.seconds = 2**62
    too_long = registry_pb2.RegisterProtocolRequest(address="127.0.0.1:1")
    too_long.ttl.seconds = 101 * 365 * 86400
    limit = registry_pb2.PutRateLimitRequest(rate_limit=registry_pb2.RateLimit(key="k", limit=1))
    limit.rate_limit.period.seconds = 5
    limit.rate_limit.period.nanos = -7
    timed = workflow("timed-2", step("s", "echo"))
    timed.root.step.timeout.nanos = 2 * 10**9
    year_9999 = 253_402_300_000
    cases: list[tuple[Callable[[Any], Any], Message, str]] = [
        (client.schedules.CreateSchedule, schedule(end_time=_stamp(1_900_000_000, -1)), "schedule.spec.end_time"),
        (client.schedules.CreateSchedule, schedule(run_at=_stamp(2**40)), "schedule.spec.run_at"),
        (client.schedules.CreateSchedule, schedule(run_at=_stamp(year_9999)), "schedule.spec.run_at"),
        (client.schedules.CreateSchedule, schedule(start_time=_stamp(year_9999)), "schedule.spec.start_time"),
        (client.schedules.BackfillSchedule, backfill(_stamp(-62_135_596_800), _stamp(3600)), "start_time"),
        (client.schedules.BackfillSchedule, backfill(_stamp(0), _stamp(2**40)), "end_time"),
        (client.schedules.BackfillSchedule, backfill(_stamp(0, -1), _stamp(3600)), "start_time"),
        (client.schedules.BackfillSchedule, backfill(_stamp(year_9999), _stamp(year_9999 + 799)), "start_time"),
        (client.registry.RegisterProtocol, registration, "ttl"),
        (client.registry.RegisterProtocol, too_long, "ttl"),
        (client.registry.PutRateLimit, limit, "rate_limit.period"),
        (
            client.workflows.CreateWorkflow,
            workflow_pb2.CreateWorkflowRequest(workflow=timed),
            "workflow.root.step.timeout",
        ),
    ]
    catchup = schedule()
    catchup.schedule.catchup_window.seconds = 2**62
    cases.append((client.schedules.CreateSchedule, catchup, "schedule.catchup_window"))
    for rpc, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rpc(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value.details())
        assert field in violations(err.value), (field, violations(err.value))
    # an end as late as a timestamp goes ("never") and a start in year 1 ("long since") stay valid:
    # fire times are computed from now, and an end is only compared with them
    forever = schedule(start_time=_stamp(-62_135_596_800), end_time=_stamp(253_402_300_799))
    created = await client.schedules.CreateSchedule(forever)
    assert created.info.next_fire_times


async def test_the_server_is_still_healthy_and_working_after_the_fuzzing(server, client):
    await still_serves(client)


async def still_serves(client: Any) -> None:
    """The server answers its health check and runs a task to the end."""
    reply = await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await create(client, workflow("after-fuzz", step("s", "echo", "{'ok': true}")))
    task = (await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="after-fuzz"))).task
    assert (await wait_done(client, task.task_id)).status == task_pb2.TASK_STATUS_COMPLETED
