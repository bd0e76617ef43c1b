"""The console's pages: tasks, one task, workflows, one workflow (with its submit form),
protocols, and signing in and out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import yaml
from aiohttp import web

from mcp_sdk.client import Client
from mcp_sdk.errors import McpError
from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_sdk.usage import subtree_usage
from mcp_sdk.values import message_to_dict, strict_json, struct_to_dict, value_to_python
from mcp_sdk.workflow_tree import node_at
from mcp_server.cli.graph import to_mermaid, workflow_graph
from mcp_server.console import bulk, subworkflows
from mcp_server.console.base import api, render
from mcp_server.console.conversations import conversations_context
from mcp_server.console.events import triggers_of
from mcp_server.console.inbox import fields_of, input_schema_of, payload_of, waiting_forms
from mcp_server.console.live import rate_limits_seen
from mcp_server.console.present import (
    TASK_STATUSES,
    iso,
    json_text,
    protocol_view,
    rate_limit_view,
    step_view,
    task_view,
)
from mcp_server.console.session import TOKEN_COOKIE, clear_cookie, set_cookie

PAGE_SIZE = 50
STEPS_SHOWN = 1000  # steps listed on a task's page; the rest are counted (ListTaskSteps pages them all)


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST, the browser GETs the page that shows the outcome."""
    return web.Response(status=303, headers={"Location": location})


async def home(request: web.Request) -> web.StreamResponse:
    return redirect("/tasks")


async def tasks(request: web.Request) -> web.StreamResponse:
    """Newest first, filtered by status, workflow and one label, a page at a time, with a count per
    status (not by label: a count would be a scan on Redis)."""
    statuses = [s.lower() for s in request.query.getall("status", []) if s]
    unknown = [s for s in statuses if s not in TASK_STATUSES]
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown status {unknown[0]!r}: use one of {', '.join(TASK_STATUSES)}")
    workflow_id = request.query.get("workflow", "").strip()
    label = request.query.get("label", "").strip()
    key, equals, value = label.partition("=")
    if label and not (key and equals):
        raise web.HTTPBadRequest(text=f"a label filter is KEY=VALUE, not {label[:80]!r}")
    labels = {key: value} if label else {}
    page_token = request.query.get("page", "")
    client = api(request)
    names = [f"TASK_STATUS_{s.upper()}" for s in statuses]
    listed, *counted = await asyncio.gather(
        client.list_tasks(
            statuses=names, workflow_id=workflow_id, labels=labels, page_size=PAGE_SIZE, page_token=page_token
        ),
        *(
            client.list_tasks(statuses=[f"TASK_STATUS_{s.upper()}"], workflow_id=workflow_id, page_size=1)
            for s in (() if label else TASK_STATUSES)  # by label, counting would be a scan: none shown
        ),
    )
    counts = {status: reply.total_size for status, reply in zip(TASK_STATUSES, counted)}
    return render(
        request,
        "tasks.html",
        {
            "tasks": [task_view(t) for t in listed.tasks],
            "total": len(listed.tasks) if label else listed.total_size,
            "next_page": listed.next_page_token,
            "first_page": not page_token,
            "counts": counts,
            "statuses": statuses,
            "all_statuses": TASK_STATUSES,
            "workflow_id": workflow_id,
            "label": label,
            "bulk_offered": bulk.offered(statuses, bulk.FINISHED),
            "cancel_offered": bulk.offered(statuses, bulk.UNFINISHED),
            "bulk_batch": bulk.BATCH,
            "bulk_done": bulk.outcome_notice(dict(request.query)),
            "cancel_done": bulk.cancel_notice(dict(request.query)),
        },
    )


