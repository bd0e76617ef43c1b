"""The console's HTTP application (aiohttp): routes, templates, and the rules every response
follows (the session, CSRF on every POST, security headers, gRPC errors as pages).

Templates autoescape everything; the scripts put data into the page with `textContent` only;
and the Content-Security-Policy allows scripts from the console's own files alone, so a value
that looks like markup is shown as text and can run nothing.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import grpc
import jinja2
from aiohttp import web

from mcp_sdk.client import Client, Tls
from mcp_sdk.errors import McpError
from mcp_server.console import bulk, bulk_actions, conversations, events, live, pages, subworkflows
from mcp_server.console import schedules as schedule_pages
from mcp_server.console.base import API, SECRET, SESSION, TEMPLATES, render, wants_json
from mcp_server.console.session import CSRF_FIELD, CSRF_HEADER, SEED_COOKIE, session_of, set_cookie

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check CSRF on POST, answer gRPC errors as pages, and set the headers every response carries."""
    session = session_of(request)
    request[SESSION] = session
    try:
        if request.method == "POST":
            form = await request.post()
            offered = str(form.get(CSRF_FIELD, "")) or request.headers.get(CSRF_HEADER, "")
            if not session.csrf_matches(request.app[SECRET], offered):
                raise web.HTTPForbidden(
                    text="this form is stale or did not come from the console: reload the page and try again"
                )
        response = await handler(request)
    except McpError as error:
        response = error_response(request, error)
    except web.HTTPException as refusal:
        if refusal.status < 400:
            raise
        response = problem_response(request, refusal.status, refusal.text or refusal.reason)
    if not response.prepared:
        secure_headers(response, static=request.path.startswith("/static/"))
        if session.new_seed:
            set_cookie(response, request, SEED_COOKIE, session.seed)
    return response


def secure_headers(response: web.StreamResponse, static: bool) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # pages hold a user's data: never cached; the scripts and styles may be, for an hour
    response.headers.setdefault("Cache-Control", "public, max-age=3600" if static else "no-store")


def error_response(request: web.Request, error: McpError) -> web.StreamResponse:
    """A failed call as a page (or JSON, for the scripts' requests)."""
    if error.code == grpc.StatusCode.UNAUTHENTICATED and request.method == "GET" and not wants_json(request):
        return web.Response(status=303, headers={"Location": f"/login?next={quote(request.path_qs, safe='')}"})
    status = HTTP_STATUS.get(error.code, 502)
    if wants_json(request):
        return web.json_response(
            {"code": error.code.name, "reason": error.reason, "message": error.message}, status=status
        )
    return render(
        request,
        "error.html",
        {
            "title": error.code.name.replace("_", " ").lower(),
            "message": error.message,
            "reason": error.reason,
            "violations": error.violations,
            "status": status,
        },
        status=status,
    )


def problem_response(request: web.Request, status: int, message: str) -> web.StreamResponse:
    """A refusal of the console's own (a bad query, a stale form) as a page or JSON."""
    if wants_json(request):
        return web.json_response({"code": status, "message": message}, status=status)
    return render(
        request,
        "error.html",
        {
            "title": web.Response(status=status).reason.lower(),
            "message": message,
            "reason": "",
            "violations": (),
            "status": status,
        },
        status=status,
    )


def create_app(client: Client, secret: bytes | None = None) -> web.Application:
    """The console for the orchestrator `client` talks to."""
    app = web.Application(middlewares=[guard], client_max_size=2 * 1024 * 1024)
    app[API] = client
    app[SECRET] = secret or secrets.token_bytes(32)
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    app.router.add_get("/", pages.home)
    app.router.add_get("/tasks", pages.tasks)
    app.router.add_get("/tasks/counts", live.counts)
    app.router.add_post("/tasks/rerun", bulk.rerun_filtered)
    app.router.add_post("/tasks/cancel", bulk.cancel_filtered)
    app.router.add_post("/tasks/rerun-all", bulk_actions.rerun_all)
    app.router.add_post("/tasks/cancel-all", bulk_actions.cancel_all)
    app.router.add_get("/bulk", bulk_actions.bulk_actions)
    app.router.add_post("/events/publish", events.publish)
    app.router.add_post("/bulk/{action_id}/abort", bulk_actions.abort)
    app.router.add_get("/tasks/{task_id}", pages.task)
    app.router.add_get("/tasks/{task_id}/events", live.task_events)
    app.router.add_get("/tasks/{task_id}/earlier.json", live.earlier_events)
    app.router.add_get("/tasks/{task_id}/task.json", live.task_json)
    app.router.add_get("/tasks/{task_id}/step.json", live.step_values)
    app.router.add_get("/tasks/{task_id}/conversations", conversations.conversations_fragment)
    app.router.add_get("/tasks/{task_id}/value", live.whole_value)
    app.router.add_get("/tasks/{task_id}/graph.mmd", live.task_graph_text)
    app.router.add_post("/tasks/{task_id}/cancel", pages.cancel)
    app.router.add_post("/tasks/{task_id}/delete", pages.delete)
    app.router.add_post("/tasks/{task_id}/signal", pages.answer)
    app.router.add_post("/tasks/{task_id}/rerun", pages.rerun)
    app.router.add_get("/workflows", pages.workflows)
    app.router.add_get("/workflows/{workflow_id}", pages.workflow)
    app.router.add_post("/workflows/{workflow_id}/submit", pages.submit)
    app.router.add_post("/workflows/{workflow_id}/upgrade", subworkflows.upgrade)
    app.router.add_get("/schedules", schedule_pages.schedules)
    app.router.add_post("/schedules/{schedule_id}/{action}", schedule_pages.act)
    app.router.add_get("/protocols", pages.protocols)
    app.router.add_get("/protocols.json", live.protocols_json)
    app.router.add_get("/rate_limits.json", live.rate_limits_json)
    app.router.add_get("/login", pages.login_form)
    app.router.add_post("/login", pages.login)
    app.router.add_post("/logout", pages.logout)
    app.router.add_static("/static", STATIC, append_version=True)
    return app


@dataclass
class RunningConsole:
    """A console serving on `url`; stop() closes it and its connection to the orchestrator."""

    runner: web.AppRunner
    client: Client
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.client.close()


async def start_console(
    server_address: str, listen: str, *, tls: Tls | None = None, secret: bytes | None = None
) -> RunningConsole:
    """Serve the console on `listen` (HOST:PORT; port 0 picks one) for the orchestrator at `server_address`.

    `secret` keys the CSRF tokens: by default MCP_CONSOLE_SECRET, else random per process (set it
    when several consoles serve one address, or for forms to survive a console restart)."""
    secret = secret or os.environ.get("MCP_CONSOLE_SECRET", "").encode() or None
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"console address {listen!r} must look like HOST:PORT")
    client = Client(server_address, tls=tls)
    runner = web.AppRunner(create_app(client, secret), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    bound = runner.addresses[0]
    url = f"http://{host}:{bound[1]}"
    log.info("console serving on %s for the orchestrator at %s", url, server_address)
    return RunningConsole(runner, client, url)
