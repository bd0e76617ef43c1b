"""Rate limits, on both stores, against the testkit plugin process: calls take units before
they go, wait (holding no call) when there are none, and every replica shares one limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from mcp_sdk.client import Client as SdkClient
from mcp_sdk.proto import registry_pb2, task_pb2, workflow_pb2
from mcp_server.console.present import waits_for
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    create,
    error_reason,
    events,
    plugin_stats,
    refused,
    step,
    submit,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
S = task_pb2.TaskStatus
SLACK = 0.03  # a grant and the call reaching the plugin are this far apart, at most, on loopback
# ... on an idle machine. Calls granted together reach the plugin up to this far apart when every
# core is busy (CI): one of a batch that lands late then shares a window with the next batch. An
# overshoot (a sixth grant in a period) arrives with its batch, far inside this margin.
ARRIVAL_JITTER = 0.1


def seconds(value: float) -> duration_pb2.Duration:
    period = duration_pb2.Duration()
    period.FromNanoseconds(int(value * 1e9))
    return period


async def put_limit(client: Any, key: str, limit: float, period: float, burst: float = 0) -> registry_pb2.RateLimit:
    rate_limit = registry_pb2.RateLimit(key=key, limit=limit, period=seconds(period), burst=burst)
    return await client.registry.PutRateLimit(registry_pb2.PutRateLimitRequest(rate_limit=rate_limit))


async def limit_known(replicas: Sequence[Any], key: str) -> None:
    """Once every replica knows `key` has a limit: each learns of a put through another as its
    announcement comes, else within a second (docs/rate-limits.md), and runs its calls unlimited
    until then."""
    async with asyncio.timeout(10):
        while any(key not in replica.orchestrator.rate_limits.limited for replica in replicas):
            await asyncio.sleep(0.02)


def ticks_wf(workflow_id: str, tag: str, count: int, uses: list[dict[str, Any]] | None = None) -> workflow_pb2.Workflow:
    body = step("t", "tick", f"{{'tag': '{tag}', 'i': item}}", **({"rate_limits": uses} if uses else {}))
    return workflow(workflow_id, {"id": "m", "map": {"items": str(list(range(count))), "body": body}})


def most_in_a_window(times: list[float], period: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + period - ARRIVAL_JITTER) for start in times)


async def test_fifteen_calls_under_five_a_second_never_pass_the_limit_and_wait_visibly(served, testkit):
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"tenant:{tag}", 5, 1.0)
    uses = [{"key_expression": "'tenant:' + input.tag"}]
    await create(client, ticks_wf("ticks", tag, 15, uses))
    started = time.monotonic()
    task = await wait_done(client, (await submit(client, "ticks", {"tag": tag})).task_id, timeout=30)
    took = time.monotonic() - started

    assert task.status == S.TASK_STATUS_COMPLETED
    times = (await plugin_stats(testkit))["ticks"][tag]
    assert len(times) == 15
    assert most_in_a_window(times, 1.0) <= 5
    assert took >= 1.9  # 15 calls at 5 a second: the last five go two seconds after the first
    waiting = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_STEP_WAITING]
    assert waiting and all(e.data.fields["rate_limit"].string_value == f"tenant:{tag}" for e in waiting)
    assert "units again at" in waiting[0].message


async def test_the_protocol_key_limits_every_call_of_a_protocol_and_a_units_expression_counts(served, testkit):
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, "protocol:tick", 100, 1.0)
    await put_limit(client, f"tokens:{tag}", 30, 1.0)
    uses = [{"key": f"tokens:{tag}", "units": "size(call.tag) / 4"}]  # 32 characters: 8 units a call
    await create(client, ticks_wf("token-ticks", tag, 8, uses))
    task = await wait_done(client, (await submit(client, "token-ticks")).task_id, timeout=30)
    assert task.status == S.TASK_STATUS_COMPLETED
    times = (await plugin_stats(testkit))["ticks"][tag]
    assert most_in_a_window(times, 1.0) <= 3  # 30 units a second: three calls of 8
    listed = {
        r.key: r for r in (await client.registry.ListRateLimits(registry_pb2.ListRateLimitsRequest())).rate_limits
    }
    assert listed["protocol:tick"].limit == 100 and listed[f"tokens:{tag}"].available <= 30
    await client.registry.DeleteRateLimit(registry_pb2.DeleteRateLimitRequest(key="protocol:tick"))


async def test_an_ask_no_limit_can_grant_fails_the_step_at_once(served):
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"small:{tag}", 2, 1.0, burst=1)
    wf = workflow(
        "too-big", {"id": "s", "step": {"protocol": "tick", "rate_limits": [{"key": f"small:{tag}", "units": "4"}]}}
    )
    await create(client, wf)
    started = time.monotonic()
    task = await wait_done(client, (await submit(client, "too-big")).task_id)
    assert task.status == S.TASK_STATUS_FAILED and time.monotonic() - started < 2
    assert "RESOURCE_EXHAUSTED" in task.error.message or task.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "more than it grants" in task.error.message


async def test_a_long_wait_parks_the_task_and_it_goes_on_when_units_come(served, testkit):
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"slow:{tag}", 1, 4.0)
    wf = workflow(
        "slow-ticks",
        {
            "id": "s",
            "step": {"protocol": "tick", "input": f"{{'tag': '{tag}'}}", "rate_limits": [{"key": f"slow:{tag}"}]},
        },
    )
    await create(client, wf)
    first = await wait_done(client, (await submit(client, "slow-ticks")).task_id)
    second = await submit(client, "slow-ticks")
    async with asyncio.timeout(10):
        while (
            await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=second.task_id))
        ).task.status != S.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)  # every branch waits for units more than 2 s away: it parks, holding nothing
    done = await wait_done(client, second.task_id, timeout=15)
    assert first.status == done.status == S.TASK_STATUS_COMPLETED
    times = sorted((await plugin_stats(testkit))["ticks"][tag])
    # grants 4 s apart; the first may reach the plugin late on a busy machine, the second on time
    assert len(times) == 2 and times[1] - times[0] >= 4.0 - ARRIVAL_JITTER
    assert not done.steps[0].HasField("wait")  # the timeout it kept while parked is gone with the wait


async def test_the_wait_for_units_counts_against_the_step_timeout_across_a_park(served):
    """A step with a 3 s timeout whose units come in an hour: its task parks (the wait is more
    than 2 s away) and the step fails when its 3 s are up, not when the units come (a parked
    step used to start its timeout anew each life, so it waited the hour)."""
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"hourly:{tag}", 1, 3600.0)
    uses = [{"key": f"hourly:{tag}"}]
    await create(client, workflow("hourly", {"id": "s", "step": {"protocol": "echo", "rate_limits": uses}}))
    timed = {"id": "s", "step": {"protocol": "echo", "timeout": "3s", "rate_limits": uses}}
    await create(client, workflow("hourly-timed", timed))
    assert (await wait_done(client, (await submit(client, "hourly")).task_id)).status == S.TASK_STATUS_COMPLETED
    started = time.monotonic()
    task = await wait_done(client, (await submit(client, "hourly-timed")).task_id, timeout=20)
    assert task.status == S.TASK_STATUS_FAILED and time.monotonic() - started < 15
    assert "step timeout of 3s ran out while it waited for rate-limit units" in task.error.message
    kinds = [e.type for e in await events(client, task.task_id)]
    assert E.TASK_EVENT_TYPE_STEP_WAITING in kinds and E.TASK_EVENT_TYPE_RESUMED in kinds  # it did park
    assert not task.steps[0].HasField("wait")


async def test_units_past_the_year_9999_are_waited_for_within_the_step_timeout(served):
    """An ask whose units come back only after ~10^292 years (a huge ask under a huge burst):
    the wait says when (the last second a timestamp can hold) and ends with the step's timeout
    (it failed the task with an internal OverflowError before)."""
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"far:{tag}", 1, 1.0, burst=1e300)
    step_ = {"protocol": "echo", "timeout": "2s", "rate_limits": [{"key": f"far:{tag}", "units": "1e300"}]}
    await create(client, workflow("far", {"id": "s", "step": step_}))
    assert (await wait_done(client, (await submit(client, "far")).task_id)).status == S.TASK_STATUS_COMPLETED
    task = await wait_done(client, (await submit(client, "far")).task_id, timeout=20)
    assert task.status == S.TASK_STATUS_FAILED, task.error.message
    assert "ran out while it waited" in task.error.message and "internal" not in task.error.message
    waiting = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_STEP_WAITING]
    assert waiting[0].data["until"] == "9999-12-31T23:59:59.000Z"


async def test_a_plugin_that_asks_for_a_pause_gets_no_call_until_it_ends(served, testkit):
    _, client = served
    tag = uuid.uuid4().hex
    wf = workflow(
        "pause",
        {
            "id": "s",
            "step": {
                "protocol": "throttled",
                "input": f"{{'tag': '{tag}', 'retry_after': 0.8}}",
                "retry": {"max_attempts": 3, "initial_backoff": "0.01s"},
            },
        },
    )
    await create(client, wf)
    task = await wait_done(client, (await submit(client, "pause")).task_id)
    assert task.status == S.TASK_STATUS_COMPLETED
    first, second = sorted((await plugin_stats(testkit))["ticks"][tag])
    assert second - first >= 0.8 - SLACK  # the retry waited for the pause, not just its own backoff


async def test_bad_limits_and_uses_are_refused_with_the_field(served):
    _, client = served
    for bad, field in (
        (registry_pb2.RateLimit(key="k", limit=0, period=seconds(1)), "rate_limit.limit"),
        (registry_pb2.RateLimit(key="k", limit=1, period=seconds(0)), "rate_limit.period"),
        (registry_pb2.RateLimit(key="k", limit=1, period=seconds(1), burst=-1), "rate_limit.burst"),
        (registry_pb2.RateLimit(key="a key", limit=1, period=seconds(1)), "rate_limit.key"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.registry.PutRateLimit(registry_pb2.PutRateLimitRequest(rate_limit=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.registry.DeleteRateLimit(registry_pb2.DeleteRateLimitRequest(key="never-set"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_reason(err.value) == "RATE_LIMIT_NOT_FOUND"
    for use, field in (
        ({"key_expression": "input.(("}, "workflow.root.step.rate_limits[0].key_expression"),
        ({"key": "k", "units": "call +"}, "workflow.root.step.rate_limits[0].units"),
        ({"key": "k", "key_expression": "'k'"}, "workflow.root.step.rate_limits[0]"),
        ({}, "workflow.root.step.rate_limits[0]"),
    ):
        wf = workflow("bad-use", {"id": "s", "step": {"protocol": "tick", "rate_limits": [use]}})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create(client, wf)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in violations(err.value), violations(
            err.value
        )


async def test_two_replicas_share_one_limit(server_factory, redis_url, testkit):
    replicas = [await server_factory(store=redis_url) for _ in range(2)]
    clients = [client_for(r) for r in replicas]
    tag = uuid.uuid4().hex
    await put_limit(clients[0], f"shared:{tag}", 4, 1.0)
    wf = workflow(
        "shared",
        {
            "id": "s",
            "step": {"protocol": "tick", "input": f"{{'tag': '{tag}'}}", "rate_limits": [{"key": f"shared:{tag}"}]},
        },
    )
    await create(clients[0], wf)
    await limit_known(replicas, f"shared:{tag}")
    tasks = [await submit(clients[i % 2], "shared") for i in range(12)]
    done = await asyncio.gather(*(wait_done(clients[i % 2], t.task_id, timeout=30) for i, t in enumerate(tasks)))
    assert all(t.status == S.TASK_STATUS_COMPLETED for t in done)
    times = (await plugin_stats(testkit))["ticks"][tag]
    assert len(times) == 12 and most_in_a_window(times, 1.0) <= 4
    for client in clients:
        await client.channel.close()


async def test_every_retry_and_fallback_takes_units_like_the_first_call(served, testkit):
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"each:{tag}", 1, 1.5)
    wf = workflow(
        "each-attempt",
        {
            "id": "s",
            "step": {
                "protocol": "fail",
                "input": "{'code': 'UNAVAILABLE'}",
                "retry": {"max_attempts": 2, "initial_backoff": "0.01s"},
                "rate_limits": [{"key": f"each:{tag}"}],
                "fallbacks": [{"protocol": "tick", "input": f"{{'tag': '{tag}'}}"}],
            },
        },
    )
    await create(client, wf)
    started = time.monotonic()
    task = await wait_done(client, (await submit(client, "each-attempt")).task_id, timeout=20)
    assert task.status == S.TASK_STATUS_COMPLETED
    # three calls (two attempts, then the fallback) at one per 1.5 s: the fallback goes 3 s after the first
    assert time.monotonic() - started >= 3.0 - SLACK
    assert len((await plugin_stats(testkit))["ticks"][tag]) == 1


async def test_many_rate_limits_list_in_pages_that_fit(server_factory, store_url):
    """One rate limit per tenant is a common shape; ListRateLimits sent them all in one response,
    which passed the message limit once there were enough (about 14,000 of the longest keys at
    4 MB). It pages now: by count when asked, else as many as one response carries."""
    running = await server_factory(store_url, limits=Limits(max_message_bytes=200_000, max_event_bytes=100_000))
    client = client_for(running)
    keys = sorted(f"tenant-{n:04}-" + "k" * 240 for n in range(800))
    for key in keys:
        await put_limit(client, key, 10, 1.0)
    seen, token, pages = [], "", 0
    while True:
        reply = await client.registry.ListRateLimits(registry_pb2.ListRateLimitsRequest(page_token=token))
        assert reply.rate_limits and reply.ByteSize() < 200_000
        seen += [r.key for r in reply.rate_limits]
        pages += 1
        if not (token := reply.next_page_token):
            break
    assert seen == keys and pages >= 2
    first = await client.registry.ListRateLimits(registry_pb2.ListRateLimitsRequest(page_size=100))
    assert [r.key for r in first.rate_limits] == keys[:100] and first.next_page_token
    sdk = SdkClient(running.address)
    try:
        assert [r.key for r in await sdk.list_rate_limits()] == keys
    finally:
        await sdk.close()


async def test_a_template_limits_each_key_under_it_on_its_own(served, testkit):
    """`<prefix>*` gives every key under it the same limit, each counted apart (a limit per
    tenant without naming the tenants); a key's own limit comes before the template's."""
    _, client = served
    prefix = f"tpl{uuid.uuid4().hex[:8]}:"
    tags = [uuid.uuid4().hex for _ in range(3)]
    await put_limit(client, prefix + "*", 3, 1.0)
    await put_limit(client, prefix + tags[2], 100, 1.0)  # this tenant's own limit
    uses = [{"key_expression": f"'{prefix}' + input.tag"}]
    for i, tag in enumerate(tags):
        await create(client, ticks_wf(f"tpl-ticks-{i}", tag, 6, uses))
    tasks = [await submit(client, f"tpl-ticks-{i}", {"tag": tag}) for i, tag in enumerate(tags)]
    done = await asyncio.gather(*(wait_done(client, t.task_id, timeout=30) for t in tasks))
    assert all(t.status == S.TASK_STATUS_COMPLETED for t in done)
    stats = (await plugin_stats(testkit))["ticks"]
    for tag in tags[:2]:
        assert len(stats[tag]) == 6 and most_in_a_window(stats[tag], 1.0) <= 3
    assert most_in_a_window(stats[tags[0]] + stats[tags[1]], 1.0) > 3  # each tenant had its own 3
    assert most_in_a_window(stats[tags[2]], 1.0) == 6  # its own limit, not the template's
    waiting = [e for e in await events(client, done[0].task_id) if e.type == E.TASK_EVENT_TYPE_STEP_WAITING]
    assert waiting and all(e.data.fields["rate_limit"].string_value == prefix + tags[0] for e in waiting)
    listed = [r.key for r in (await client.registry.ListRateLimits(registry_pb2.ListRateLimitsRequest())).rate_limits]
    assert prefix + "*" in listed and prefix + tags[0] not in listed


async def test_a_star_may_only_end_a_key(served):
    _, client = served
    for key in ("*", "a*b", "**", "a**"):
        bad = registry_pb2.RateLimit(key=key, limit=1, period=seconds(1))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.registry.PutRateLimit(registry_pb2.PutRateLimitRequest(rate_limit=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rate_limit.key" in violations(err.value)


async def test_a_key_expression_longer_than_any_limit_key_fails_the_step(served):
    """Under a template a computed key is kept in the store: one made from a long input fails
    its step instead (no limit's own key is longer than 256 characters)."""
    _, client = served
    uses = [{"key_expression": "'tenant:' + input.tenant"}]
    await create(client, workflow("long-key", {"id": "s", "step": {"protocol": "tick", "rate_limits": uses}}))
    task = await wait_done(client, (await submit(client, "long-key", {"tenant": "x" * 300})).task_id)
    assert task.status == S.TASK_STATUS_FAILED and "307 characters; at most 256" in task.error.message
    fine = await wait_done(client, (await submit(client, "long-key", {"tenant": "x" * 249})).task_id)
    assert fine.status == S.TASK_STATUS_COMPLETED


async def test_get_rate_limit_reads_one_key_under_its_own_limit_or_its_template(served, testkit):
    """GetRateLimit: how much one tenant has left under `tenant:*` (listings show the template only)."""
    running, client = served
    prefix = f"get{uuid.uuid4().hex[:8]}:"
    await put_limit(client, prefix + "*", 3, 60.0)
    await put_limit(client, prefix + "own", 100, 1.0)
    uses = [{"key_expression": f"'{prefix}' + input.tag"}]
    await create(client, ticks_wf("get-ticks", "acme", 2, uses))
    await create(client, ticks_wf("get-ticks-1", "acme", 1, uses))
    done = await wait_done(client, (await submit(client, "get-ticks", {"tag": "acme"})).task_id)
    assert done.status == S.TASK_STATUS_COMPLETED

    def get(key: str) -> Any:
        return client.registry.GetRateLimit(registry_pb2.GetRateLimitRequest(key=key))

    acme = await get(prefix + "acme")
    assert (acme.key, acme.template, acme.limit, acme.period.seconds) == (prefix + "acme", prefix + "*", 3, 60)
    assert acme.available == pytest.approx(1, abs=1e-3)  # two ticks took two of its three
    assert acme.HasField("next_unit") and acme.next_unit.ToNanoseconds() == 0  # it may take one now
    # the last of the three, then none left until a minute after the first tick
    await wait_done(client, (await submit(client, "get-ticks-1", {"tag": "acme"})).task_id)
    spent = await get(prefix + "acme")
    assert spent.available == 0 and 40 < spent.next_unit.ToNanoseconds() / 1e9 <= 60, spent
    assert (await get(prefix + "zeta")).available == 3  # a tenant that took nothing
    template = await get(prefix + "*")
    assert (template.key, template.template, template.available) == (prefix + "*", "", 3)
    own = await get(prefix + "own")
    assert (own.key, own.template, own.limit) == (prefix + "own", "", 100)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get(f"none{uuid.uuid4().hex}")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_reason(err.value) == "RATE_LIMIT_NOT_FOUND"
    for bad in ("", "a b", "x" * 257):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await get(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "key" in violations(err.value)
    sdk = SdkClient(running.address)
    try:
        assert (await sdk.get_rate_limit(prefix + "acme")).template == prefix + "*"
    finally:
        await sdk.close()


async def test_get_rate_limit_answers_a_template_put_through_another_replica_at_once(server_factory, redis_url):
    """GetRateLimit reads the key's own limit, then its template as this replica knows them, and
    only on a miss every limit: a template another replica stored a moment ago is found all the same."""
    first, second = await server_factory(store=redis_url), await server_factory(store=redis_url)
    one, other = client_for(first), client_for(second)
    prefix = f"far{uuid.uuid4().hex[:8]}:"
    await put_limit(other, prefix + "*", 7, 60.0)
    await put_limit(other, prefix + "own", 9, 60.0)
    read = await one.registry.GetRateLimit(registry_pb2.GetRateLimitRequest(key=prefix + "acme"))
    assert (read.template, read.limit) == (prefix + "*", 7)
    own = await one.registry.GetRateLimit(registry_pb2.GetRateLimitRequest(key=prefix + "own"))
    assert (own.template, own.limit) == ("", 9)
    await other.registry.DeleteRateLimit(registry_pb2.DeleteRateLimitRequest(key=prefix + "*"))
    error = await refused(one.registry.GetRateLimit(registry_pb2.GetRateLimitRequest(key=prefix + "acme")))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # deleted elsewhere: not answered from what it knew
    await one.channel.close()
    await other.channel.close()


async def test_the_gauges_show_each_limits_room_as_sampled_with_a_limit_put_elsewhere(server_factory, redis_url):
    """The replicas learn which keys are limited from their keys alone every second; the gauges
    read every limit's room when they are sampled, a limit put through another replica included."""
    first, second = await server_factory(store=redis_url), await server_factory(store=redis_url)
    one, other = client_for(first), client_for(second)
    key = f"gauge{uuid.uuid4().hex[:8]}"
    await put_limit(other, key, 4, 60.0)
    await first.orchestrator.sampler.sample()
    metrics = first.orchestrator.metrics.registry
    assert metrics.get_sample_value("mcp_rate_limit_capacity", {"key": key}) == 4
    assert metrics.get_sample_value("mcp_rate_limit_available", {"key": key}) == 4
    await create(one, ticks_wf("gauge-ticks", "g", 3, [{"key": key}]))
    await limit_known([first], key)
    done = await wait_done(one, (await submit(one, "gauge-ticks")).task_id)
    assert done.status == S.TASK_STATUS_COMPLETED
    await first.orchestrator.sampler.sample()
    assert metrics.get_sample_value("mcp_rate_limit_available", {"key": key}) == pytest.approx(1, abs=1e-3)
    await one.channel.close()
    await other.channel.close()


async def until_waiting_or_done(client: Any, task_id: str) -> None:
    """Follow the task until its step waits for units or has been called."""
    ends = (E.TASK_EVENT_TYPE_STEP_WAITING, E.TASK_EVENT_TYPE_STEP_COMPLETED)
    async with asyncio.timeout(20):
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
            if event.type in ends:
                return


async def test_calls_waiting_for_units_on_two_replicas_go_in_the_order_they_came_each_asking_about_once(
    server_factory, redis_url, testkit
):
    """A key with a backlog serves its waiting calls first come, first served, whichever replica
    runs them: each is told its own turn, instead of every waiter coming back at the next unit
    and one of them, at random, getting it (a step could lose that race until its timeout)."""
    from tests.e2e.test_server_process import free_port
    from tests.integration.test_observability import scrape

    ports = [free_port(), free_port()]
    replicas = [await server_factory(store=redis_url, metrics_port=port) for port in ports]
    clients = [client_for(r) for r in replicas]
    tag = uuid.uuid4().hex
    await put_limit(clients[0], f"line:{tag}", 1, 0.15)  # a call every 150 ms, never two at once
    uses = [{"key": f"line:{tag}"}]
    await create(clients[0], workflow("in-line", step("t", "tick", "{'tag': input.tag}", rate_limits=uses)))
    await limit_known(replicas, f"line:{tag}")
    tasks = []
    for i in range(12):
        client = clients[i % 2]
        task = await submit(client, "in-line", {"tag": f"{tag}-{i}"})
        await until_waiting_or_done(client, task.task_id)  # in line before the next one comes
        tasks.append(task)
    done = await asyncio.gather(*(wait_done(clients[i % 2], t.task_id) for i, t in enumerate(tasks)))
    assert all(t.status == S.TASK_STATUS_COMPLETED for t in done)
    ticks = (await plugin_stats(testkit))["ticks"]
    assert sorted(range(12), key=lambda i: ticks[f"{tag}-{i}"][0]) == list(range(12))
    scraped = [await asyncio.to_thread(scrape, port) for port in ports]
    waited = sum(
        value
        for samples in scraped
        for name, value in samples.items()
        if name.startswith("mcp_rate_limit_answers_total") and f'key="line:{tag}"' in name and "waited" in name
    )
    assert waited <= 2 * 12  # about once each (a race of every waiter at every unit: 66)
    for client in clients:
        await client.channel.close()


async def test_get_rate_limit_counts_the_calls_waiting_in_line(served):
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"busy:{tag}", 1, 60.0)
    uses = [{"key": f"busy:{tag}"}]
    await create(client, workflow("busy", step("s", "echo", rate_limits=uses)))
    assert (await wait_done(client, (await submit(client, "busy")).task_id)).status == S.TASK_STATUS_COMPLETED
    waiting = [await submit(client, "busy") for _ in range(3)]
    for task in waiting:
        await until_waiting_or_done(client, task.task_id)
    read = await client.registry.GetRateLimit(registry_pb2.GetRateLimitRequest(key=f"busy:{tag}"))
    assert read.waiting == 3 and read.available == 0
    for task in waiting:
        await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))