async def task(
    request: web.Request,
    answers: dict[str, dict[str, Any]] | None = None,
    status: int = 200,
    rerun_typed: dict[str, Any] | None = None,
) -> web.StreamResponse:
    """One task: its header (with the reruns it has, and the task it reruns), steps, a form for
    each step that waits for a signal, a form to rerun it from a step (`?rerun=PATH` fills it in
    with that step's input), and the live parts (tree, events, graph) the script fills in."""
    task_id = request.match_info["task_id"]
    client = api(request)
    header = await client.get(task_id, steps=True)
    steps: list[task_pb2.StepState] = list(header.steps)
    if header.steps_next_page_token:  # more than one response holds: page through them
        steps = []
        async for step in client.steps(task_id):
            steps.append(step)
            if len(steps) >= STEPS_SHOWN:
                break
    definition = await _definition_of(client, header)
    forms = waiting_forms(steps, definition, answers or {})
    below = subtree_usage(steps)
    return render(
        request,
        "task.html",
        {
            "task": task_view(header),
            "steps": [step_view(s, below.get(s.path)) for s in steps],
            "more_steps": max(0, header.step_count - len(steps)),
            "forms": forms,
            **await conversations_context(client, task_id, steps, definition),
            "rerun": rerun_typed or rerun_form(request.query.get("rerun", ""), steps, header.workflow_version),
        },
        status=status,
    )


async def _definition_of(client: Client, task: task_pb2.Task) -> workflow_pb2.Workflow:
    """The version the task runs (an empty one should it be gone: the page shows the task still)."""
    try:
        return await client.get_workflow(task.workflow_id, task.workflow_version)
    except McpError as error:
        if error.code != grpc.StatusCode.NOT_FOUND:
            raise
        return workflow_pb2.Workflow()


def rerun_form(path: str, steps: list[task_pb2.StepState], version: int) -> dict[str, Any]:
    """The rerun form, for the step at `path` (if any): its input as it received it, to edit."""
    chosen = next((s for s in steps if s.path == path), None)
    given = ""
    if chosen is not None and chosen.HasField("input"):
        given = json.dumps(value_to_python(chosen.input), indent=2, ensure_ascii=False, sort_keys=True)
    return {"path": path, "input": given, "version": str(version), "problem": None, "violations": []}


async def rerun(request: web.Request) -> web.StreamResponse:
    """Rerun the task from the form's step (with its input, if one is given); what is wrong is
    shown beside the form."""
    task_id = request.match_info["task_id"]
    posted = await request.post()
    form: dict[str, Any] = {name: str(posted.get(name, "")) for name in ("path", "input", "version")}
    form.update(problem=None, violations=[])
    options: dict[str, Any] = {}
    try:
        if form["input"].strip():
            options["input"] = strict_json(form["input"])
        version = _number(form["version"] or "0", "version", 0, INT64_MAX)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        form["problem"] = f"not rerun: {exc}"
        return await task(request, status=400, rerun_typed=form)
    try:
        created = await api(request).rerun(task_id, form["path"].strip(), version=version, **options)
    except McpError as error:
        if error.code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            raise
        form.update(problem=error.message, violations=error.violations)
        code = 400 if error.code == grpc.StatusCode.INVALID_ARGUMENT else 409
        return await task(request, status=code, rerun_typed=form)
    return redirect(f"/tasks/{created.task_id}")


async def answer(request: web.Request) -> web.StreamResponse:
    """Send the signal a waiting step's form asks for; what is wrong is shown beside the form."""
    task_id = request.match_info["task_id"]
    posted = {name: str(value) for name, value in (await request.post()).items()}
    path, signal = posted.get("step_path", ""), posted.get("signal", "")
    client = api(request)
    header = await client.get(task_id, steps=False)
    definition = await client.get_workflow(header.workflow_id, header.workflow_version)
    node = node_at(definition.root, path)
    schema = struct_to_dict(node.wait.schema) if node is not None and node.wait.HasField("schema") else None
    typed = {name: value for name, value in posted.items() if name.startswith(("field.", "json"))}
    try:
        payload = payload_of(posted, fields_of(schema))
        await client.signal(task_id, signal, payload, step_path=path)
    except ValueError as exc:
        return await task(request, {path: {"typed": typed, "problem": f"not sent: {exc}"}}, status=400)
    except McpError as error:
        if error.code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            raise
        found = {path: {"typed": typed, "problem": error.message, "violations": error.violations}}
        return await task(request, found, status=400 if error.code == grpc.StatusCode.INVALID_ARGUMENT else 409)
    return redirect(f"/tasks/{task_id}")


