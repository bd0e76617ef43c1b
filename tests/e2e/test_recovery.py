"""Crash recovery with real processes: kill -9 an orchestrator mid-run; the task resumes from its
snapshot, finished steps are not called again, and the event log stays gapless."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import Any

import pytest

from mcp_sdk.proto import task_pb2
from tests.conftest import Client, client_for_address
from tests.e2e.test_server_process import free_port
from tests.helpers import create, plugin_stats, result, step, submit, wait_done, workflow
from tests.support.processes import replica_set
from tests.support.processes import start_orchestrator as start_process

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


def start_orchestrator(address: str, store: str, plugin_address: str, replica: str) -> subprocess.Popen[bytes]:
    return start_process(address, store, [plugin_address], replica, MCP_LEASE_SECONDS="1.5")


def connect(address: str) -> Client:
    return client_for_address(address)


async def read_log(client: Client, task_id: str) -> list[task_pb2.TaskEvent]:
    return [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))]


async def kill_when_started(
    process: subprocess.Popen[bytes], client: Client, task_id: str, path: str, after: float = 0.0
) -> list[task_pb2.TaskEvent]:
    """Follow the task until the step at `path` has started, then (`after` seconds later) kill -9
    the orchestrator; the events seen until then."""
    seen: list[task_pb2.TaskEvent] = []
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        seen.append(event)
        if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == path:
            break
    await asyncio.sleep(after)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    await client.channel.close()
    return seen


def assert_gapless(log: list[task_pb2.TaskEvent]) -> None:
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert log[-1].type == E.TASK_EVENT_TYPE_COMPLETED


def assert_no_finished_step_ran_twice(log: list[task_pb2.TaskEvent], calls: dict[str, Any]) -> None:
    """Steps whose completion was written before the takeover were never called again."""
    resumed_at = next((e.sequence for e in log if e.type == E.TASK_EVENT_TYPE_RESUMED), None)
    completed = [e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED and e.protocol]
    paths = [e.step_path for e in completed]
    assert len(paths) == len(set(paths)), "a step completed twice"
    for event in completed:
        key = f"{event.task_id}/{event.step_path}/{event.protocol}"
        limit = 1 if resumed_at is None or event.sequence < resumed_at else 2
        assert 1 <= calls[key] <= limit, (key, calls[key], resumed_at, [(e.sequence, e.message) for e in log])


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_killed_orchestrator_resumes_the_task_from_its_snapshot(plugins, testkit, tmp_path, request, backend):
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    plugin = plugins["testkit"].address
    first = start_orchestrator(address, store, plugin, "first")
    client = connect(address)
    wf = workflow(
        "five", {"id": "root", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 250}") for i in range(1, 6)]}}
    )
    await create(client, wf)
    task = await submit(client, "five")
    seen = await kill_when_started(first, client, task.task_id, "root/s3")

    second = start_orchestrator(address, store, plugin, "second")
    try:
        client = connect(address)
        rest = [
            e
            async for e in client.tasks.WatchTask(
                task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=seen[-1].sequence)
            )
        ]
        log = seen + rest
        assert_gapless(log)
        assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in rest)
        calls = (await plugin_stats(testkit))["calls"]
        for i in (1, 2, 4, 5):
            assert calls[f"{task.task_id}/root/s{i}/sleep"] == 1, (
                f"s{i} ran {calls[f'{task.task_id}/root/s{i}/sleep']} times"
            )
        assert calls[f"{task.task_id}/root/s3/sleep"] == 2  # in flight at the kill: re-run, same idempotency key
        assert_no_finished_step_ran_twice(log, calls)
        final = await wait_done(client, task.task_id)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_task_killed_inside_a_subworkflow_resumes_there_with_its_steps(
    plugins, testkit, tmp_path, request, backend
):
    """The replica dies while a subworkflow's second step runs: the next one calls neither the step
    before the subworkflow nor its first step again, and the subworkflow's CEL still sees `steps`
    of its own (rebuilt from the snapshot) and its `input`."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    plugin = plugins["testkit"].address
    first = start_orchestrator(address, store, plugin, "first")
    client = connect(address)
    inner = [
        step("s1", "echo", "{'mark': input.tag}"),
        step("s2", "sleep", "{'ms': 400}"),
        step("s3", "echo", "{'first': steps.s1.mark, 'tag': input.tag}"),
    ]
    await create(client, workflow("inner", {"id": "steps", "sequence": {"children": inner}}))
    outer = [
        step("o1", "echo"),
        {"id": "in", "subworkflow": {"workflow_id": "inner", "input": "{'tag': prev.tag + '!'}"}},
    ]
    await create(client, workflow("outer", {"id": "root", "sequence": {"children": outer}}))
    task = await submit(client, "outer", {"tag": "t"})
    seen = await kill_when_started(first, client, task.task_id, "root/in/steps/s2")

    second = start_orchestrator(address, store, plugin, "second")
    try:
        client = connect(address)
        after = task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=seen[-1].sequence)
        log = seen + [e async for e in client.tasks.WatchTask(after)]
        assert_gapless(log)
        calls = (await plugin_stats(testkit))["calls"]
        ran = {key.split("/", 1)[1]: n for key, n in calls.items() if key.startswith(task.task_id + "/")}
        assert ran == {
            "root/o1/echo": 1,
            "root/in/steps/s1/echo": 1,
            "root/in/steps/s2/sleep": 2,
            "root/in/steps/s3/echo": 1,
        }
        final = await wait_done(client, task.task_id)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED and result(final) == {"first": "t!", "tag": "t!"}
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_task_killed_in_a_recover_node_s_handler_goes_on_there(plugins, testkit, tmp_path, request, backend):
    """The body failed and its failure was written; the replica dies while the handler runs: the
    next one does not run the body again (its failure stands) and gives the handler the same error."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    plugin = plugins["testkit"].address
    first = start_orchestrator(address, store, plugin, "first")
    client = connect(address)
    body = step("a", "fail", "{'code': 'UNAVAILABLE'}", retry={"max_attempts": 1})
    handler = step("h", "sleep", "{'ms': 600, 'why': error.code, 'where': error.step_path}")
    await create(client, workflow("rescued", {"id": "r", "recover": {"body": body, "handler": handler}}))
    task = await submit(client, "rescued")
    seen = await kill_when_started(first, client, task.task_id, "r/h", after=0.2)

    second = start_orchestrator(address, store, plugin, "second")
    try:
        client = connect(address)
        after = task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=seen[-1].sequence)
        assert_gapless(seen + [e async for e in client.tasks.WatchTask(after)])
        calls = (await plugin_stats(testkit))["calls"]
        ran = {key.split("/", 1)[1]: n for key, n in calls.items() if key.startswith(task.task_id + "/")}
        assert ran == {"r/a/fail": 1, "r/h/sleep": 2}
        final = await wait_done(client, task.task_id)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED
        assert result(final) == {"ms": 600, "why": "UNAVAILABLE", "where": "r/a", "slept_ms": 600}
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_node_s_timeout_counts_from_its_first_start_across_a_kill_9(
    plugins, testkit, tmp_path, request, backend
):
    """A sequence with a 4 s timeout: its second step runs when its replica is killed; the next
    replica runs that step again with what is left of the 4 s, not 4 s more, and never the third."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    plugin = plugins["testkit"].address
    first = start_orchestrator(address, store, plugin, "first")
    client = connect(address)
    naps = [step("a", "sleep", "{'ms': 1000}"), step("b", "sleep", "{'ms': 3000}"), step("c", "echo")]
    await create(client, workflow("bounded", {"id": "s", "timeout": "4s", "sequence": {"children": naps}}))
    task = await submit(client, "bounded")
    seen = await kill_when_started(first, client, task.task_id, "s/b", after=0.3)
    began = next(e.time for e in seen if e.type == E.TASK_EVENT_TYPE_STEP_STARTED and e.step_path == "s")

    second = start_orchestrator(address, store, plugin, "second")
    try:
        client = connect(address)
        final = await wait_done(client, task.task_id)
        assert final.status == task_pb2.TASK_STATUS_FAILED and "its timeout of 4s ran out" in final.error.message
        took = (final.end_time.ToNanoseconds() - began.ToNanoseconds()) / 1e9
        assert 4.0 - 0.005 <= took < 5.5, took  # ended by what was left of its budget
        calls = (await plugin_stats(testkit))["calls"]
        assert f"{task.task_id}/s/c/echo" not in calls
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_steps_a_resumed_run_never_comes_back_to_are_not_left_running(
    plugins, testkit, tmp_path, request, backend
):
    """A map with a 2 s timeout, two items at a time, whose third item ran when its replica was
    killed: the next replica takes the task over after the timeout ran out, so the map fails at
    once, calling nothing inside it again. That item is recorded cancelled, not left running in
    the finished task (the chaos soak, bench/chaos.py, found it left running when the map
    replayed its first two items and failed before it came back to the third)."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    plugin = plugins["testkit"].address
    first = start_orchestrator(address, store, plugin, "first")
    client = connect(address)
    nap = step("nap", "sleep", "{'ms': item == 3 ? 5000 : 50}")
    items = {"items": "[1, 2, 3]", "body": nap, "max_concurrency": 2}
    await create(client, workflow("orphans", {"id": "p", "timeout": "2s", "map": items}))
    task = await submit(client, "orphans")
    await kill_when_started(first, client, task.task_id, "p/nap[2]", after=0.3)
    await asyncio.sleep(2.0)  # the timeout runs out while no replica runs the task

    second = start_orchestrator(address, store, plugin, "second")
    try:
        client = connect(address)
        final = await wait_done(client, task.task_id)
        assert final.status == task_pb2.TASK_STATUS_FAILED and "its timeout of 2s ran out" in final.error.message
        states = {state.path: state for state in final.steps}
        assert states["p/nap[0]"].status == states["p/nap[1]"].status == task_pb2.STEP_STATUS_COMPLETED
        third = states["p/nap[2]"]
        assert third.status == task_pb2.STEP_STATUS_CANCELLED and third.HasField("end_time"), third
        assert third.error.message == "map p: its timeout of 2s ran out while no replica ran the task"
        assert (await plugin_stats(testkit))["calls"][f"{task.task_id}/p/nap[2]/sleep"] == 1
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_step_s_timeout_counts_from_its_first_start_across_a_kill_9(plugins, tmp_path, request, backend):
    """The step timeout is a budget for the whole step: a step in flight at a crash has what is left
    of it when it runs again (before, the budget began again, so a step could run for any number of
    budgets, one per crash). Here 3 s calls in a 5 s budget: 2 s spent, then a whole call again."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    plugin = plugins["testkit"].address
    first = start_orchestrator(address, store, plugin, "first")
    client = connect(address)
    slow = step("s", "sleep", "{'ms': 3000}", timeout="5s")
    wf = workflow("budget", {"id": "root", "sequence": {"children": [slow]}})
    await create(client, wf)
    task = await submit(client, "budget")
    seen = await kill_when_started(first, client, task.task_id, "root/s", after=2.0)
    began = next(e.time for e in seen if e.type == E.TASK_EVENT_TYPE_STEP_STARTED and e.step_path == "root/s")

    second = start_orchestrator(address, store, plugin, "second")
    try:
        client = connect(address)
        final = await wait_done(client, task.task_id)
        assert final.status == task_pb2.TASK_STATUS_FAILED, final
        assert "the step timeout of 5s ran out" in final.error.message
        state = next(s for s in final.steps if s.path == "root/s")
        assert abs(state.start_time.ToNanoseconds() - began.ToNanoseconds()) < 1e6  # its start is its first one
        took = final.end_time.ToNanoseconds() - began.ToNanoseconds()
        # ended by the budget, not by a second whole one; the loop's timers (uvloop's) count in
        # milliseconds, and the event's time and the step's start may differ by as much: 5 ms of slack
        assert 5e9 - 5e6 <= took < 7e9, took / 1e9
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


