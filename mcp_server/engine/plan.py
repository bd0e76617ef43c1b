"""The executable plan: an immutable tree compiled once per workflow version.

Each node kind has its own frozen dataclass; CEL expressions are already compiled and every
default (retry policy, timeouts, bounds) is already resolved, so running a node never has to
look at the workflow definition again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcp_server.engine.cel import Expression

if TYPE_CHECKING:
    from mcp_server.engine.schemas import PayloadSchema

DEFAULT_RETRYABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class RetryPolicy:
    """How one protocol call is retried.

    Attempt n (n >= 2) waits min(initial_backoff * multiplier**(n-2), max_backoff) seconds,
    plus or minus `jitter` times that. Only errors whose gRPC code is in `retryable_codes`
    are retried.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retryable_codes: frozenset[str] = DEFAULT_RETRYABLE_CODES


@dataclass(frozen=True)
class FallbackPlan:
    protocol: str
    input: Expression | None


@dataclass(frozen=True)
class RateLimitUsePlan:
    """A rate limit a step's calls take units of: a literal key or a CEL one, and CEL units (None: 1)."""

    key: str
    key_expression: Expression | None
    units: Expression | None


@dataclass(frozen=True)
class CachePlan:
    """StepNode.cache compiled: the key (None: protocol and canonical input), for how long, for whom."""

    key: Expression | None
    ttl: float
    shared: bool


@dataclass(frozen=True)
class StepPlan:
    id: str
    protocol: str
    input: Expression | None
    retry: RetryPolicy
    timeout: float | None
    attempt_timeout: float | None
    fallbacks: tuple[FallbackPlan, ...] = ()
    stream: bool = False
    rate_limits: tuple[RateLimitUsePlan, ...] = ()
    cache: CachePlan | None = None
    idle_timeout: float | None = None  # with `stream`: the longest a call may send nothing
    kind: str = "step"


@dataclass(frozen=True)
class SequencePlan:
    id: str
    children: tuple[PlanNode, ...]
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "sequence"


@dataclass(frozen=True)
class ParallelPlan:
    id: str
    children: tuple[PlanNode, ...]
    join: str  # "all" | "any" | "quorum"
    quorum: int
    fail_fast: bool
    max_concurrency: int
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "parallel"

    @property
    def required(self) -> int:
        """How many children must complete for the join to be met."""
        if self.join == "any":
            return 1
        if self.join == "quorum":
            return self.quorum
        return len(self.children)


@dataclass(frozen=True)
class MapPlan:
    id: str
    items: Expression
    body: PlanNode
    max_concurrency: int
    fail_fast: bool
    max_items: int
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "map"


@dataclass(frozen=True)
class SupervisePlan:
    id: str
    supervisor: str
    children: tuple[PlanNode, ...]
    max_rounds: int
    retry: RetryPolicy
    attempt_timeout: float | None
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "supervise"


@dataclass(frozen=True)
class TransitionPlan:
    when: Expression | None
    to: str


@dataclass(frozen=True)
class StatePlan:
    name: str
    node: PlanNode
    transitions: tuple[TransitionPlan, ...]
    terminal: bool


@dataclass(frozen=True)
class AdaptivePlan:
    id: str
    initial_state: str
    states: dict[str, StatePlan]
    router: str | None
    max_transitions: int
    retry: RetryPolicy
    attempt_timeout: float | None
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "adaptive"


@dataclass(frozen=True)
class WaitPlan:
    """Wait for signal `signal` (its payload is the output), at most `timeout` seconds (None: as
    long as the task may run); then `on_timeout` gives the output, or the step fails. A wait for
    an event (`event`) waits for the signal ports.event_signal(event), which only a publish of
    that event with the key `key` gives makes (None: any key)."""

    id: str
    signal: str
    timeout: float | None
    on_timeout: Expression | None
    prompt: Expression | None
    schema: Any = None  # a compiled JSON Schema validator (engine/schemas.py), or None
    event: str = ""
    key: Expression | None = None
    lookback: float = 0.0  # seconds: an event published this long before the wait began is taken too
    condition: Expression | None = None  # over `event` and `input`: an event it does not hold for passes by
    kind: str = "wait"


@dataclass(frozen=True)
class SleepPlan:
    """Go on after `duration` seconds, or at the RFC 3339 time `until` gives; output: the input."""

    id: str
    duration: float | None
    until: Expression | None
    kind: str = "sleep"


@dataclass(frozen=True)
class SubworkflowPlan:
    """Run another workflow version's root (`root`, compiled with that workflow's defaults) on
    `input` (None: this node's input), its CEL seeing its own `input` and `steps`."""

    id: str
    workflow_id: str
    version: int
    input: Expression | None
    root: PlanNode
    # that workflow's input_schema, which what this node gives it must satisfy, and its
    # output_schema, which its result must
    input_schema: PayloadSchema | None = None
    output_schema: PayloadSchema | None = None
    fill_input_defaults: bool = False  # that workflow's: its input gets input_schema's defaults
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "subworkflow"