async def cancel(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["task_id"]
    await api(request).cancel(task_id, "cancelled from the console")
    return redirect(f"/tasks/{task_id}")


async def delete(request: web.Request) -> web.StreamResponse:
    """Delete a finished task (the page asks first), then show the task list."""
    await api(request).delete(request.match_info["task_id"])
    return redirect("/tasks")


async def workflows(request: web.Request) -> web.StreamResponse:
    rows = [
        {
            "workflow_id": w.workflow_id,
            "version": w.version,
            "description": w.description,
            "root": w.root.WhichOneof("kind") or "",
            "created": w.create_time.ToDatetime().isoformat(timespec="seconds") + "Z" if w.create_time.seconds else "",
        }
        for w in await api(request).list_workflows()
    ]
    return render(request, "workflows.html", {"workflows": sorted(rows, key=lambda r: r["workflow_id"])})


async def workflow(
    request: web.Request, form: dict[str, Any] | None = None, problem: McpError | str | None = None, status: int = 200
) -> web.StreamResponse:
    """A workflow version: its definition as YAML and as a graph, its versions, and a submit form."""
    workflow_id = request.match_info["workflow_id"]
    version = _whole_number(request.query.get("version", "0"), "version")
    client = api(request)
    shown, latest = await asyncio.gather(
        client.get_workflow(workflow_id, version), client.get_workflow(workflow_id), return_exceptions=True
    )
    if isinstance(shown, BaseException):
        raise shown
    if isinstance(latest, BaseException):
        if not (isinstance(latest, McpError) and latest.code == grpc.StatusCode.NOT_FOUND):
            raise latest
        latest = shown  # every version deleted: this one is what some task ran
    deleted = iso(shown.delete_time) if shown.HasField("delete_time") else ""
    definition = message_to_dict(shown)
    runs = await subworkflows.pinned_by(client, shown)
    schema = input_schema_of(shown)
    return render(
        request,
        "workflow.html",
        {
            "workflow": {"workflow_id": shown.workflow_id, "version": shown.version, "description": shown.description},
            "versions": list(range(max(latest.version, shown.version), 0, -1)),
            "deleted": deleted,
            "runs": runs,
            "upgradable": not deleted
            and shown.version == latest.version
            and any(r["latest"] > r["version"] for r in runs),
            "upgrade": subworkflows.upgrade_notice(request.query),
            "yaml": yaml.safe_dump(definition, sort_keys=False, allow_unicode=True),
            "mermaid": to_mermaid(workflow_graph(shown)),
            "triggers": triggers_of(shown) if not deleted and shown.version == latest.version else [],
            "form": form or {"input": "{}", "priority": "0", "labels": "", "version": str(shown.version)},
            "fields": fields_of(schema),
            "input_schema": json_text(schema) if schema else None,
            "problem": problem if isinstance(problem, str) else None,
            "error": problem if isinstance(problem, McpError) else None,
        },
        status=status,
    )


async def submit(request: web.Request) -> web.StreamResponse:
    """Submit a task from the form; a bad form shows the workflow page again with what is wrong."""
    workflow_id = request.match_info["workflow_id"]
    posted = {name: str(value) for name, value in (await request.post()).items()}
    form = {name: posted.get(name, "") for name in ("input", "priority", "labels", "version")}
    form.update({name: value for name, value in posted.items() if name.startswith("field.")})
    client = api(request)
    try:
        labels = dict(_label(line) for line in form["labels"].splitlines() if line.strip())
        priority = _number(form["priority"] or "0", "priority", *INT32)
        version = _number(form["version"] or "0", "version", 0, INT64_MAX)
        fields = fields_of(input_schema_of(await client.get_workflow(workflow_id, version)))
        data = payload_of(posted, fields) if fields is not None else strict_json(form["input"] or "{}")
        if not isinstance(data, dict):
            raise ValueError('the input must be a JSON object, such as {"text": "hello"}')
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return await workflow(request, form, f"cannot submit: {exc}", status=400)
    try:
        created = await client.submit(workflow_id, data, priority=priority, labels=labels, version=version)
    except McpError as error:
        status = FORM_REFUSALS.get(error.code)
        if status is None:
            raise
        return await workflow(request, form, error, status=status)
    return redirect(f"/tasks/{created.task_id}")


# refusals the submit form shows beside what was typed, to mend or to send again (a full store,
# a full queue, the submission rate), rather than on an error page that loses it
FORM_REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.RESOURCE_EXHAUSTED: 429}


