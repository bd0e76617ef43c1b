"""Property: whatever SubmitTask accepts reads back through GetTask, ListTasks and WatchTask.

Random submissions (inputs of random shape and depth around the limit, labels valid and not,
request ids that collide, three principals) go to a real server on a real Redis; every
accepted one must read back to its owner and run to its end, and the server must refuse
exactly what breaks a documented rule.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_server.auth import hash_token
from tests.conftest import Client, client_for
from tests.helpers import error_reason, step, workflow

pytestmark = pytest.mark.asyncio
TOKENS = {"ann": "ann-token", "ben": "ben-token", "cy": "cy-token"}
LABEL_KEY = st.text(alphabet="abcXYZ019._/- :{", min_size=0, max_size=70)
LABEL_VALUE = st.text(min_size=0, max_size=300)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53).map(float),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


@st.composite
def inputs(draw: st.DrawFn) -> dict[str, Any]:
    """An object around a spine of 1-40 containers, with random scalars and branches beside it."""
    value: Any = draw(
        st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=3))
    )
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.booleans()):
            value = [value, *draw(st.lists(SCALARS, max_size=2))]
        else:
            value = {
                draw(st.text(max_size=8)): value,
                **draw(st.dictionaries(st.text(max_size=8), SCALARS, max_size=2)),
            }
    return {"payload": value}


submissions = st.fixed_dictionaries(
    {
        "principal": st.sampled_from(sorted(TOKENS)),
        "workflow_id": st.sampled_from(["one", "two"]),
        "input": inputs(),
        "labels": st.one_of(
            st.dictionaries(
                st.text(alphabet="abcXYZ019._/-", min_size=1, max_size=63), st.text(max_size=256), max_size=4
            ),
            st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=4),
        ),
        "request_id": st.one_of(st.just(""), st.sampled_from(["r1", "r2", "r3"])),
        "priority": st.integers(-5, 5),
    }
)


@pytest.fixture
async def shared(server_factory, redis_url, tmp_path):
    principals = [
        {"name": n, "token_sha256": hash_token(t), "roles": ["admin"] if n == "cy" else []} for n, t in TOKENS.items()
    ]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    running = await server_factory(store=redis_url, auth_file=str(path))
    client = client_for(running)
    for wf in (
        workflow("one", step("s", "echo")),
        workflow(
            "two", {"id": "root", "sequence": {"children": [step("a", "echo"), step("b", "echo", "{'wrapped': prev}")]}}
        ),
    ):
        await client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf), metadata=auth("cy"))
    yield client
    await client.channel.close()


def auth(principal: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[principal]}")]


def labels_valid(labels: dict[str, str]) -> bool:
    allowed = set("abcXYZ019._/-")
    return all(0 < len(k) <= 63 and set(k) <= allowed and len(v) <= 256 for k, v in labels.items())


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(sub=submissions)
async def test_every_accepted_submission_reads_back_and_runs_to_its_end(shared: Client, sub: dict[str, Any]) -> None:
    request = task_pb2.SubmitTaskRequest(
        workflow_id=sub["workflow_id"],
        labels=sub["labels"],
        priority=sub["priority"],
        request_id=f"{sub['request_id']}-{uuid.uuid4().hex[:4]}" if sub["request_id"] == "r3" else sub["request_id"],
    )
    request.input_data.update(sub["input"])
    me = auth(sub["principal"])
    within_rules = depth(sub["input"]) <= 32 and labels_valid(sub["labels"])
    event("within the rules" if within_rules else "breaks a rule")
    try:
        reply = await shared.tasks.SubmitTask(request, metadata=me)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.ALREADY_EXISTS:  # the principal used this request_id for another request
            event("request_id reused")
            assert error_reason(err) == "REQUEST_ID_REUSED" and request.request_id
            return
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert not within_rules, err.details()
        return
    assert within_rules, "accepted a submission that breaks a rule"
    task_id = reply.task.task_id
    assert reply.task.owner == sub["principal"]
    events = [
        e async for e in shared.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id), metadata=me, timeout=30)
    ]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    got = (await shared.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id), metadata=me)).task
    if sub["workflow_id"] == "two" and depth(sub["input"]) == 32:  # step b wraps its input once more
        assert events[-1].type == task_pb2.TASK_EVENT_TYPE_FAILED and "levels deep" in got.error.message
    else:
        assert events[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED, events[-1]
        assert got.status == task_pb2.TASK_STATUS_COMPLETED
    if reply.created:
        assert json.loads(json.dumps(dict(got.labels))) == sub["labels"]
    listed = (await shared.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=1000), metadata=me)).tasks
    assert task_id in {t.task_id for t in listed}
    assert {t.owner for t in listed} == {sub["principal"]} or sub["principal"] == "cy"