async def kill_on_retry(
    process: subprocess.Popen[bytes], client: Client, task_id: str, protocol: str, attempt: int
) -> None:
    """Follow the task until `protocol`'s attempt `attempt` has failed and is to be retried (the
    step is in its backoff), then kill -9 the orchestrator."""
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        if event.type == E.TASK_EVENT_TYPE_STEP_RETRYING and event.protocol == protocol and event.attempt == attempt:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    await client.channel.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("killed_in", ["the step's own protocol", "its fallback"])
async def test_a_step_s_attempts_and_fallbacks_span_a_kill_9(plugins, testkit, tmp_path, request, backend, killed_in):
    """The retry policy bounds a protocol's failed calls over the whole step: a step resumed after a
    crash goes on with the attempts and the fallback it had left (before, each life began again
    with the step's own protocol and a whole policy, so a step failing for good was called
    max_attempts times more per crash). Killed in the backoff after `fail`'s 2nd of 3 failures:
    `fail` is called once more, then the fallback; killed in the fallback's backoff: `fail` is not
    called again."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    first = start_orchestrator(address, store, plugins["testkit"].address, "first")
    client = connect(address)
    own_attempts = 3 if killed_in == "the step's own protocol" else 2
    retry = {"max_attempts": own_attempts, "initial_backoff": "2s", "backoff_multiplier": 1, "jitter": 0.1}
    flaky = {"protocol": "flaky", "input": "{'failures': 1}"}
    shaky = step("s", "fail", retry=retry, fallbacks=[flaky])
    await create(client, workflow("shaky", {"id": "root", "sequence": {"children": [shaky]}}))
    task = await submit(client, "shaky")
    if killed_in == "the step's own protocol":
        await kill_on_retry(first, client, task.task_id, "fail", attempt=2)
    else:
        await kill_on_retry(first, client, task.task_id, "flaky", attempt=1)

    second = start_orchestrator(address, store, plugins["testkit"].address, "second")
    try:
        client = connect(address)
        final = await wait_done(client, task.task_id)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED, final
        calls = (await plugin_stats(testkit))["calls"]
        assert calls[f"{task.task_id}/root/s/fail"] == own_attempts  # not a whole policy again
        assert calls[f"{task.task_id}/root/s/flaky"] == 2  # its 2nd call succeeds
        state = next(s for s in final.steps if s.path == "root/s")
        assert (state.fallback_protocol, state.fallback_index, state.failed_attempts) == ("flaky", 1, 1)
        assert state.attempts == own_attempts + 2
        log = await read_log(client, task.task_id)
        assert_gapless(log)
        fallbacks = [e for e in log if e.type == E.TASK_EVENT_TYPE_FALLBACK_USED]
        assert len(fallbacks) == 1 and fallbacks[0].protocol == "flaky"
        retried = [(e.protocol, e.attempt) for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING]
        assert retried == [("fail", n) for n in range(1, own_attempts)] + [("flaky", 1)]
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


async def retried_once(client: Client, testkit: Any, task_id: str) -> tuple[task_pb2.Task, dict[int, int]]:
    """The task, completed after its step `s` (flaky, one failure) was retried once; and when the
    first event of each type came (ns)."""
    final = await wait_done(client, task_id)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final
    assert (await plugin_stats(testkit))["calls"][f"{task_id}/s/flaky"] == 2
    first_of: dict[int, int] = {}
    for event in await read_log(client, task_id):
        first_of.setdefault(event.type, event.time.ToNanoseconds())
    return final, first_of


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("stopped_by", [signal.SIGKILL, signal.SIGTERM])
async def test_a_retry_s_backoff_is_waited_out_across_a_kill_9_or_a_shutdown(
    plugins, testkit, tmp_path, request, backend, stopped_by
):
    """Killed (or shut down, with 1 s of grace) 0.3 s into an 8 s backoff held in memory
    (MCP_WAIT_IN_MEMORY_SECONDS above it; a longer backoff parks the task, durably): the next
    process resumes the task within ~3 s (7 s allowed: a slow machine took 5.7 s to stop one
    process and start the next), and the retry still goes when it is due (before, a resumed
    step called at once)."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    in_memory = {"MCP_LEASE_SECONDS": "1.5", "MCP_WAIT_IN_MEMORY_SECONDS": "30", "MCP_SHUTDOWN_GRACE": "1"}
    first = start_process(address, store, [plugins["testkit"].address], "first", **in_memory)
    client = connect(address)
    retry = {"max_attempts": 2, "initial_backoff": "8s", "max_backoff": "8s", "jitter": 0.05}
    await create(client, workflow("patient", step("s", "flaky", "{'failures': 1}", retry=retry)))
    task = await submit(client, "patient")
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
        if event.type == E.TASK_EVENT_TYPE_STEP_RETRYING:
            retried = event.time.ToNanoseconds()
            break
    await asyncio.sleep(0.3)
    first.send_signal(stopped_by)
    first.wait(timeout=15)
    await client.channel.close()

    second = start_process(address, store, [plugins["testkit"].address], "second", **in_memory)
    try:
        client = connect(address)
        final, first_of = await retried_once(client, testkit, task.task_id)
        assert first_of[E.TASK_EVENT_TYPE_RESUMED] - retried < 7.0e9  # resumed inside the backoff...
        assert first_of[E.TASK_EVENT_TYPE_STEP_COMPLETED] - retried >= 7.6e9  # ...and the retry waited (8 s - jitter)
        assert not final.steps[0].HasField("retry_time")
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_task_parked_in_a_backoff_outlives_a_kill_9_and_retries_when_due(
    plugins, testkit, tmp_path, request, backend
):
    """A 5 s backoff parks its task (WAITING, due when the retry is): kill -9 the only process,
    start another: the retry goes when it is due, once."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    first = start_orchestrator(address, store, plugins["testkit"].address, "first")
    client = connect(address)
    retry = {"max_attempts": 2, "initial_backoff": "5s", "max_backoff": "5s", "jitter": 0.05}
    await create(client, workflow("parked-retry", step("s", "flaky", "{'failures': 1}", retry=retry)))
    task = await submit(client, "parked-retry")
    async with asyncio.timeout(10):
        while (
            await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))
        ).task.status != task_pb2.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    await client.channel.close()

    second = start_orchestrator(address, store, plugins["testkit"].address, "second")
    try:
        client = connect(address)
        _, first_of = await retried_once(client, testkit, task.task_id)
        waited = first_of[E.TASK_EVENT_TYPE_STEP_COMPLETED] - first_of[E.TASK_EVENT_TYPE_STEP_RETRYING]
        assert waited >= 4.7e9  # 5 s less the jitter
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_rerun_killed_mid_run_recovers_like_any_task(plugins, testkit, tmp_path, request, backend):
    """kill -9 while a rerun runs: the next process resumes it; its kept steps are never called,
    the steps it finished before the kill are not called again."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    address = f"127.0.0.1:{free_port()}"
    plugin = plugins["testkit"].address
    first = start_orchestrator(address, store, plugin, "first")
    client = connect(address)
    wf = workflow(
        "five-again",
        {"id": "root", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 250}") for i in range(1, 6)]}},
    )
    await create(client, wf)
    original = await wait_done(client, (await submit(client, "five-again")).task_id)
    rerun = (
        await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/s3"))
    ).task
    seen = await kill_when_started(first, client, rerun.task_id, "root/s4")

    second = start_orchestrator(address, store, plugin, "second")
    try:
        client = connect(address)
        log = await read_log(client, rerun.task_id)
        assert [e.sequence for e in log[: len(seen)]] == [e.sequence for e in seen]
        assert_gapless(log)
        assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in log)
        calls = (await plugin_stats(testkit))["calls"]
        assert not any(f"{rerun.task_id}/root/s{i}/" in key for key in calls for i in (1, 2))  # kept
        assert calls[f"{rerun.task_id}/root/s3/sleep"] == 1  # finished before the kill
        assert calls[f"{rerun.task_id}/root/s4/sleep"] == 2  # in flight at the kill: run again
        assert calls[f"{rerun.task_id}/root/s5/sleep"] == 1
        final = await wait_done(client, rerun.task_id)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED and final.rerun_of == original.task_id
        assert [s.reused for s in final.steps if s.path in ("root/s1", "root/s2")] == [True, True]
        await client.channel.close()
    finally:
        second.terminate()
        second.wait(timeout=15)


