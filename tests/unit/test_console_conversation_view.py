"""A conversation on the console's task page is bounded: each turn cut, and past 300 lines the
first 20 and the latest shown with a line that says how many are not."""

from __future__ import annotations

from mcp_sdk.conversations import Conversation
from mcp_server.console.present import SHOWN_TURN_LINES, conversation_view


def test_a_long_conversation_shows_its_start_and_its_latest_turns():
    messages = [{"role": "user", "content": f"turn {n} " + "w" * 5000} for n in range(400)]
    view = conversation_view(Conversation("helper", "RUNNING", 400, "helper/think#400", messages, None))
    lines = view["lines"]
    assert len(lines) == SHOWN_TURN_LINES + 1
    assert lines[19][1].startswith("turn 19 ") and lines[21][1].startswith("turn 120 ")
    assert lines[20] == ("...", "100 lines not shown here (mcp task conversation TASK_ID shows them all)")
    assert lines[-1][1].startswith("turn 399 ") and lines[-1][1].endswith("(1009 more characters)")
