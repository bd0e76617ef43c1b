"""The SDK's client against real servers: a watch that outlives a kill -9 and restart of the
server and dropped connections (every event once, in order), results and typed errors, bad
input, tokens, and the blocking client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mcp_sdk import Client, McpError, SyncClient, TaskCancelled, TaskFailed
from mcp_sdk.proto import task_pb2
from mcp_sdk.values import python_to_value
from mcp_server.auth import hash_token
from tests.e2e.test_server_process import free_port
from tests.support.processes import start_orchestrator
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


def sleeps(workflow_id: str, count: int, ms: int) -> dict[str, object]:
    """A sequence of `count` steps that each sleep `ms` milliseconds."""
    children = [{"id": f"s{i}", "step": {"protocol": "sleep", "input": f"{{'ms': {ms}}}"}} for i in range(1, count + 1)]
    return {"workflow_id": workflow_id, "root": {"id": "root", "sequence": {"children": children}}}


def assert_every_event_once(events: list[task_pb2.TaskEvent], last_sequence: int) -> None:
    assert [e.sequence for e in events] == list(range(1, last_sequence + 1))
    assert events[-1].type == E.TASK_EVENT_TYPE_COMPLETED


class RestartableServer:
    """An orchestrator process on a fixed address and store (SQLite file or Redis) that a test
    kills with SIGKILL and starts again; every process it started is stopped at the end."""

    def __init__(self, store: str, plugin: str, **env: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.store = store
        self.plugin = plugin
        self.env = {"MCP_LEASE_SECONDS": "1.5", **env}
        self.processes = [start_orchestrator(self.address, store, [plugin], "first", **self.env)]

    @property
    def restarted(self) -> bool:
        return len(self.processes) > 1

    async def kill(self) -> None:
        self.processes[-1].send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.processes[-1].wait, 10)

    async def start_again(self) -> None:
        self.processes.append(
            await asyncio.to_thread(start_orchestrator, self.address, self.store, [self.plugin], "second", **self.env)
        )

    async def kill_and_restart(self) -> None:
        await self.kill()
        await asyncio.sleep(0.5)  # the client finds nobody there for a while
        await self.start_again()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=15)


@pytest.fixture(params=["sqlite", "redis"])
def restartable(request, plugins, tmp_path):
    server = RestartableServer(store_of(request, tmp_path), plugins["testkit"].address)
    yield server
    server.stop()


def store_of(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mcp.db" if request.param == "sqlite" else request.getfixturevalue("redis_url")


@pytest.fixture(params=["sqlite", "redis"])
def holding(request, plugins, tmp_path):
    """A restartable server whose batched watches hold what is not a task's end for 3 s."""
    server = RestartableServer(store_of(request, tmp_path), plugins["testkit"].address, MCP_WATCH_BATCH_DELAY="3")
    yield server
    server.stop()


async def test_watch_delivers_every_event_once_across_a_kill_9_and_restart_of_the_server(restartable):
    async with Client(restartable.address, watch_give_up_after=60) as client:
        await client.create_workflow(sleeps("six-sleeps", 6, 300))
        task = await client.submit("six-sleeps")
        events: list[task_pb2.TaskEvent] = []
        restart: asyncio.Task[None] | None = None
        async with asyncio.timeout(60):
            async for event in client.watch(task.task_id):
                events.append(event)
                if restart is None and event.type == E.TASK_EVENT_TYPE_STEP_COMPLETED and event.step_path == "root/s2":
                    restart = asyncio.create_task(restartable.kill_and_restart())
        assert restart is not None and restart.done() and restartable.restarted, (
            "the server was not restarted during the watch"
        )
        final = await client.get(task.task_id, steps=False)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED
        assert_every_event_once(events, final.last_sequence)
        assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in events), (
            "the task was not taken over by the restarted server"
        )


