"""Who is calling, and what they may do.

Principals come from a file (YAML or JSON) of `{name, token_sha256, roles}` entries; tokens
are stored only as SHA-256 hashes. A caller sends `authorization: Bearer <token>`. Roles:

- any authenticated principal: submit tasks and see, watch and cancel its own; read
  workflows and protocols;
- `author`: create and delete workflows;
- `operator`: register and deregister protocols;
- `admin`: everything, and every principal's tasks.

Health and reflection stay open. With no principals file, authentication is off and every
caller is the anonymous admin (the embedded, single-user default).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mcp_server.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def may(self, role: str) -> bool:
        return self.is_admin or role in self.roles


ANONYMOUS_ADMIN = Principal("", frozenset({"admin"}))
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "current_principal", default=ANONYMOUS_ADMIN
)

OPEN_METHODS = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
REQUIRED_ROLE = {
    "/mcp.v1.WorkflowService/CreateWorkflow": "author",
    "/mcp.v1.WorkflowService/DeleteWorkflow": "author",
    "/mcp.v1.ProtocolRegistry/RegisterProtocol": "operator",
    "/mcp.v1.ProtocolRegistry/DeregisterProtocol": "operator",
    "/mcp.v1.ProtocolRegistry/PutRateLimit": "operator",
    "/mcp.v1.ProtocolRegistry/DeleteRateLimit": "operator",
    "/mcp.v1.ProtocolRegistry/ListRateLimits": "operator",
    "/mcp.v1.ProtocolRegistry/GetRateLimit": "operator",
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Maps bearer tokens to principals and checks each method's role."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._by_hash = principals

    @classmethod
    def from_file(cls, path: str) -> Authenticator:
        text = Path(path).read_text()
        entries = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
        principals = {}
        for entry in entries.get("principals", entries) if isinstance(entries, dict) else entries:
            digest = str(entry["token_sha256"]).lower()
            if len(digest) != 64:
                raise ValueError(f"principal {entry.get('name')!r}: token_sha256 must be a SHA-256 hex digest")
            principals[digest] = Principal(str(entry["name"]), frozenset(entry.get("roles", [])))
        return cls(principals)

    def authenticate(self, method: str, metadata: dict[str, str]) -> Principal | None:
        """The caller of `method`, or None for an open method. Raises Unauthenticated or
        PermissionDenied."""
        if method.startswith(OPEN_METHODS):
            return None
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing bearer token: send `authorization: Bearer <token>`", reason="NO_TOKEN")
        digest = hash_token(token.strip())
        principal = next((p for h, p in self._by_hash.items() if hmac.compare_digest(h, digest)), None)
        if principal is None:
            raise Unauthenticated("unknown or revoked token", reason="BAD_TOKEN")
        role = REQUIRED_ROLE.get(method)
        if role and not principal.may(role):
            raise PermissionDenied(
                f"{principal.name} lacks the {role!r} role for {method.rsplit('/', 1)[-1]}",
                reason="MISSING_ROLE",
                metadata={"role": role},
            )
        return principal
