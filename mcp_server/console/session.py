"""Who the browser is, and proof that a form came from the console's own pages.

The bearer token a user signs in with is kept in an HttpOnly, SameSite=Strict cookie (scripts
cannot read it; other sites cannot send it) and sent on every gRPC call, so the server's own
authorization decides what each user sees. Every state-changing request (submit, cancel, sign
in and out) must carry a CSRF token: an HMAC, under a secret of this console, of a random
per-browser seed (another HttpOnly cookie) and the session's token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from aiohttp import web

TOKEN_COOKIE = "mcp_token"
SEED_COOKIE = "mcp_seed"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Session:
    """What the request's cookies say: the token (None: not signed in) and the CSRF seed."""

    token: str | None
    seed: str
    new_seed: bool

    def csrf(self, secret: bytes) -> str:
        message = f"{self.seed}|{self.token or ''}".encode()
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    def csrf_matches(self, secret: bytes, offered: str) -> bool:
        return bool(offered) and hmac.compare_digest(self.csrf(secret), offered)


def session_of(request: web.Request) -> Session:
    seed = request.cookies.get(SEED_COOKIE, "")
    valid_seed = len(seed) == 64 and all(c in "0123456789abcdef" for c in seed)
    token = request.cookies.get(TOKEN_COOKIE) or None
    if token is not None and not (token.isascii() and token.isprintable()):  # not one sign-in set
        token = None
    return Session(token, seed if valid_seed else secrets.token_hex(32), not valid_seed)


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    """A session cookie (no expiry) that scripts cannot read and other sites cannot send."""
    response.set_cookie(name, value, httponly=True, samesite="Strict", secure=request.secure, path="/")


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/")