async def test_a_task_of_higher_priority_takes_the_next_units_before_those_waiting_longer(served, testkit):
    _, client = served
    tag = uuid.uuid4().hex
    await put_limit(client, f"prio:{tag}", 1, 1.0)  # a call a second, never two at once
    uses = [{"key": f"prio:{tag}"}]
    await create(client, workflow("by-priority", step("t", "tick", "{'tag': input.tag}", rate_limits=uses)))
    tasks = []
    for name, priority in (("first", 0), ("low", 0), ("lower", 0), ("urgent", 9)):
        task = await submit(client, "by-priority", {"tag": f"{tag}-{name}"}, priority=priority)
        await until_waiting_or_done(client, task.task_id)
        tasks.append(task)
    done = await asyncio.gather(*(wait_done(client, t.task_id) for t in tasks))
    assert all(t.status == S.TASK_STATUS_COMPLETED for t in done)
    ticks = (await plugin_stats(testkit))["ticks"]
    names = sorted(("first", "low", "lower", "urgent"), key=lambda name: ticks[f"{tag}-{name}"][0])
    assert names == ["first", "urgent", "low", "lower"]


async def test_a_cancelled_task_leaves_the_line_and_a_parked_one_keeps_its_place(server_factory, store_url):
    running = await server_factory(store=store_url, wait_in_memory_seconds=0.1)  # waits of over 0.1 s park
    client = client_for(running)
    tag = uuid.uuid4().hex
    await put_limit(client, f"hold:{tag}", 1, 60.0)
    await create(client, workflow("held", step("s", "echo", rate_limits=[{"key": f"hold:{tag}"}])))
    assert (await wait_done(client, (await submit(client, "held")).task_id)).status == S.TASK_STATUS_COMPLETED
    waiting = [await submit(client, "held") for _ in range(3)]
    for task in waiting:
        await until_waiting_or_done(client, task.task_id)

    async def in_line() -> int:
        read = await client.registry.GetRateLimit(registry_pb2.GetRateLimitRequest(key=f"hold:{tag}"))
        return read.waiting

    async with asyncio.timeout(10):  # parked, each keeps its place
        while (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=waiting[-1].task_id))).task.status != (
            S.TASK_STATUS_WAITING
        ):
            await asyncio.sleep(0.05)
    assert await in_line() == 3
    [parked] = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=waiting[0].task_id))).task.steps
    assert list(parked.wait.rate_limit_keys) == [f"hold:{tag}"]
    assert waits_for(parked.wait) == f"units of rate limit hold:{tag}"  # as the console says it
    for task in waiting[:2]:
        await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
        assert (await wait_done(client, task.task_id)).status == S.TASK_STATUS_CANCELLED
    async with asyncio.timeout(10):
        while await in_line() != 1:
            await asyncio.sleep(0.05)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=waiting[2].task_id))
    await client.channel.close()
