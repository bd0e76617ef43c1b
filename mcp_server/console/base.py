"""What every handler of the console uses: the app's keys, the caller's client, and rendering."""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

from mcp_sdk.client import Client
from mcp_server.console.session import Session

API = web.AppKey("api", Client)
SESSION = web.RequestKey("session", Session)
SECRET = web.AppKey("secret", bytes)
TEMPLATES = web.AppKey("templates", jinja2.Environment)


def api(request: web.Request) -> Client:
    """The gRPC client, calling as the signed-in user (or anonymously)."""
    return request.app[API].with_token(request[SESSION].token)


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    """A template, with what every page needs: the CSRF token and whether someone is signed in."""
    session = request[SESSION]
    page = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            **context, csrf=session.csrf(request.app[SECRET]), signed_in=session.token is not None, path=request.path
        )
    )
    return web.Response(text=page, status=status, content_type="text/html")


def wants_json(request: web.Request) -> bool:
    """Requests from the pages' scripts (data, streams), which get errors as JSON, not pages."""
    return request.path.endswith((".json", ".mmd", "/events", "/counts", "/value"))
