"""Circuit breakers, one per protocol (pybreaker).

Only failures that say the plugin is unwell count: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
UNKNOWN, RESOURCE_EXHAUSTED, DATA_LOSS. A plugin that rejects a bad input is healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

import pybreaker

from mcp_server.engine.ports import ProtocolCallError
from mcp_server.proto import registry_pb2

UNHEALTHY_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED", "DATA_LOSS"})

STATE_NAMES = {
    pybreaker.STATE_CLOSED: registry_pb2.BREAKER_STATE_CLOSED,
    pybreaker.STATE_OPEN: registry_pb2.BREAKER_STATE_OPEN,
    pybreaker.STATE_HALF_OPEN: registry_pb2.BREAKER_STATE_HALF_OPEN,
}


def _healthy_failure(error: BaseException) -> bool:
    return isinstance(error, ProtocolCallError) and error.code not in UNHEALTHY_CODES


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 5
    reset_timeout: float = 30.0


class BreakerBoard:
    """The breakers of every protocol, created on first use."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}

    def get(self, protocol: str) -> pybreaker.CircuitBreaker:
        breaker = self._breakers.get(protocol)
        if breaker is None:
            breaker = pybreaker.CircuitBreaker(
                fail_max=self.settings.failure_threshold,
                reset_timeout=self.settings.reset_timeout,
                exclude=[_healthy_failure, lambda e: not isinstance(e, ProtocolCallError)],
                name=protocol,
            )
            self._breakers[protocol] = breaker
        return breaker

    def state_of(self, protocol: str) -> int:
        breaker = self._breakers.get(protocol)
        if breaker is None:
            return int(registry_pb2.BREAKER_STATE_CLOSED)
        return int(STATE_NAMES.get(breaker.current_state, registry_pb2.BREAKER_STATE_UNSPECIFIED))