async def test_submit_and_watch_delivers_every_event_once_across_a_kill_9_while_the_server_holds_events(holding):
    # A batched watch holds events in memory only (MCP_WATCH_BATCH_DELAY): killed while it holds
    # some, the server never sends them, and the restarted one must, from the store
    async with Client(holding.address, watch_give_up_after=60) as client:
        await client.create_workflow(sleeps("held", 6, 300))
        events: list[task_pb2.TaskEvent] = []
        killed_at: list[tuple[float, int]] = []

        async def kill_while_held() -> None:
            await asyncio.sleep(1.2)  # s1..s3 have ended; their events wait in the server's hold
            killed_at.append((time.time(), len(events)))
            await holding.kill_and_restart()

        restart = asyncio.create_task(kill_while_held())
        async with asyncio.timeout(60):
            async for event in client.submit_and_watch("held"):
                events.append(event)
        await restart
        final = await client.get(events[0].task_id, steps=False)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED
    assert_every_event_once(events, final.last_sequence)
    assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in events), "the restarted server did not take the task"
    when, received = killed_at[0]
    written_not_sent = [e for e in events[received:] if e.time.ToNanoseconds() < when * 1e9]
    assert any(e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED for e in written_not_sent), (
        "no step's end was held when the server was killed"
    )


async def test_watch_delivers_every_event_once_across_dropped_connections(server_factory):
    running = await server_factory()
    proxy = await TcpProxy(running.address).start()
    try:
        async with Client(proxy.address, watch_give_up_after=30) as client:
            await client.create_workflow(sleeps("five-sleeps", 5, 150))
            task = await client.submit("five-sleeps")
            events: list[task_pb2.TaskEvent] = []
            dropped = 0
            async with asyncio.timeout(30):
                async for event in client.watch(task.task_id):
                    events.append(event)
                    if event.type == E.TASK_EVENT_TYPE_STEP_COMPLETED:
                        dropped += proxy.drop()
            final = await client.get(task.task_id, steps=False)
            assert_every_event_once(events, final.last_sequence)
            assert dropped >= 5 and proxy.connections >= 5, (dropped, proxy.connections)
    finally:
        await proxy.stop()


async def test_watch_notices_a_connection_that_silently_died_and_resumes_on_a_new_one(server_factory):
    """Nothing is closed, bytes just stop arriving: only keepalive pings can tell (the default
    is 30 s plus a 10 s timeout; here 1 s and 1 s, to keep the test short)."""
    running = await server_factory()
    proxy = await TcpProxy(running.address).start()
    quick_keepalive = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.http2.ping_timeout_ms", 1000),
    ]
    try:
        async with Client(proxy.address, watch_give_up_after=30, channel_options=quick_keepalive) as client:
            await client.create_workflow(sleeps("three-slow", 3, 1500))
            task = await client.submit("three-slow")
            events: list[task_pb2.TaskEvent] = []
            async with asyncio.timeout(40):
                async for event in client.watch(task.task_id):
                    events.append(event)
                    if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == "root/s1":
                        assert proxy.freeze() >= 2
            final = await client.get(task.task_id, steps=False)
            assert_every_event_once(events, final.last_sequence)
            assert proxy.connections >= 2, "the watch never left the dead connection"
    finally:
        await proxy.stop()


async def test_watch_after_a_sequence_resumes_there_and_ends_at_once_on_a_finished_task(server_factory):
    running = await server_factory()
    async with Client(running.address) as client:
        await client.create_workflow(sleeps("two-sleeps", 2, 10))
        task = await client.submit("two-sleeps")
        assert await client.result(task.task_id, timeout=30) is not None
        everything = [e async for e in client.watch(task.task_id)]
        tail = [e async for e in client.watch(task.task_id, after=3)]
        assert [e.sequence for e in tail] == [e.sequence for e in everything[3:]]
        assert [e async for e in client.watch(task.task_id, after=everything[-1].sequence)] == []


async def test_result_of_a_failed_task_raises_task_failed_with_the_tasks_error(server_factory):
    running = await server_factory()
    async with Client(running.address) as client:
        await client.create_workflow(
            {
                "workflow_id": "fails",
                "root": {
                    "id": "boom",
                    "step": {
                        "protocol": "fail",
                        "input": "{'code': 'FAILED_PRECONDITION', 'message': 'the ledger is closed'}",
                    },
                },
            }
        )
        task = await client.submit("fails")
        with pytest.raises(TaskFailed) as failed:
            await client.result(task.task_id, timeout=30)
        stored = await client.get(task.task_id, steps=False)
        assert stored.status == task_pb2.TASK_STATUS_FAILED
        assert failed.value.code.value[0] == stored.error.code != 0
        assert failed.value.message == stored.error.message and "the ledger is closed" in failed.value.message
        assert failed.value.task_id == task.task_id and isinstance(failed.value, McpError)


