"""One event, and the events of one batched watch message, stay within what gRPC can send."""

from __future__ import annotations

from mcp_sdk.proto import task_pb2
from mcp_server.engine.event_types import E
from mcp_server.engine.events import bounded, in_messages, make_event
from mcp_server.engine.texts import MAX_MESSAGE_CHARS

MOST = 64 * 1024


def progress(sequence: int, size: int, **data: object) -> task_pb2.TaskEvent:
    return make_event("t1", sequence, E.TASK_EVENT_TYPE_PROGRESS, step_path="talk", data={"filler": "x" * size, **data})


def test_an_event_within_the_limit_is_the_same_event():
    event = progress(1, 1000, fraction=0.5)
    assert bounded(event, MOST) is event


def test_a_long_message_is_clipped_and_the_data_kept_when_that_is_enough():
    event = make_event("t1", 1, E.TASK_EVENT_TYPE_PROGRESS, message="m" * 100_000, data={"fraction": 0.5})
    trimmed = bounded(event, MOST)
    assert trimmed.ByteSize() <= MOST and trimmed.message.startswith("m" * MAX_MESSAGE_CHARS)
    assert "more characters" in trimmed.message and trimmed.data.fields["fraction"].number_value == 0.5
    assert len(event.message) == 100_000  # the original is untouched


def test_the_largest_data_fields_are_left_out_and_named_the_small_ones_kept():
    event = progress(7, 200_000, fraction=0.25, tokens=["a"] * 10, other="y" * 50_000)
    trimmed = bounded(event, MOST)
    fields = trimmed.data.fields
    assert trimmed.ByteSize() <= MOST
    assert [v.string_value for v in fields["truncated_fields"].list_value.values] == ["filler"]
    assert fields["truncated_bytes"].number_value == event.ByteSize()
    assert fields["fraction"].number_value == 0.25 and fields["other"].string_value == "y" * 50_000
    assert len(fields["tokens"].list_value.values) == 10
    assert (trimmed.task_id, trimmed.sequence, trimmed.step_path) == ("t1", 7, "talk")


def test_many_large_fields_are_named_up_to_ten_and_counted():
    event = make_event("t1", 1, E.TASK_EVENT_TYPE_PROGRESS, data={f"k{i:02}": "z" * 10_000 for i in range(30)})
    trimmed = bounded(event, 32 * 1024)
    names = [v.string_value for v in trimmed.data.fields["truncated_fields"].list_value.values]
    assert trimmed.ByteSize() <= 32 * 1024
    assert len(names) == 11 and names[-1].endswith("more")
    kept = [k for k in trimmed.data.fields if k.startswith("k")]
    assert int(names[-1].split()[1]) + 10 + len(kept) == 30


def test_a_huge_key_is_left_out_too():
    event = make_event("t1", 1, E.TASK_EVENT_TYPE_PROGRESS, data={"k" * 300_000: 1, "fraction": 1.0})
    trimmed = bounded(event, MOST)
    names = [v.string_value for v in trimmed.data.fields["truncated_fields"].list_value.values]
    assert trimmed.ByteSize() <= MOST and names[0].startswith("k" * 100) and "more characters" in names[0]


def test_no_events_make_no_message():
    assert list(in_messages([], MOST)) == []


def test_events_that_fit_in_one_message_are_passed_as_they_are():
    events = [progress(i, 1000) for i in range(1, 20)]
    assert [list(part) for part in in_messages(events, MOST)] == [events]
    assert next(iter(in_messages(events, MOST))) is events


def test_events_past_the_budget_are_split_in_order_and_an_oversized_one_bounded():
    sizes = [30_000, 30_000, 30_000, 200_000, 10, 10, 60_000, 5]
    events = [progress(i, size) for i, size in enumerate(sizes, start=1)]
    parts = [list(part) for part in in_messages(events, MOST)]
    assert all(sum(e.ByteSize() for e in part) <= MOST for part in parts)
    assert [e.sequence for part in parts for e in part] == list(range(1, len(sizes) + 1))
    assert [[e.sequence for e in part] for part in parts] == [[1, 2], [3, 4, 5, 6], [7, 8]]  # 4, bounded, is small
    oversized = parts[1][1]
    assert "filler" not in oversized.data.fields and oversized.data.fields["truncated_fields"].list_value.values


def test_the_note_of_many_long_wide_names_stays_within_the_bound():
    for extra in range(0, 1300, 13):  # where the last field left out ends relative to the bound moves
        data = {"\U0001f600" * 300 + f"{i:03}": "v" * 10 for i in range(60)}
        event = make_event("t1", 1, E.TASK_EVENT_TYPE_PROGRESS, data=data, message="m" * extra)
        trimmed = bounded(event, 64 * 1024 - 12_000)
        assert trimmed.ByteSize() <= 64 * 1024 - 12_000, extra
        assert len(trimmed.data.fields["truncated_fields"].list_value.values) == 11