def _label(line: str) -> tuple[str, str]:
    key, sep, value = line.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"a label is KEY=VALUE, one per line, not {line.strip()!r}")
    return key.strip(), value.strip()


def _whole_number(text: str, name: str) -> int:
    try:
        return _number(text, name, 0, INT64_MAX)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


INT32 = (-(2**31), 2**31 - 1)
INT64_MAX = 2**63 - 1


def _number(text: str, name: str, low: int, high: int) -> int:
    """A whole number a form or a query gives, within what its field holds (else ValueError,
    which the page shows: protobuf would refuse it while the request is built)."""
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text[:40]!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return number


async def protocols(request: web.Request) -> web.StreamResponse:
    client = api(request)
    entries = [protocol_view(p) for p in await client.list_protocols()]
    rate_limits = await rate_limits_seen(client)
    key = request.query.get("rate_key", "")
    return render(
        request,
        "protocols.html",
        {
            "protocols": sorted(entries, key=lambda p: (p["name"], p["address"])),
            "rate_limits": rate_limits,
            "rate_key": key,
            "looked_up": await _look_up(client, key) if key and rate_limits is not None else None,
        },
    )


async def _look_up(client: Client, key: str) -> dict[str, Any]:
    """The limit one key falls under, with that key's room (`tenant:acme` under `tenant:*`), or why none."""
    try:
        return {"limit": rate_limit_view(await client.get_rate_limit(key)), "problem": ""}
    except McpError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            return {"limit": None, "problem": f"No rate limit applies to {key}: its calls are not limited."}
        if error.code == grpc.StatusCode.INVALID_ARGUMENT:
            why = error.violations[0].description if error.violations else error.message
            return {"limit": None, "problem": f"{key[:80]!r} cannot be a rate-limit key: {why}."}
        raise


def _next_path(text: str) -> str:
    """Where to go after signing in: a path of this console, never another site."""
    return text if text.startswith("/") and not text.startswith("//") and "\\" not in text else "/tasks"


async def login_form(request: web.Request) -> web.StreamResponse:
    return render(request, "login.html", {"next": _next_path(request.query.get("next", "/tasks")), "problem": None})


async def login(request: web.Request) -> web.StreamResponse:
    """Check the token with the server (a call it must authenticate), then keep it in the session cookie."""
    posted = await request.post()
    token = str(posted.get("token", "")).strip()
    target = _next_path(str(posted.get("next", "/tasks")))
    try:
        if not token:
            raise McpError(grpc.StatusCode.UNAUTHENTICATED, "enter a token")
        await api(request).with_token(token).list_tasks(page_size=1)
    except ValueError as exc:  # not a token at all
        return render(request, "login.html", {"next": target, "problem": str(exc)}, status=401)
    except McpError as error:
        if error.code != grpc.StatusCode.UNAUTHENTICATED:
            raise
        return render(
            request, "login.html", {"next": target, "problem": "the server did not accept this token"}, status=401
        )
    response = redirect(target)
    set_cookie(response, request, TOKEN_COOKIE, token)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = redirect("/login")
    clear_cookie(response, TOKEN_COOKIE)
    return response