async def test_result_of_a_cancelled_task_raises_task_cancelled(server_factory):
    running = await server_factory()
    async with Client(running.address) as client:
        await client.create_workflow(sleeps("long", 1, 20_000))
        task = await client.submit("long")
        waiting = asyncio.create_task(client.result(task.task_id, timeout=30))
        await client.cancel(task.task_id, "changed my mind")
        with pytest.raises(TaskCancelled) as cancelled:
            await waiting
        assert cancelled.value.code == grpc.StatusCode.CANCELLED and "changed my mind" in cancelled.value.message


async def test_delete_from_both_clients_refuses_a_running_task_and_removes_a_finished_one(server_factory):
    running = await server_factory()
    async with Client(running.address) as client:
        await client.create_workflow(sleeps("slow", 1, 20_000))
        task = await client.submit("slow")
        with pytest.raises(McpError) as refused:
            await client.delete(task.task_id)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and refused.value.reason == "TASK_NOT_FINISHED"
        await client.cancel(task.task_id)
        assert await client.delete(task.task_id) is True
        with pytest.raises(McpError) as missing:
            await client.get(task.task_id)
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert await client.delete(task.task_id, allow_missing=True) is False

    def script() -> None:
        with SyncClient(running.address) as blocking:
            blocking.create_workflow(json.dumps(sleeps("quick", 1, 10)))
            done = blocking.submit("quick")
            blocking.result(done.task_id, timeout=30)
            assert blocking.delete(done.task_id) is True
            assert blocking.delete(done.task_id, allow_missing=True) is False

    await asyncio.to_thread(script)


async def test_result_returns_plain_values_and_reads_a_large_result_through_its_reference(server_factory):
    running = await server_factory()
    async with Client(running.address) as client:
        await client.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
        assert await client.run("echo", {"n": 3, "ok": True, "xs": [1, 2.5, "a"], "none": None}, timeout=30) == {
            "n": 3,
            "ok": True,
            "xs": [1, 2.5, "a"],
            "none": None,
        }
        await client.create_workflow(
            {"workflow_id": "big", "root": {"id": "s", "step": {"protocol": "sized", "input": "{'bytes': 300000}"}}}
        )
        task = await client.submit("big")
        result = await client.result(task.task_id, timeout=30)
        assert (await client.get(task.task_id, steps=False)).HasField("result_ref"), (
            "the result should be above the inline limit"
        )
        assert python_to_value(result).ByteSize() == 300_000
        assert await client.read_value(task.task_id, "s") == result  # the step's output, read the same way


async def test_a_malformed_definition_raises_with_the_field_violations(server_factory):
    running = await server_factory()
    async with Client(running.address) as client:
        with pytest.raises(McpError) as refused:  # the server's compiler refuses it
            await client.create_workflow({"workflow_id": "bad", "root": {"id": "root", "sequence": {"children": []}}})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.violations
        assert any(v.field.startswith("workflow.root") for v in refused.value.violations), refused.value.violations
        with pytest.raises(McpError) as unknown:  # an unknown protocol, in YAML
            await client.validate_workflow(
                "workflow_id: ghost\nroot:\n  id: g\n  step:\n    protocol: no_such_protocol\n"
            )
        assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT and "no_such_protocol" in str(unknown.value)
        with pytest.raises(McpError) as misshapen:  # not even a Workflow: refused before any call
            await client.create_workflow({"workflow_id": "odd", "root": {"id": "r", "no_such_field": 1}})
        assert (
            misshapen.value.code == grpc.StatusCode.INVALID_ARGUMENT
            and misshapen.value.reason == "MALFORMED_DEFINITION"
        )
        assert (
            misshapen.value.violations[0].field == "workflow"
            and "no_such_field" in misshapen.value.violations[0].description
        )
        too_deep: dict[str, object] = {"bottom": True}
        for _ in range(60):
            too_deep = {"d": too_deep}
        with pytest.raises(McpError) as deep_submit:  # cannot even become a Struct: refused before the call
            await client.submit("anything", too_deep)
        assert (
            deep_submit.value.code == grpc.StatusCode.INVALID_ARGUMENT and deep_submit.value.reason == "VALUE_TOO_DEEP"
        )
        assert [v.field for v in deep_submit.value.violations] == ["input_data"]
        with pytest.raises(McpError) as not_json:
            await client.create_workflow(
                '{"workflow_id": "w", "root": {"id": "r", "step": {"protocol": "echo"}}, "x": NaN}'
            )
        assert not_json.value.reason == "MALFORMED_DEFINITION"
        with pytest.raises(McpError) as bad_submit:
            await client.submit("bad id with spaces")
        assert bad_submit.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in bad_submit.value.violations] == ["workflow_id"]


