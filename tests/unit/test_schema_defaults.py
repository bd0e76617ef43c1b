"""Filling in the defaults an input schema declares (engine/schema_defaults.py)."""

from __future__ import annotations

from mcp_server.engine.schema_defaults import with_defaults

SCHEMA = {
    "type": "object",
    "required": ["topic"],
    "properties": {
        "topic": {"type": "string"},
        "words": {"type": "integer", "default": 200},
        "tone": {"enum": ["formal", "friendly"], "default": "friendly"},
        "style": {
            "type": "object",
            "default": {},
            "properties": {"bullets": {"type": "boolean", "default": False}, "lang": {"$ref": "#/$defs/lang"}},
        },
        "sources": {"type": "array", "default": ["web"]},
        "either": {"anyOf": [{"properties": {"x": {"default": 1}}}, {"type": "string"}]},
    },
    "$defs": {"lang": {"type": "string", "default": "en"}},
}


def test_missing_properties_get_their_defaults_at_every_level():
    assert with_defaults(SCHEMA, {"topic": "tea"}) == {
        "topic": "tea",
        "words": 200,
        "tone": "friendly",
        "style": {"bullets": False, "lang": "en"},  # filled from its default {}, then inside it
        "sources": ["web"],
    }


def test_what_is_given_stays_and_is_filled_inside():
    given = {"topic": "tea", "words": 50, "style": {"bullets": True}, "either": {}}
    filled = with_defaults(SCHEMA, given)
    assert filled["words"] == 50 and filled["style"] == {"bullets": True, "lang": "en"}
    assert filled["either"] == {}  # inside anyOf: which branch holds is not known before the check
    assert given == {"topic": "tea", "words": 50, "style": {"bullets": True}, "either": {}}  # not changed


def test_defaults_are_copies_and_an_input_needing_none_is_returned_as_is():
    first, second = with_defaults(SCHEMA, {"topic": "a"}), with_defaults(SCHEMA, {"topic": "b"})
    first["sources"].append("x")
    assert second["sources"] == ["web"] and SCHEMA["properties"]["sources"]["default"] == ["web"]
    full = {"topic": "t", "words": 1, "tone": "formal", "style": {"bullets": True, "lang": "fr"}, "sources": []}
    assert with_defaults(SCHEMA, full) is full


def test_refs_that_loop_lead_elsewhere_or_nowhere_fill_nothing():
    looping = {"properties": {"a": {"$ref": "#/properties/a"}}}
    assert with_defaults(looping, {}) == {}
    assert with_defaults({"$ref": "#"}, {"x": 1}) == {"x": 1}
    elsewhere = {"properties": {"a": {"$ref": "https://example.com/a.json"}, "b": {"$ref": "#/nowhere"}}}
    assert with_defaults(elsewhere, {}) == {}
    escaped = {"$defs": {"a/b": {"default": 3}}, "properties": {"n": {"$ref": "#/$defs/a~1b"}}}
    assert with_defaults(escaped, {}) == {"n": 3}


def test_a_value_that_is_not_an_object_is_left_alone():
    assert with_defaults(SCHEMA, ["topic"]) == ["topic"]
    assert with_defaults(SCHEMA, {"topic": "t", "style": "plain"})["style"] == "plain"  # the check refuses it
