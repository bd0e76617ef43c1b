"""Circuit breakers, one per protocol (pybreaker), optionally shared by every replica.

Only failures that say the plugin is unwell count: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
UNKNOWN, RESOURCE_EXHAUSTED, DATA_LOSS. A plugin that rejects a bad input is healthy.

Sharing: pybreaker's own Redis storage uses the blocking client, which would stall the event
loop on every call. Instead each replica keeps its breakers in memory (no I/O on the call
path) and publishes every state change to the store; a background task applies the changes
other replicas published. A breaker that opens on one replica opens on the others within
`sync_interval` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pybreaker

from mcp_sdk.proto import registry_pb2
from mcp_server.engine.ports import ProtocolCallError, RegistryStore

log = logging.getLogger(__name__)
UNHEALTHY_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED", "DATA_LOSS"}
)

STATE_NUMBERS = {
    pybreaker.STATE_CLOSED: registry_pb2.BREAKER_STATE_CLOSED,
    pybreaker.STATE_OPEN: registry_pb2.BREAKER_STATE_OPEN,
    pybreaker.STATE_HALF_OPEN: registry_pb2.BREAKER_STATE_HALF_OPEN,
}


def _healthy_failure(error: BaseException) -> bool:
    """Failures that say nothing about the protocol as a whole: a rejected input, or one
    instance failing while others serve (outlier ejection deals with that instance)."""
    return not isinstance(error, ProtocolCallError) or error.code not in UNHEALTHY_CODES or error.instance_only


@dataclass(frozen=True)
class BreakerSettings:
    """failure_threshold consecutive unhealthy failures open a breaker; after reset_timeout
    seconds one trial call (half-open) decides whether it closes again."""

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    sync_interval: float = 1.0


class _Publisher(pybreaker.CircuitBreakerListener):
    def __init__(self, board: BreakerBoard) -> None:
        self.board = board

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self.board.changed(str(cb.name), str(new_state.name))


class BreakerBoard:
    """The breakers of every protocol, created on first use."""

    def __init__(self, settings: BreakerSettings, shared: RegistryStore | None = None) -> None:
        self.settings = settings
        self.shared = shared  # where replicas share breaker states (None: this replica only)
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._pending: dict[str, str] = {}
        self._applying = False
        self._publish_task: asyncio.Task[None] | None = None

    def get(self, protocol: str) -> pybreaker.CircuitBreaker:
        breaker = self._breakers.get(protocol)
        if breaker is None:
            breaker = pybreaker.CircuitBreaker(
                fail_max=self.settings.failure_threshold,
                reset_timeout=self.settings.reset_timeout,
                exclude=[_healthy_failure],
                listeners=[_Publisher(self)],
                name=protocol,
            )
            self._breakers[protocol] = breaker
        return breaker

    def state_name(self, protocol: str) -> str:
        breaker = self._breakers.get(protocol)
        return str(breaker.current_state) if breaker is not None else pybreaker.STATE_CLOSED

    def states(self) -> dict[str, str]:
        return {name: str(breaker.current_state) for name, breaker in self._breakers.items()}

    def state_of(self, protocol: str) -> int:
        return int(STATE_NUMBERS.get(self.state_name(protocol), registry_pb2.BREAKER_STATE_UNSPECIFIED))

    def changed(self, protocol: str, state: str) -> None:
        if self._applying or self.shared is None:
            return
        self._pending[protocol] = state
        if self._publish_task is None or self._publish_task.done():
            self._publish_task = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        while self._pending and self.shared is not None:
            protocol, state = self._pending.popitem()
            try:
                await self.shared.put_breaker_state(protocol, state)
            except Exception as exc:  # the store being down must not break calls
                log.warning("could not share breaker state of %s: %s", protocol, exc)

    async def sync_forever(self) -> None:
        """Apply the states other replicas published (run as a background task)."""
        if self.shared is None:
            return
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            try:
                states = await self.shared.breaker_states()
            except Exception:
                continue
            self._apply(states)

    def _apply(self, states: dict[str, str]) -> None:
        self._applying = True
        try:
            for protocol, state in states.items():
                breaker = self.get(protocol)
                if breaker.current_state == state:
                    continue
                if state == pybreaker.STATE_OPEN:
                    breaker.open()
                elif state == pybreaker.STATE_CLOSED:
                    breaker.close()
                elif state == pybreaker.STATE_HALF_OPEN:
                    breaker.half_open()
        finally:
            self._applying = False