async def test_watching_a_task_that_does_not_exist_raises_not_found_at_once(server_factory):
    running = await server_factory()
    async with Client(running.address, watch_give_up_after=None) as client:  # would retry forever if it retried
        async with asyncio.timeout(10):
            with pytest.raises(McpError) as missing:
                async for _ in client.watch("no-such-task"):
                    pass
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(McpError) as missing_result:
                await client.result("no-such-task")
            assert missing_result.value.code == grpc.StatusCode.NOT_FOUND


async def test_submit_is_idempotent_with_a_request_id_and_distinct_without(server_factory):
    running = await server_factory()
    async with Client(running.address) as client:
        await client.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
        first = await client.submit("echo", {"a": 1}, request_id="order-42", labels={"team": "ml"}, priority=3)
        again = await client.submit("echo", {"a": 1}, request_id="order-42", labels={"team": "ml"}, priority=3)
        assert again.task_id == first.task_id and first.labels["team"] == "ml" and first.priority == 3
        assert (await client.submit("echo", {"a": 1})).task_id != (await client.submit("echo", {"a": 1})).task_id


async def test_a_token_is_sent_as_the_bearer_and_a_missing_one_is_refused(server_factory, tmp_path):
    principals = [
        {"name": "ada", "token_sha256": hash_token("ada-token"), "roles": ["author"]},
        {"name": "bob", "token_sha256": hash_token("bob-token"), "roles": []},
    ]
    (tmp_path / "principals.json").write_text(json.dumps({"principals": principals}))
    running = await server_factory(auth_file=str(tmp_path / "principals.json"))
    async with (
        Client(running.address, token="ada-token") as ada,
        Client(running.address, token="bob-token") as bob,
        Client(running.address) as nobody,
    ):
        await ada.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
        task = await ada.submit("echo", {"x": 1})
        assert await ada.result(task.task_id, timeout=30) == {"x": 1}
        with pytest.raises(McpError) as other:
            await bob.get(task.task_id)
        assert other.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(McpError) as anonymous:
            await nobody.list_protocols()
        assert anonymous.value.code == grpc.StatusCode.UNAUTHENTICATED and anonymous.value.reason == "NO_TOKEN"


async def test_the_blocking_client_does_the_same_from_plain_code(server_factory):
    running = await server_factory()

    def script() -> None:
        with SyncClient(running.address) as client:
            client.create_workflow(json.dumps(sleeps("three-sleeps", 3, 20)))
            task = client.submit("three-sleeps")
            events = list(client.watch(task.task_id))
            assert_every_event_once(events, client.get(task.task_id).last_sequence)
            assert client.result(task.task_id, timeout=30) == {"ms": 20, "slept_ms": 20}
            assert {p.manifest.name for p in client.list_protocols()} >= {"echo", "sleep"}
            first_two = client.watch(task.task_id)
            assert [next(first_two).sequence, next(first_two).sequence] == [1, 2]
            first_two.close()  # stopping early closes the stream
            followed = list(client.submit_and_watch("three-sleeps"))
            assert_every_event_once(followed, client.get(followed[0].task_id).last_sequence)
            try:
                client.get("no-such-task")
            except McpError as exc:
                assert exc.code == grpc.StatusCode.NOT_FOUND
            else:
                raise AssertionError("get of a missing task did not raise")

    await asyncio.to_thread(script)


