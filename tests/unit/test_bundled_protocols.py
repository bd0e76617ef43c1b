"""The bundled cognitive protocols on real text: each is a real algorithm, not a canned answer."""

from __future__ import annotations

from typing import Any

import pytest

from protocol_plugins import cognitive, writing


class _Ctx:
    task_id = step_path = idempotency_key = ""
    attempt = 1


CTX: Any = _Ctx()


def test_emotion_separates_positive_negative_and_negated_text():
    happy = cognitive.emotion({"text": "I am happy and glad to work with this calm, reliable team."}, CTX)
    angry = cognitive.emotion({"text": "This is terrible. I am furious and the app is broken."}, CTX)
    negated = cognitive.emotion({"text": "I am not happy with it."}, CTX)
    assert happy["label"] == "positive" and happy["dominant_emotions"][0]["emotion"] in ("joy", "trust")
    assert angry["label"] == "negative" and angry["dominant_emotions"][0]["emotion"] == "anger"
    assert angry["arousal"] > happy["arousal"]
    assert negated["valence"] < 0


def test_summarize_picks_the_central_sentences_in_document_order():
    text = (
        "The city council approved the new park budget on Monday. Residents had asked for the park budget for years. "
        "The weather was mild. The council said the park budget covers trees, paths and a playground. "
        "A local bakery opened a new branch."
    )
    out = cognitive.summarize({"text": text, "sentences": 2}, CTX)
    assert len(out["sentences"]) == 2
    assert all("park budget" in s for s in out["sentences"])
    assert text.index(out["sentences"][0]) < text.index(out["sentences"][1])


def test_summarize_ranks_a_long_text_by_its_frequent_words():
    """Past MAX_RANKED_SENTENCES sentences TextRank (quadratic in them) gives way to a linear
    score, which still picks the sentences on what the text keeps coming back to."""
    letters = "bcdfghjklmnpqrstvwxz"
    filler = [
        f"{letters[i % 20].upper()}{letters[i // 20]}ola {letters[i // 20]}{letters[i % 20]}ika." for i in range(400)
    ]
    central = ["The council approved the park budget.", "The park budget pleased the council."]
    text = " ".join([*filler[:150], central[0], *filler[150:], central[1]])
    assert len(cognitive.split_sentences(text)) > cognitive.MAX_RANKED_SENTENCES
    assert cognitive.summarize({"text": text, "sentences": 2}, CTX)["sentences"] == central


def test_entities_and_relations_from_rules():
    text = (
        "Dr. Ada Lovelace works at Acme Corp in London."
        " Alan Turing founded Turing Labs on 23 June 1950 with $2 million."
    )
    out = cognitive.entities({"text": text}, CTX)
    labels = {(e["text"], e["label"]) for e in out["entities"]}
    assert ("Dr. Ada Lovelace", "PERSON") in labels and ("Acme Corp", "ORG") in labels
    assert ("London", "PLACE") in labels and ("23 June 1950", "DATE") in labels and ("$2 million", "MONEY") in labels
    assert {"subject": "Ada Lovelace", "relation": "works_at", "object": "Acme Corp"} in out["relations"]


def test_reason_chains_rules_and_explains_the_derivation():
    out = cognitive.reason(
        {
            "facts": ["socrates is a man"],
            "goal": "socrates is mortal",
            "rules": [
                {"if": ["socrates is a man"], "then": "socrates is mortal"},
                {"if": ["socrates is mortal"], "then": "socrates will die"},
                {"if": ["socrates is a god"], "then": "socrates is immortal"},
            ],
        },
        CTX,
    )
    assert out["proved"] is True
    assert out["derived"] == ["socrates is mortal", "socrates will die"]
    assert out["explanation"][0] == "socrates is a man => socrates is mortal (rule 0)"
    with pytest.raises(ValueError):
        cognitive.reason({"rules": [{"if": []}]}, CTX)


def test_critique_finds_concrete_issues_and_revise_fixes_them():
    text = (
        "This is basically a really really good product. The report was finished by the team and it was delivered "
        "late, and nobody read it carefully enough to notice the many small problems that it had in it."
    )
    critique = writing.critique_text(text)
    rules = {i["rule"] for i in critique["issues"]}
    assert {"filler", "repeated_word", "passive", "long_sentence", "no_conclusion"} <= rules
    revised = writing.revise_text(text, critique["issues"])
    assert "basically" not in revised["text"] and "really really" not in revised["text"]
    assert "In short" in revised["text"]
    assert writing.critique_text(revised["text"])["score"] > critique["score"]


def test_validate_reports_each_broken_rule():
    rules = [
        {"field": "name", "required": True, "type": "string", "min_length": 2},
        {"field": "age", "type": "integer", "min": 0, "max": 150},
        {"field": "email", "pattern": r"[^@]+@[^@]+"},
    ]
    assert writing.validate_value({"name": "Ada", "age": 36, "email": "ada@example.org"}, rules) == []
    problems = writing.validate_value({"age": 200, "email": "nope"}, rules)
    assert problems == ["name: is required", "age: above 150", "email: does not match [^@]+@[^@]+"]


def test_a_validate_pattern_is_matched_in_linear_time_and_one_that_cannot_be_is_refused():
    evil = [{"field": "name", "pattern": "^(a+)+$"}]
    assert writing.validate_value({"name": "a" * 5000 + "!"}, evil) == ["name: does not match ^(a+)+$"]
    with pytest.raises(ValueError, match=r"rules\[name\]\.pattern: .* cannot be matched in linear time"):
        writing.validate_value({"name": "x"}, [{"field": "name", "pattern": "(?=x)x"}])


def test_revise_splits_a_sentence_of_thousands_of_joints():
    text = "We came, and " * 5000 + "we left."
    parts = writing.revise_text(text, [{"rule": "long_sentence"}])["text"].split(". ")
    assert len(parts) > 4900 and parts[:2] == ["We came", "We came"]
    assert all(len(writing.WORDS.findall(part)) <= writing.MAX_WORDS_PER_SENTENCE for part in parts)


def test_route_uses_features_then_the_default():
    routes = [
        {"feature": "valence", "below": -0.2, "to": "escalate"},
        {"feature": "score", "at_least": 0.8, "to": "publish"},
    ]
    angry = writing.rule_route({"output": {"valence": -0.6}, "input": {"routes": routes, "default": "summarise"}}, CTX)
    calm = writing.rule_route({"output": {"valence": 0.3}, "input": {"routes": routes, "default": "summarise"}}, CTX)
    assert angry.directive.next_state == "escalate" and calm.directive.next_state == "summarise"


def test_quality_supervisor_accepts_good_work_and_returns_fixes_otherwise():
    weak = writing.quality_supervisor(
        {"children": {"a": {"score": 0.5, "issues": [{"fix": "add a conclusion"}]}, "b": {"score": 0.9}}, "round": 1},
        CTX,
    )
    assert weak.directive.decision.verdict == 2  # retry
    assert (
        list(weak.directive.decision.retry_children) == ["a"] and weak.directive.decision.feedback == "add a conclusion"
    )
    good = writing.quality_supervisor({"children": {"a": {"score": 0.85, "text": "x"}}, "round": 2}, CTX)
    assert good.directive.decision.verdict == 1
