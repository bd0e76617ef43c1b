"""The interfaces the engine and the orchestrator are given: how to call a protocol, and where
state lives, one small port per job (each backend implements every one: state/sqlite, state/redis)."""

from mcp_server.engine.ports.bulk import BulkActionStore, BulkRecord
from mcp_server.engine.ports.cache import CachedOutput, StepCache
from mcp_server.engine.ports.calls import CallContext, CallObserver, CallResult, ProtocolCaller, ProtocolCallError
from mcp_server.engine.ports.events import EventPublisher, Published
from mcp_server.engine.ports.queue import (
    NO_SHARE,
    GroupMember,
    Kept,
    LeaseReply,
    OwnerShare,
    QueueGroup,
    RequestedTask,
    TaskQueue,
)
from mcp_server.engine.ports.ratelimits import (
    MAX_WOKEN,
    WAITER_GRACE_SECONDS,
    Grant,
    KeyRoom,
    RateLimitSpec,
    RateLimitStore,
    UnitGate,
    waiter_name,
    waiter_task,
)
from mcp_server.engine.ports.registry import CapacityLedger, CapacityRequest, CapacitySlice, RegistryStore
from mcp_server.engine.ports.schedules import NEVER, ScheduleProgress, ScheduleRecord, ScheduleStore
from mcp_server.engine.ports.store import Store, StoreConnection
from mcp_server.engine.ports.tasks import (
    Checkpoint,
    Deletion,
    EventListener,
    StepRecord,
    TaskFilter,
    TaskPage,
    TaskStore,
)
from mcp_server.engine.ports.waits import SignalDelivery, SignalOutcome, SignalRecord, WaitRecord, WaitStore
from mcp_server.engine.ports.workflows import EventInterest, WorkflowStore, waited_events

__all__ = [
    "MAX_WOKEN",
    "NEVER",
    "NO_SHARE",
    "WAITER_GRACE_SECONDS",
    "BulkActionStore",
    "BulkRecord",
    "CachedOutput",
    "CallContext",
    "CallObserver",
    "CallResult",
    "CapacityLedger",
    "CapacityRequest",
    "CapacitySlice",
    "Checkpoint",
    "Deletion",
    "EventInterest",
    "EventListener",
    "EventPublisher",
    "Grant",
    "GroupMember",
    "Kept",
    "KeyRoom",
    "LeaseReply",
    "OwnerShare",
    "ProtocolCallError",
    "ProtocolCaller",
    "Published",
    "QueueGroup",
    "RateLimitSpec",
    "RateLimitStore",
    "RegistryStore",
    "RequestedTask",
    "ScheduleProgress",
    "ScheduleRecord",
    "ScheduleStore",
    "SignalDelivery",
    "SignalOutcome",
    "SignalRecord",
    "StepCache",
    "StepRecord",
    "Store",
    "StoreConnection",
    "TaskFilter",
    "TaskPage",
    "TaskQueue",
    "TaskStore",
    "UnitGate",
    "WaitRecord",
    "WaitStore",
    "WorkflowStore",
    "waited_events",
    "waiter_name",
    "waiter_task",
]