async def test_signal_answers_a_waiting_task_once_from_both_clients(server_factory):
    running = await server_factory()
    waits = {
        "id": "root",
        "sequence": {"children": [{"id": "a", "wait": {"signal": "go"}}, {"id": "b", "wait": {"signal": "go"}}]},
    }
    async with Client(running.address) as client:
        await client.create_workflow({"workflow_id": "two-waits", "root": waits})
        task = await client.submit("two-waits")
        sent = await client.signal(task.task_id, "go", {"n": 1}, request_id="one")
        again = await client.signal(task.task_id, "go", {"n": 99}, request_id="one")
        assert sent.created and not again.created and again.sequence == sent.sequence
        with pytest.raises(McpError) as refused:
            await client.signal(task.task_id, "stop", {})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.reason == "UNKNOWN_SIGNAL"

    def script() -> None:
        with SyncClient(running.address) as blocking:
            blocking.signal(task.task_id, "go", [2, "two"])
            assert blocking.result(task.task_id, timeout=30) == [2, "two"]

    await asyncio.to_thread(script)


async def test_rerun_from_both_clients_keeps_what_came_before_and_takes_an_edited_input(server_factory):
    running = await server_factory()
    appends = {
        "id": "root",
        "sequence": {"children": [{"id": f"s{i}", "step": {"protocol": "append"}} for i in (1, 2)]},
    }
    async with Client(running.address) as client:
        await client.create_workflow({"workflow_id": "two-appends", "root": appends})
        task = await client.submit("two-appends", {"text": ">"})
        assert await client.result(task.task_id) == {"text": ">s1s2", "trail": ["root/s1", "root/s2"]}
        again = await client.rerun(task.task_id, "root/s2", input={"text": "new:"}, request_id="once")
        repeated = await client.rerun(task.task_id, "root/s2", input={"text": "new:"}, request_id="once")
        assert again.rerun_of == task.task_id and repeated.task_id == again.task_id
        assert await client.result(again.task_id) == {"text": "new:s2", "trail": ["root/s2"]}
        with pytest.raises(McpError) as refused:
            await client.rerun(task.task_id, input={"text": "no path"})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "input" in {
            v.field for v in refused.value.violations
        }

    def script() -> None:
        with SyncClient(running.address) as blocking:
            whole = blocking.rerun(task.task_id)  # a completed task, from the start
            assert whole.rerun_from_step_path == "root"
            assert blocking.result(whole.task_id, timeout=30) == {"text": ">s1s2", "trail": ["root/s1", "root/s2"]}
            null_input = blocking.rerun(task.task_id, "root", input=None)  # None is JSON null, not "no input"
            assert null_input.rerun_input.WhichOneof("kind") == "null_value"
            blocking.result(null_input.task_id, timeout=30)
            selected = {
                "statuses": ["TASK_STATUS_COMPLETED"],
                "workflow_id": "two-appends",
                "from_step_path": "root/s2",
            }
            outcomes = list(blocking.rerun_tasks(**selected, input={"text": "bulk:"}, limit=1))
            assert [o.created for o in outcomes] == [True] and outcomes[0].rerun is not None
            assert blocking.result(outcomes[0].rerun.task_id, timeout=30) == {"text": "bulk:s2", "trail": ["root/s2"]}
            first = outcomes[0].task_id
            again = {o.task_id: o for o in blocking.rerun_tasks(**selected, input={"text": "bulk:"})}
            assert not again[first].created and again[first].rerun.task_id == outcomes[0].rerun.task_id  # once
            assert sum(o.created for o in again.values()) == len(again) - 1  # the rest, and the new one, now

    await asyncio.to_thread(script)