async def test_three_replicas_share_200_tasks_and_survive_losing_one(plugins, testkit, redis_url):
    async with replica_set(3, redis_url, [plugins["testkit"].address], "replica-", MCP_LEASE_SECONDS="1.5") as (
        replicas,
        clients,
    ):
        wf = workflow(
            "three",
            {"id": "root", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 200}") for i in range(1, 4)]}},
        )
        await create(clients[0], wf)
        tasks = [await submit(clients[i % 3], "three") for i in range(200)]
        replicas[1].send_signal(signal.SIGKILL)
        replicas[1].wait(timeout=10)
        survivors = [clients[0], clients[2]]
        logs = await asyncio.gather(*(read_log(survivors[i % 2], t.task_id) for i, t in enumerate(tasks)))
        calls = (await plugin_stats(testkit))["calls"]
        resumed = 0
        for task, log in zip(tasks, logs):
            assert_gapless(log)
            assert_no_finished_step_ran_twice(log, calls)
            resumed += any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in log)
            # a watcher that reconnects part-way receives exactly the rest
            middle = log[len(log) // 2].sequence
            tail = [
                e
                async for e in survivors[0].tasks.WatchTask(
                    task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=middle)
                )
            ]
            assert [e.sequence for e in tail] == list(range(middle + 1, len(log) + 1))
        assert resumed >= 1, "the killed replica was running no task: the test proved nothing"
        starters = {
            e.data.fields["replica"].string_value for log in logs for e in log if e.type == E.TASK_EVENT_TYPE_STARTED
        }
        assert starters == {"replica-0", "replica-1", "replica-2"}  # the work was spread over all three


