"""Compiling Workflow.concurrency: the key every task of the workflow is queued under, its cap
and what a new task does when its key is full."""

from __future__ import annotations

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.cel import ExpressionError, compile_expression
from mcp_server.engine.plan import ConcurrencyPlan
from mcp_server.errors import ViolationCollector
from mcp_server.settings import Limits

# what a concurrency key may read: it is evaluated at submission, before anything runs
KEY_VARIABLES = frozenset({"input", "labels", "owner"})

CANCELLING = frozenset(
    {workflow_pb2.CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS, workflow_pb2.CONCURRENCY_STRATEGY_CANCEL_NEWEST}
)

# at most this many tasks of one key value run at once, whatever a workflow asks
MAX_RUNNING = 100_000


def compile_concurrency(
    workflow: workflow_pb2.Workflow, limits: Limits, violations: ViolationCollector
) -> ConcurrencyPlan | None:
    if not workflow.HasField("concurrency"):
        return None
    given = workflow.concurrency
    path = "workflow.concurrency"
    key = None
    if given.key:
        if len(given.key) > limits.max_expression_length:
            violations.add(
                f"{path}.key", f"is {len(given.key)} characters; the limit is {limits.max_expression_length}"
            )
        else:
            try:
                key = compile_expression(given.key, limits, KEY_VARIABLES)
            except ExpressionError as exc:
                violations.add(f"{path}.key", f"CEL does not compile: {exc}")
    if not 0 <= given.max_running <= MAX_RUNNING:
        violations.add(f"{path}.max_running", f"must be between 0 (no cap) and {MAX_RUNNING}")
    if given.strategy not in workflow_pb2.ConcurrencyStrategy.values():
        violations.add(f"{path}.strategy", f"unknown strategy {given.strategy}")
    elif given.strategy in CANCELLING and given.max_running == 0:
        strategy = workflow_pb2.ConcurrencyStrategy.Name(given.strategy)
        violations.add(f"{path}.strategy", f"{strategy} needs max_running above 0 (a key with no cap is never full)")
    return ConcurrencyPlan(key=key, max_running=given.max_running, strategy=given.strategy)