@contextlib.asynccontextmanager
async def older_server(servicer: Any) -> AsyncIterator[str]:
    """A TaskService of an older server (only what `servicer` implements), as a real gRPC server on loopback."""
    from mcp_sdk.proto import task_pb2_grpc

    server = grpc.aio.server()
    task_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_watch_falls_back_to_watch_task_on_a_server_without_the_batched_watch():
    """An older server (only WatchTask; WatchTaskEvents answers UNIMPLEMENTED), as a real gRPC
    server on loopback."""
    from mcp_sdk.proto import task_pb2_grpc

    kinds = [E.TASK_EVENT_TYPE_QUEUED, E.TASK_EVENT_TYPE_STARTED, E.TASK_EVENT_TYPE_COMPLETED]

    class OlderTaskService(task_pb2_grpc.TaskServiceServicer):
        async def WatchTask(self, request, context):
            for sequence, kind in enumerate(kinds, start=1):
                if sequence > request.after_sequence:
                    yield task_pb2.TaskEvent(task_id=request.task_id, sequence=sequence, type=kind)

    async with older_server(OlderTaskService()) as address, Client(address) as client:
        assert [e.sequence async for e in client.watch("t1")] == [1, 2, 3]
        assert [e.sequence async for e in client.watch("t1", after=1)] == [2, 3]


async def test_run_falls_back_to_submit_and_watch_on_a_server_without_run_task():
    """An older server (no RunTask), as a real gRPC server on loopback: `run` submits, watches
    and reads the result instead."""
    from mcp_sdk.proto import task_pb2_grpc

    class OlderTaskService(task_pb2_grpc.TaskServiceServicer):
        async def SubmitTask(self, request, context):
            return task_pb2.SubmitTaskResponse(
                task=task_pb2.Task(task_id="t1", status=task_pb2.TASK_STATUS_PENDING), created=True
            )

        async def GetTask(self, request, context):
            task = task_pb2.Task(task_id="t1", status=task_pb2.TASK_STATUS_COMPLETED, last_sequence=2)
            task.result.CopyFrom(python_to_value({"echoed": request.task_id}))
            return task_pb2.GetTaskResponse(task=task)

        async def WatchTaskEvents(self, request, context):
            done = task_pb2.TaskEvent(task_id="t1", sequence=2, type=E.TASK_EVENT_TYPE_COMPLETED)
            yield task_pb2.WatchTaskEventsResponse(events=[done])

    async with older_server(OlderTaskService()) as address, Client(address) as client:
        assert await client.run("anything", timeout=10) == {"echoed": "t1"}


async def test_run_returns_the_result_across_a_kill_9_and_restart_of_the_server(restartable):
    """RunTask is asked again with the same request id after the server dies: the same task,
    finished by the restarted server, and its result."""
    async with Client(restartable.address, watch_give_up_after=60) as client:
        await client.create_workflow(sleeps("four-sleeps", 4, 300))
        running = asyncio.create_task(client.run("four-sleeps", request_id="run-through-a-crash", timeout=60))
        await asyncio.sleep(0.6)  # the task is under way, RunTask waiting
        await restartable.kill()
        assert not running.done()
        await restartable.start_again()
        assert await running == {"ms": 300, "slept_ms": 300}  # the last step's output
        tasks = (await client.list_tasks(workflow_id="four-sleeps")).tasks
        assert len(tasks) == 1 and tasks[0].status == task_pb2.TASK_STATUS_COMPLETED  # asked twice, submitted once


# ---- submit_and_watch: SubmitAndWatchTask ----------------------------------------------------
async def test_submit_and_watch_delivers_every_event_once_across_a_kill_9_and_restart(restartable):
    """The stream that submitted the task dies with the server; the SDK goes on watching after
    the last event it delivered, on the restarted server, which takes the task over."""
    async with Client(restartable.address, watch_give_up_after=60) as client:
        await client.create_workflow(sleeps("six-followed", 6, 300))
        events: list[task_pb2.TaskEvent] = []
        restart: asyncio.Task[None] | None = None
        async with asyncio.timeout(60):
            async for event in client.submit_and_watch("six-followed", request_id="followed-through-a-crash"):
                events.append(event)
                if restart is None and event.type == E.TASK_EVENT_TYPE_STEP_COMPLETED and event.step_path == "root/s2":
                    restart = asyncio.create_task(restartable.kill_and_restart())
        assert restart is not None and restart.done() and restartable.restarted, (
            "the server was not restarted during the stream"
        )
        final = await client.get(events[0].task_id, steps=False)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED
        assert_every_event_once(events, final.last_sequence)
        assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in events)
        assert len((await client.list_tasks(workflow_id="six-followed")).tasks) == 1


