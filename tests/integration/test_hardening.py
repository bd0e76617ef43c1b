"""What testing from outside found (issue 12), each over a real server on loopback and real plugin
processes: whatever the server accepts, it can read back; idempotency keys belong to a principal;
CEL names and labels are checked before anything runs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import bulk_pb2, protocol_pb2, protocol_pb2_grpc, registry_pb2, task_pb2, workflow_pb2
from mcp_server.auth import hash_token
from mcp_server.plugin_host import start_plugin
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    create,
    error_reason,
    events,
    refused,
    result,
    run,
    step,
    step_states,
    submit,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
COMPLETED, FAILED = task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED


def nested(levels: int) -> Any:
    """An object whose lists nest so that the whole value is `levels` deep."""
    value: Any = "leaf"
    for _ in range(levels - 1):
        value = [value]
    return {"v": value}


async def read_back_everywhere(client: Any, task_id: str) -> task_pb2.Task:
    """GetTask, ListTasks and WatchTask all answer for the task (none fails to parse it)."""
    log = await events(client, task_id)  # to the terminal event
    task = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task
    listed = (await client.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=1000))).tasks
    assert task_id in {t.task_id for t in listed}
    assert [e.sequence for e in log] == list(range(1, len(log) + 1)) and log[-1].sequence == task.last_sequence
    return task


# ---- 1. value depth ------------------------------------------------------------------------
async def test_an_input_nested_past_the_limit_is_refused_naming_the_field_and_the_limit(client):
    await create(client, workflow("depth-in", step("s", "echo")))
    for levels in (33, 45):  # 45 is well inside protobuf's own limit for the request
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(client, "depth-in", nested(levels))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(err.value) == "VALUE_TOO_DEEP"
        assert "the limit is 32" in violations(err.value)["input_data"]


async def test_an_error_that_echoes_what_it_was_given_is_bounded(client):
    """A router that names a state of 900,000 characters (from the task's input): the error said
    it whole in the step's record, the task's and two events (2.7 MB for GetTask; an output-sized
    name could pass the 4 MB message limit). Every failure message is now cut at 4,096 characters
    and says how much more there was."""
    states = [
        {"name": "a", "node": step("sa", "echo")},
        {"name": "b", "node": step("sb", "echo"), "terminal": True},
    ]
    adaptive = {"id": "root", "adaptive": {"initial_state": "a", "router": "goto", "states": states}}
    task = await run(client, workflow("long-goto", adaptive), {"next": "y" * 900_000})
    assert task.status == FAILED and "more characters)" in task.error.message
    assert len(task.error.message) < 4200
    whole = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
    assert all(len(s.error.message) < 4200 for s in whole.steps)
    assert all(len(e.message) < 4200 for e in await events(client, task.task_id))


async def test_an_input_at_the_limit_runs_and_reads_back(client):
    await create(client, workflow("depth-ok", step("s", "echo")))
    task = await submit(client, "depth-ok", nested(32))
    done = await wait_done(client, task.task_id)
    assert done.status == COMPLETED
    await read_back_everywhere(client, task.task_id)


async def test_a_plugin_output_nested_past_the_limit_fails_its_step_and_the_task_reads_back(client):
    task = await run(client, workflow("depth-out", step("deep", "nest", "{'levels': 40}")))
    assert task.status == FAILED
    state = step_states(task)["deep"]
    assert state.status == task_pb2.STEP_STATUS_FAILED
    assert "the output of nest nests more than 32 levels deep; the limit is 32" in state.error.message
    await read_back_everywhere(client, task.task_id)


async def test_a_plugin_output_too_deep_for_protobuf_fails_its_step_and_the_plugin_stays_up(client):
    task = await run(client, workflow("depth-proto", step("deep", "nest", "{'levels': 60, 'objects': true}")))
    assert task.status == task_pb2.TASK_STATUS_FAILED
    state = step_states(task)["deep"]
    assert (
        "nest returned an output that cannot be sent" in state.error.message
        and "than protobuf can carry" in state.error.message
    )
    again = await run(client, workflow("depth-proto-ok", step("fine", "nest", "{'levels': 3, 'objects': true}")))
    assert again.status == task_pb2.TASK_STATUS_COMPLETED  # the plugin is still serving


async def test_a_plugin_that_floods_progress_cannot_flood_the_task_log(server_factory):
    """Each progress message a plugin streams is an event of the task's log; past the limits of an
    attempt (count, bytes) one event says the rest is not recorded, and the output still is."""
    limits = Limits(max_progress_per_attempt=50, max_progress_bytes_per_attempt=200_000)
    client = client_for(await server_factory(limits=limits))
    for size, recorded in ((10, 50), (20_000, 9)):  # by count; by bytes (each message ~20 KB)
        flood = step("talk", "chatter", f"{{'n': 400, 'size': {size}}}")
        flood["step"]["stream"] = True
        task = await run(client, workflow(f"chatty-{size}", flood), {})
        assert task.status == task_pb2.TASK_STATUS_COMPLETED and result(task) == {"sent": 400}
        progress = [e for e in await events(client, task.task_id) if e.type == task_pb2.TASK_EVENT_TYPE_PROGRESS]
        assert len(progress) == recorded + 1, (size, len(progress))
        assert [e.message for e in progress[:recorded]] == [f"message {i}" for i in range(recorded)]
        assert "is not recorded" in progress[-1].message and progress[-1].data.fields["progress_dropped"].bool_value


async def test_a_comprehension_over_too_many_items_fails_its_node_before_it_holds_the_server(client):
    """CEL's evaluator holds the event loop while it runs, and its map is quadratic: one task whose
    input held 50,000 items for `input.xs.map(x, x * 2)` stopped every task and RPC of the
    replica for over a minute (and, once its lease ran out, of the next replica). Past the budget
    the node fails at once, naming it; within it the expression runs."""
    wf = workflow("doubles", step("s", "echo", "{'doubled': input.xs.map(x, x * 2)}"))
    task = await run(client, wf, {"xs": list(range(50_000))})
    assert task.status == FAILED
    assert (
        task.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "MCP_LIMIT_MAX_CEL_COST" in task.error.message
    )
    small = await run(client, wf, {"xs": list(range(500))})
    assert small.status == task_pb2.TASK_STATUS_COMPLETED and result(small)["doubled"][-1] == 998


async def test_a_cel_result_nested_past_the_limit_fails_the_node(client):
    literal = "[" * 40 + "1" + "]" * 40
    task = await run(client, workflow("depth-cel", step("s", "echo", "{'v': " + literal + "}")))
    assert task.status == FAILED
    assert "levels deep; the limit is 32" in task.error.message and "node s" in task.error.message
    await read_back_everywhere(client, task.task_id)


async def test_composite_outputs_are_bounded_too(server_factory):
    # Each parallel node wraps its children's outputs in one more object.
    running = await server_factory(limits=Limits(max_value_depth=4))
    client = client_for(running)
    inner = {"id": "inner", "parallel": {"children": [step("deep", "nest", "{'levels': 2}")]}}
    task = await run(client, workflow("depth-par", {"id": "outer", "parallel": {"children": [inner]}}))
    assert task.status == FAILED
    assert step_states(task)["outer/inner"].status == task_pb2.STEP_STATUS_COMPLETED
    assert "the output of parallel outer nests more than 4 levels deep; the limit is 4" in task.error.message
    await read_back_everywhere(client, task.task_id)
    await client.channel.close()


async def test_a_plugin_whose_schema_nests_past_the_limit_is_refused_at_registration(server_factory):
    running = await server_factory(limits=Limits(max_value_depth=8))
    client = client_for(running)
    plugin = await start_plugin("tests.support.deep_schema_plugin")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=plugin.address))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(err.value) == "PLUGIN_MANIFEST_INVALID"
        assert "the limit is 8" in violations(err.value)["protocols[deep_schema].input_schema"]
        listed = (await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
        assert "deep_schema" not in {p.manifest.name for p in listed}
    finally:
        await plugin.stop()
        await client.channel.close()


class _SaysItServes(protocol_pb2_grpc.ProtocolServiceServicer):
    """A plugin that describes whatever manifests it is given."""

    def __init__(self, names: list[str], version: str = "1") -> None:
        self.names, self.version = names, version

    async def Describe(
        self, request: protocol_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> protocol_pb2.DescribeResponse:
        manifests = [protocol_pb2.ProtocolManifest(name=n, version=self.version) for n in self.names]
        return protocol_pb2.DescribeResponse(protocols=manifests)


async def test_protocol_names_that_cannot_be_labels_or_keys_are_refused_at_registration(client):
    """A protocol's name becomes a metric label, a rate-limit key, store keys and console text:
    an empty one, one with a control character, one of 10,000 characters, a name described twice
    and a version with a control character are refused, naming each; odd but harmless names register."""
    server = grpc.aio.server()
    servicer = _SaysItServes(["", "nul\x00here", "n" * 10_000, "twice", "twice"], version="\x01")
    protocol_pb2_grpc.add_ProtocolServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=address))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refused.value) == "PLUGIN_MANIFEST_INVALID"
        found = violations(refused.value)
        assert found["protocols[].name"] == "is required"
        assert found["protocols[nul\x00here].name"] == "holds a control character"
        assert found[f"protocols[{'n' * 128}].name"] == "is 10,000 characters; at most 128"
        assert found["protocols[twice]"] == "is described more than once"
        assert found["protocols[twice].version"] == "holds a control character"
        servicer.names, servicer.version = ["text/summarize", "résumé-v2", "a" * 128], "2.0.0-rc.1+build.5"
        registered = await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=address))
        assert sorted(p.manifest.name for p in registered.protocols) == sorted(servicer.names)
    finally:
        await server.stop(0)


# ---- 2. idempotency keys per principal ----------------------------------------------------
TOKENS = {"alice": "alice-secret", "bob": "bob-secret", "writer": "writer-secret"}


@pytest.fixture(params=["sqlite", "redis"])
async def tenants(request, server_factory, tmp_path):
    store = "sqlite://:memory:" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    principals = [
        {"name": n, "token_sha256": hash_token(t), "roles": ["author"] if n == "writer" else []}
        for n, t in TOKENS.items()
    ]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    running = await server_factory(store=store, auth_file=str(path))
    client = client_for(running)
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("idem", step("s", "echo"))), metadata=as_user("writer")
    )
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("idem2", step("s", "echo"))), metadata=as_user("writer")
    )
    yield client
    await client.channel.close()


def as_user(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[name]}")]


def submission(workflow_id: str = "idem", secret: str = "alice's secret", **extra: Any) -> task_pb2.SubmitTaskRequest:
    request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, request_id="order-42", **extra)
    request.input_data.update({"secret": secret})
    return request


async def test_another_principal_with_the_same_request_id_gets_its_own_task(tenants):
    first = await tenants.tasks.SubmitTask(submission(), metadata=as_user("alice"))
    theirs = await tenants.tasks.SubmitTask(submission(secret="bob's"), metadata=as_user("bob"))
    assert first.created and theirs.created
    assert theirs.task.task_id != first.task.task_id and theirs.task.owner == "bob"
    assert theirs.task.input_data["secret"] == "bob's"
    again = await tenants.tasks.SubmitTask(submission(), metadata=as_user("alice"))
    assert not again.created and again.task.task_id == first.task.task_id


@pytest.mark.parametrize(
    "change",
    [
        {"workflow_id": "idem2"},
        {"workflow_version": 1, "secret": "other"},
        {"secret": "other"},
        {"priority": 5},
        {"labels": {"team": "x"}},
    ],
)
async def test_the_same_request_id_for_a_different_request_is_already_exists(tenants, change):
    await tenants.tasks.SubmitTask(submission(), metadata=as_user("alice"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tenants.tasks.SubmitTask(submission(**change), metadata=as_user("alice"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(err.value) == "REQUEST_ID_REUSED"
    assert "order-42" in err.value.details()


# ---- 4. CEL names --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "unknown"),
    [
        ("{'n': sizee(input.items)}", "unknown function 'sizee'"),
        ("{'n': inptu.count}", "unknown variable 'inptu'"),
        ("{'v': item}", "unknown variable 'item'"),  # item has a value only inside a map body
        ("{'v': output.x}", "unknown variable 'output'"),  # output only in an adaptive transition
        ("{'v': round}", "unknown variable 'round'"),  # round only inside a supervised child
    ],
)
async def test_unknown_cel_names_are_refused_at_create_and_validate(client, expression, unknown):
    wf = workflow("cel-names", {"id": "root", "sequence": {"children": [step("s", "echo", expression)]}})
    for call in (
        client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf)),
        client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=wf)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert unknown in violations(err.value)["workflow.root.sequence.children[0].step.input"]


async def test_cel_names_that_have_a_value_where_they_are_used_are_accepted(client):
    mapped = {
        "id": "m",
        "map": {"items": "input.xs.map(x, x * 2)", "body": step("b", "echo", "{'v': item, 'i': index}")},
    }
    supervised = {
        "id": "sup",
        "supervise": {
            "supervisor": "threshold_supervisor",
            "children": [step("d", "scored_draft", "{'round': round, 'feedback': feedback, 'seen': children}")],
        },
    }
    adaptive = {
        "id": "a",
        "adaptive": {
            "states": [
                {
                    "name": "one",
                    "node": step("o", "echo"),
                    "transitions": [{"when": "has(output.xs) && size(output.xs) > 0", "to": "two"}],
                },
                {
                    "name": "two",
                    "node": step("t", "echo", "{'when': timestamp('2020-01-01T00:00:00Z').getFullYear()}"),
                    "terminal": True,
                },
            ]
        },
    }
    wf = workflow("cel-ok", {"id": "root", "sequence": {"children": [mapped, supervised, adaptive]}})
    assert (await client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=wf))).node_count > 0


# ---- 5. labels -----------------------------------------------------------------------------
async def test_large_or_malformed_labels_are_refused_on_tasks_and_workflows(client):
    await create(client, workflow("labels", step("s", "echo")))
    request = task_pb2.SubmitTaskRequest(workflow_id="labels", labels={f"k{i}": "x" * 10_000 for i in range(50)})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.tasks.SubmitTask(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "value is 10000 characters; at most 256" in violations(err.value)["labels['k0']"]
    for labels, problem in (
        ({"bad key": "v"}, "key must match"),
        ({"k" * 64: "v"}, "key is 64 characters"),
        ({"": "v"}, "key must match"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="labels", labels=labels))
        assert any(problem in d for d in violations(err.value).values()), violations(err.value)
        wf = workflow("labelled", step("s", "echo"), labels=labels)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf))
        assert any(f.startswith("workflow.labels[") and problem in d for f, d in violations(err.value).items())
    fine = {"team": "search", "app.kubernetes.io/name": "x" * 256, "k" * 63: ""}
    task = await submit(client, "labels", labels=fine)
    assert dict((await read_back_everywhere(client, task.task_id)).labels) == fine


async def test_hostile_requests_never_leave_the_server_unable_to_read(client):
    # The earlier cases together, interleaved, then everything is still readable.
    await create(client, workflow("mixed", step("s", "echo")))
    accepted = []
    for levels in range(1, 48, 3):
        try:
            accepted.append(await submit(client, "mixed", nested(levels)))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and levels > 32
    assert len(accepted) == 11
    await asyncio.gather(*(wait_done(client, t.task_id) for t in accepted))
    for task in accepted:
        await read_back_everywhere(client, task.task_id)


async def test_a_supervisor_input_that_would_nest_past_the_limit_fails_clearly(client):
    # The supervisor receives {"children": {id: output}}: two levels above a child's output.
    sup = {
        "id": "sup",
        "supervise": {"supervisor": "threshold_supervisor", "children": [step("deep", "nest", "{'levels': 31}")]},
    }
    task = await run(client, workflow("depth-sup", sup))
    assert task.status == FAILED
    assert "the input of threshold_supervisor nests more than 32 levels deep" in task.error.message
    await read_back_everywhere(client, task.task_id)


async def test_an_enum_number_the_contract_does_not_define_is_refused_naming_the_field(client):
    """proto3 lets any number through an enum field; one the contract does not define was read as
    the default (a view, a value field) instead of being refused."""
    refusals = {
        "view": client.tasks.GetTask(task_pb2.GetTaskRequest(task_id="t1", view=99)),
        "statuses[1]": client.tasks.ListTasks(task_pb2.ListTasksRequest(statuses=[1, 77])),
        "kind": client.bulk_actions.StartBulkAction(
            bulk_pb2.StartBulkActionRequest(kind=9, selection=bulk_pb2.TaskSelection(task_ids=["t1"]))
        ),
    }
    for field, call in refusals.items():
        error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert "is not a value of" in violations(error)[field], violations(error)
    chunks = client.tasks.ReadValue(task_pb2.ReadValueRequest(task_id="t1", field=99))
    with pytest.raises(grpc.aio.AioRpcError) as read:
        async for _ in chunks:
            pass
    assert read.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "field" in violations(read.value)