async def runner_of(client: Client, task_id: str) -> int:
    """Which replica of a replica_set (its id's last digit) runs the task, once its step `nap` started."""
    started = ""
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        if event.type == E.TASK_EVENT_TYPE_STARTED:
            started = event.data.fields["replica"].string_value
        if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == "nap":
            return int(started[-1])
    raise AssertionError(f"task {task_id} ended before its step nap started")


async def test_cancel_on_one_replica_stops_a_task_running_on_another(plugins, testkit, redis_url):
    async with replica_set(2, redis_url, [plugins["testkit"].address], "r", MCP_LEASE_SECONDS="1.5") as (_, clients):
        await create(clients[0], workflow("long-haul", step("nap", "sleep", "{'ms': 20000}")))
        task = await submit(clients[0], "long-haul")
        other = clients[1 - await runner_of(clients[0], task.task_id)]
        cancelled = (
            await other.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="from afar"))
        ).task
        assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED and "from afar" in cancelled.error.message
        assert (await plugin_stats(testkit))["cancelled"] == 1


@pytest.mark.parametrize("redis", ["redis_url", "cluster_url"])
async def test_a_cancel_through_another_replica_reaches_the_run_by_its_nudge(plugins, testkit, request, redis):
    """The replica running a task hears of a cancel left through another one from the Redis
    nudge (one node, and a cluster): its poll runs once a minute here, longer than CancelTask
    waits for the task to end (the lease plus 5 s), so without the nudge each cancel would fail."""
    store = request.getfixturevalue(redis)
    env = {"MCP_LEASE_SECONDS": "1.5", "MCP_CANCEL_POLL_SECONDS": "60"}
    async with replica_set(2, store, [plugins["testkit"].address], "n", **env) as (_, clients):
        await create(clients[0], workflow("nudged", step("nap", "sleep", "{'ms': 20000}")))
        before = (await plugin_stats(testkit))["cancelled"]
        for round_ in range(3):  # a nudge after nudges: each reaches its run
            task = await submit(clients[round_ % 2], "nudged")
            other = clients[1 - await runner_of(clients[0], task.task_id)]
            reply = await other.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="nudged"))
            assert reply.task.status == task_pb2.TASK_STATUS_CANCELLED and "nudged" in reply.task.error.message
        assert (await plugin_stats(testkit))["cancelled"] == before + 3