async def test_submit_and_watch_delivers_every_event_once_across_dropped_connections(server_factory):
    running = await server_factory()
    proxy = await TcpProxy(running.address).start()
    try:
        async with Client(proxy.address, watch_give_up_after=30) as client:
            await client.create_workflow(sleeps("five-followed", 5, 150))
            events: list[task_pb2.TaskEvent] = []
            dropped = 0
            async with asyncio.timeout(30):
                async for event in client.submit_and_watch("five-followed"):
                    events.append(event)
                    if event.type in (E.TASK_EVENT_TYPE_QUEUED, E.TASK_EVENT_TYPE_STEP_COMPLETED):
                        dropped += proxy.drop()
            final = await client.get(events[0].task_id, steps=False)
            assert_every_event_once(events, final.last_sequence)
            assert dropped >= 5 and proxy.connections >= 5, (dropped, proxy.connections)
            assert len((await client.list_tasks(workflow_id="five-followed")).tasks) == 1
    finally:
        await proxy.stop()


async def test_submit_and_watch_asks_again_with_the_same_request_id_when_refused_before_the_first_message():
    """A server that is unavailable for the first call (nothing streamed, so no task id is
    known): the SDK asks again with the same request, as a real gRPC server on loopback sees."""
    from mcp_sdk.proto import task_pb2_grpc

    seen: list[str] = []

    class FlakyTaskService(task_pb2_grpc.TaskServiceServicer):
        async def SubmitAndWatchTask(self, request, context):
            seen.append(request.request_id)
            if len(seen) == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "starting up")
            task = task_pb2.Task(task_id="t1", status=task_pb2.TASK_STATUS_PENDING)
            yield task_pb2.SubmitAndWatchTaskResponse(
                submitted=task_pb2.SubmitTaskResponse(task=task, created=True),
                events=[task_pb2.TaskEvent(task_id="t1", sequence=1, type=E.TASK_EVENT_TYPE_QUEUED)],
            )
            yield task_pb2.SubmitAndWatchTaskResponse(
                events=[task_pb2.TaskEvent(task_id="t1", sequence=2, type=E.TASK_EVENT_TYPE_COMPLETED)]
            )

    async with older_server(FlakyTaskService()) as address, Client(address) as client:
        assert [e.sequence async for e in client.submit_and_watch("anything")] == [1, 2]
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0]  # one generated request id, sent twice


async def test_submit_and_watch_falls_back_to_submit_and_watch_task_events_on_an_older_server():
    from mcp_sdk.proto import task_pb2_grpc

    class OlderTaskService(task_pb2_grpc.TaskServiceServicer):
        async def SubmitTask(self, request, context):
            return task_pb2.SubmitTaskResponse(
                task=task_pb2.Task(task_id="t7", status=task_pb2.TASK_STATUS_PENDING), created=True
            )

        async def WatchTaskEvents(self, request, context):
            kinds = [E.TASK_EVENT_TYPE_QUEUED, E.TASK_EVENT_TYPE_STARTED, E.TASK_EVENT_TYPE_COMPLETED]
            yield task_pb2.WatchTaskEventsResponse(
                events=[
                    task_pb2.TaskEvent(task_id=request.task_id, sequence=i, type=k)
                    for i, k in enumerate(kinds, start=1)
                    if i > request.after_sequence
                ]
            )

    async with older_server(OlderTaskService()) as address, Client(address) as client:
        assert [(e.task_id, e.sequence) async for e in client.submit_and_watch("anything")] == [
            ("t7", 1),
            ("t7", 2),
            ("t7", 3),
        ]


async def test_submit_and_watch_raises_when_a_server_ends_the_stream_without_naming_the_task():
    """A broken server (as a real gRPC server on loopback) that ends the stream at once: a clear
    error, not a retry loop."""
    from mcp_sdk.proto import task_pb2_grpc

    class BrokenTaskService(task_pb2_grpc.TaskServiceServicer):
        async def SubmitAndWatchTask(self, request, context):
            return
            yield  # an async generator that sends nothing

    async with older_server(BrokenTaskService()) as address, Client(address) as client:
        with pytest.raises(McpError) as raised:
            async with asyncio.timeout(10):
                async for _ in client.submit_and_watch("anything"):
                    pass
        assert raised.value.code == grpc.StatusCode.INTERNAL and "without naming the task" in str(raised.value)
