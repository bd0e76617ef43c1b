"""An agent's conversation as lines (mcp_sdk.conversations.transcript), whatever shape its turns
have: OpenAI's calls or ours, content as parts, turns that are not objects, a model's answer that
is text only, calls only, or not an object; each text cut where asked."""

from __future__ import annotations

from mcp_sdk.conversations import Conversation, transcript


def talk(messages: list[object], answer: object) -> Conversation:
    return Conversation("root/helper", "COMPLETED", 2, "root/helper/think#2", messages, answer)


def test_every_shape_of_turn_becomes_lines():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "look", "arguments": '{"at": "x"}'}},
                {"id": "b", "name": "ours", "arguments": {"z": 1, "a": 2}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "name": "look", "content": "a cat"},
        {"role": "tool", "content": "no name"},
        "a bare string",
        {},
    ]
    assert transcript(talk(messages, {"text": "A cat.", "usage": {"tokens": 3}})) == [
        ("system", "Be brief."),
        ("user", '[{"text": "What is this?", "type": "text"}, {"type": "image_url"}]'),
        ("assistant calls", 'look {"at": "x"} [a]'),
        ("assistant calls", 'ours {"a": 2, "z": 1} [b]'),
        ("tool look [a]", "a cat"),
        ("tool", "no name"),
        ("?", "a bare string"),
        ("?", ""),
        ("answer", "A cat."),
    ]


def test_an_answer_of_calls_or_of_no_known_shape_is_shown_as_it_is():
    calls = {"text": "", "tool_calls": [{"id": "c", "name": "f", "arguments": {}}]}
    assert transcript(talk([], calls)) == [("answer calls", "f {} [c]")]
    assert transcript(talk([], ["odd"])) == [("answer", '["odd"]')]
    assert transcript(talk([], {"verdict": "ok"})) == [("answer", '{"verdict": "ok"}')]
    assert transcript(talk([], None)) == []  # not answered yet


def test_each_text_is_cut_where_asked():
    (line,) = transcript(talk([{"role": "user", "content": "x" * 50}], None), limit=10)
    assert line == ("user", "xxxxxxxxxx... (40 more characters)")