@dataclass(frozen=True)
class RecoverPlan:
    """Run `body`; when it fails with a code in `codes` (empty: any), run `handler` on the same
    input instead, its CEL seeing `error`; the node's output is whichever of them completed."""

    id: str
    body: PlanNode
    handler: PlanNode
    codes: frozenset[str] = frozenset()
    rethrow: bool = False  # after the handler, fail with the body's error all the same
    on_cancel: bool = False  # the handler is also the clean-up when the task is cancelled
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "recover"


@dataclass(frozen=True)
class PublishPlan:
    """Publish event `event` with the object `data` gives (None: the node's input) and the key
    `key` gives (None: none) as the task's owner."""

    id: str
    event: str
    data: Expression | None
    key: Expression | None = None
    kind: str = "publish"


@dataclass(frozen=True)
class AgentToolPlan:
    """AgentNode.tools[i] compiled: what the model is told, the schema its arguments must fit,
    and the node that runs a call."""

    name: str
    description: str
    parameters: dict[str, Any]  # the JSON schema, as the model is given it
    schema: PayloadSchema | None  # the same, compiled (None: any object)
    node: PlanNode


@dataclass(frozen=True)
class AgentPlan:
    """Ask `model` with the conversation and the tools; run the calls it makes; again, until it
    makes none (at most `max_rounds` times). See engine/agent.py."""

    id: str
    model: PlanNode
    messages: Expression
    tools: tuple[AgentToolPlan, ...]
    max_rounds: int
    budget: tuple[tuple[str, float], ...] = ()  # (usage name, cap): past one, no more rounds
    timeout: float | None = None  # Node.timeout: the longest it may run, from its first start
    kind: str = "agent"


PlanNode = (
    StepPlan
    | SequencePlan
    | ParallelPlan
    | MapPlan
    | SupervisePlan
    | AdaptivePlan
    | WaitPlan
    | SleepPlan
    | SubworkflowPlan
    | RecoverPlan
    | PublishPlan
    | AgentPlan
)
# nodes that do work themselves (the others only arrange their children)
LEAF_KINDS = frozenset({"step", "wait", "sleep", "publish"})
# the nodes that arrange others, each of which may have a Node.timeout
COMPOSITES = (
    SequencePlan,
    ParallelPlan,
    MapPlan,
    SupervisePlan,
    AdaptivePlan,
    SubworkflowPlan,
    RecoverPlan,
    AgentPlan,
)


@dataclass(frozen=True)
class ConcurrencyPlan:
    """Workflow.concurrency compiled: the key (None: the owner), the cap per key value (0: none)
    and what a new task does when its key is full (a ConcurrencyStrategy)."""

    key: Expression | None
    max_running: int
    strategy: int


@dataclass(frozen=True)
class TriggerPlan:
    """Workflow.triggers[i] compiled: the event name, and CEL over `event` for whether a task
    starts (None: always) and for its input (None: the event's data)."""

    event: str
    filter: Expression | None
    input: Expression | None


@dataclass(frozen=True)
class CancelOnPlan:
    """Workflow.cancel_on[i] compiled: the event name, CEL over `input` for the key an event must
    carry (None: any key), and CEL over `event` and `input` for whether it cancels (None: always)."""

    event: str
    key: Expression | None
    condition: Expression | None


@dataclass(frozen=True)
class Plan:
    """A compiled workflow version."""

    workflow_id: str
    version: int
    root: PlanNode
    task_timeout: float | None
    node_count: int
    depth: int
    protocols: frozenset[str] = field(default_factory=frozenset)
    # every place the workflow names a protocol: (field path, protocol name)
    protocol_uses: tuple[tuple[str, str], ...] = ()
    # the wait nodes by node id, and the signal names they declare
    waits: dict[str, WaitPlan] = field(default_factory=dict)
    # whether any node waits (a wait or a sleep): only then can a run park
    suspends: bool = False
    # whether a recover node has on_cancel: only then does a cancelled run clean up
    cleans_up_on_cancel: bool = False
    # Workflow.concurrency; None: tasks share the queue out per owner, with no cap
    concurrency: ConcurrencyPlan | None = None
    # Workflow.input_schema, which a task's input_data must satisfy; None: any object
    input_schema: PayloadSchema | None = None
    # Workflow.output_schema, which the task's result must satisfy; None: any value
    output_schema: PayloadSchema | None = None
    # defaults.queue_timeout: how long a task may wait to start (seconds); None: no limit
    queue_timeout: float | None = None
    # Workflow.fill_input_defaults: a task's input gets the defaults input_schema declares
    fill_input_defaults: bool = False
    # Workflow.triggers: the events that start a task of this version while it is the latest
    triggers: tuple[TriggerPlan, ...] = ()
    # Workflow.cancel_on: the events that cancel a task of this version
    cancel_on: tuple[CancelOnPlan, ...] = ()

    @property
    def signals(self) -> frozenset[str]:
        """The signal names the workflow's wait nodes declare."""
        return frozenset(w.signal for w in self.waits.values())
