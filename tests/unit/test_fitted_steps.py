"""A step state too large for a response of its own is sent with its directive trimmed."""

from __future__ import annotations

from mcp_sdk.proto import protocol_pb2, task_pb2
from mcp_server.engine.texts import MAX_MESSAGE_CHARS
from mcp_server.task_views import fitted


def test_a_state_without_a_directive_gains_none():
    state = task_pb2.StepState(path="root/a", node_id="a", kind="step")
    assert not fitted(state).HasField("directive") and fitted(state) == state


def test_a_retry_with_huge_feedback_is_clipped_for_every_child():
    decision = protocol_pb2.SupervisorDecision(
        verdict=protocol_pb2.VERDICT_RETRY,
        feedback="f" * 3_000_000,
        reason="r" * 100_000,
        retry_children=[f"c{i}" for i in range(5000)],
        child_feedback={f"c{i}": "g" * 100_000 for i in range(20)},
    )
    state = task_pb2.StepState(path="root/review/supervisor#2", directive=protocol_pb2.Directive(decision=decision))
    trimmed = fitted(state).directive.decision
    assert trimmed.ByteSize() < 100_000 and not trimmed.HasField("output")
    assert trimmed.feedback.startswith("f" * MAX_MESSAGE_CHARS) and "more characters" in trimmed.feedback
    assert len(trimmed.retry_children) == 1000 and sorted(trimmed.child_feedback) == sorted(decision.child_feedback)
    assert state.directive.decision.feedback == "f" * 3_000_000  # the stored state is untouched


def test_an_accepted_output_is_left_out_and_named_where_to_read_it():
    decision = protocol_pb2.SupervisorDecision(verdict=protocol_pb2.VERDICT_ACCEPT)
    decision.output.update({"text": "t" * 200_000})
    state = task_pb2.StepState(path="root/review/supervisor#3", directive=protocol_pb2.Directive(decision=decision))
    output = fitted(state).directive.decision.output
    assert dict(output) == {"left_out_bytes": decision.output.ByteSize(), "read_as": "the output of step root/review"}


def test_a_long_next_state_is_clipped():
    state = task_pb2.StepState(path="root/route", directive=protocol_pb2.Directive(next_state="s" * 50_000))
    assert len(fitted(state).directive.next_state) < MAX_MESSAGE_CHARS + 100
