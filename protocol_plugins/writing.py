"""writing: a write-critique-revise trio, a validator, a feature router and a quality supervisor.

Deterministic and dependency-free; each is a small real algorithm:

- `draft`: composes a paragraph from a topic and key points (intro, one sentence per point,
  conclusion); with feedback, it addresses what the feedback names.
- `critique`: scores a text against concrete style rules (sentence length, filler words,
  passive voice, repeated words, missing conclusion, length) and lists each issue with a fix.
- `revise`: applies the fixes `critique` proposes (drops filler, splits long sentences,
  removes doubled words, adds a conclusion) and reports what it changed.
- `validate`: checks a value against declared rules (required, type, length, pattern, range).
- `rule_route`: picks the next state of an adaptive node from numeric features of the last output
  (`route` is the llm plugin's: a model picks).
- `quality_supervisor`: accepts children whose `score` reaches a threshold, else sends them
  back with the critique's fixes as feedback.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import re2

from mcp_sdk.plugin import Context, Plugin, Reply, accept, goto, retry
from mcp_sdk.proto import protocol_pb2
from protocol_plugins.linear import SPACE, request_pattern

plugin = Plugin("writing")
T = protocol_pb2
FILLERS = ("very", "really", "basically", "just", "actually", "quite", "simply", "literally")
FILLER_RUN = re2.compile(rf"(?i){SPACE}*\b(?:{'|'.join(FILLERS)})\b")  # re: quadratic in a run of spaces
PASSIVE = re.compile(r"\b(?:is|are|was|were|be|been|being)\s+(\w+ed)\b", re.IGNORECASE)
SENTENCES = re.compile(r"(?<=[.!?])\s+")
WORDS = re.compile(r"[A-Za-z']+")
CONCLUSION_MARKERS = ("in short", "in summary", "overall", "to conclude", "in conclusion")
MAX_WORDS_PER_SENTENCE = 25


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCES.split(text.strip()) if s.strip()]


@plugin.protocol("draft", type=T.PROTOCOL_TYPE_GENERATION, description="Composes a paragraph from `topic` and `points`")
def draft(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    topic = str(data.get("topic") or "the subject")
    points = [str(p).strip().rstrip(".") for p in data.get("points", []) if str(p).strip()]
    sentences = [f"This note is about {topic}."]
    sentences += [f"{p[0].upper()}{p[1:]}." for p in points]
    feedback = str(data.get("feedback", ""))
    if "conclusion" in feedback.lower() or not points:
        sentences.append(f"In short, {topic} deserves attention.")
    text = " ".join(sentences)
    return {"text": text, "topic": topic, "sentences": len(sentences), "addressed_feedback": bool(feedback)}


def critique_text(text: str) -> dict[str, Any]:
    """Score `text` (0..1) and list its issues, each with a concrete fix."""
    issues: list[dict[str, str]] = []
    sentences = _sentences(text)
    for index, sentence in enumerate(sentences):
        words = WORDS.findall(sentence)
        if len(words) > MAX_WORDS_PER_SENTENCE:
            issues.append(
                {
                    "rule": "long_sentence",
                    "detail": f"sentence {index + 1} has {len(words)} words",
                    "fix": f"split sentence {index + 1}",
                }
            )
        for filler in FILLERS:
            if re.search(rf"\b{filler}\b", sentence, re.IGNORECASE):
                issues.append(
                    {"rule": "filler", "detail": f"'{filler}' in sentence {index + 1}", "fix": f"drop '{filler}'"}
                )
        for match in PASSIVE.finditer(sentence):
            issues.append(
                {"rule": "passive", "detail": f"'{match.group(0)}' in sentence {index + 1}", "fix": "say who acts"}
            )
        lowered = [w.lower() for w in words]
        for a, b in itertools.pairwise(lowered):
            if a == b:
                issues.append(
                    {
                        "rule": "repeated_word",
                        "detail": f"'{a} {b}' in sentence {index + 1}",
                        "fix": f"remove the second '{b}'",
                    }
                )
    if sentences and not any(m in sentences[-1].lower() for m in CONCLUSION_MARKERS):
        issues.append(
            {"rule": "no_conclusion", "detail": "the text ends without a conclusion", "fix": "add a conclusion"}
        )
    if len(WORDS.findall(text)) < 12:
        issues.append({"rule": "too_short", "detail": "fewer than 12 words", "fix": "add substance"})
    weights = {
        "long_sentence": 0.15,
        "filler": 0.05,
        "passive": 0.08,
        "repeated_word": 0.1,
        "no_conclusion": 0.15,
        "too_short": 0.3,
    }
    score = max(0.0, 1.0 - sum(weights[i["rule"]] for i in issues))
    return {"score": round(score, 3), "issues": issues, "text": text}


@plugin.protocol(
    "critique", type=T.PROTOCOL_TYPE_ANALYSIS, description="Scores a text against style rules and lists concrete issues"
)
def critique(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    text = data.get("text")
    if not isinstance(text, str):
        raise ValueError("input needs a string field `text`")
    return critique_text(text)


JOINTS = (", and ", "; ", ", but ", ", which ")


def _split_long(sentence: str) -> list[str]:
    """A sentence of more than MAX_WORDS_PER_SENTENCE words cut at its first joint (the first of
    JOINTS it holds), each side cut again while it is that long. One pass over the pieces between
    the joints (cutting off one head at a time, recursively, was quadratic in the joints and
    overflowed the stack past ~1,000 of them)."""
    if len(WORDS.findall(sentence)) <= MAX_WORDS_PER_SENTENCE:
        return [sentence]
    joint = next((j for j in JOINTS if j in sentence), None)
    if joint is None:
        return [sentence]
    pieces = sentence.split(joint)
    words_from = list(itertools.accumulate(len(WORDS.findall(p)) for p in reversed(pieces)))[::-1]
    joint_words = len(WORDS.findall(joint))
    parts: list[str] = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        rest_words = words_from[index] + (len(pieces) - 1 - index) * joint_words
        if index and (last or rest_words <= MAX_WORDS_PER_SENTENCE):
            rest = _capitalized(joint.join(pieces[index:]))
            return [*parts, *(_split_long(rest) if last else [rest])]
        parts += _split_long((_capitalized(piece) if index else piece).rstrip(",;") + ".")
    return parts


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def revise_text(text: str, issues: list[dict[str, Any]]) -> dict[str, Any]:
    applied: list[str] = []
    rules = {str(i.get("rule")) for i in issues}
    if "filler" in rules:
        before = text
        text = FILLER_RUN.sub("", text)
        if text != before:
            applied.append("dropped filler words")
    if "repeated_word" in rules:
        before = text
        text = re.sub(r"\b(\w+)(\s+\1\b)+", r"\1", text, flags=re.IGNORECASE)
        if text != before:
            applied.append("removed repeated words")
    if "long_sentence" in rules:
        split = [part for s in _sentences(text) for part in _split_long(s)]
        if len(split) > len(_sentences(text)):
            text = " ".join(split)
            applied.append("split long sentences")
    if "no_conclusion" in rules:
        text = text.rstrip() + " In short, the points above stand."
        applied.append("added a conclusion")
    return {"text": text, "applied": applied}


@plugin.protocol("revise", type=T.PROTOCOL_TYPE_TRANSFORM, description="Applies a critique's fixes to its text")
def revise(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    text, issues = data.get("text"), data.get("issues", [])
    if not isinstance(text, str) or not isinstance(issues, list):
        raise ValueError("input needs `text` (string) and `issues` (list, as critique returns them)")
    return revise_text(text, issues)


_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "object": dict,
    "array": list,
}


def validate_value(value: dict[str, Any], rules: list[dict[str, Any]]) -> list[str]:
    violations = []
    for rule in rules:
        field = str(rule.get("field", ""))
        present = field in value
        if rule.get("required") and not present:
            violations.append(f"{field}: is required")
            continue
        if not present:
            continue
        item = value[field]
        expected = rule.get("type")
        if expected and not isinstance(item, _TYPES.get(str(expected), object)):  # unknown type names accept anything
            violations.append(f"{field}: must be {expected}, got {type(item).__name__}")
            continue
        if isinstance(item, (str, list)):
            if "min_length" in rule and len(item) < int(rule["min_length"]):
                violations.append(f"{field}: shorter than {rule['min_length']}")
            if "max_length" in rule and len(item) > int(rule["max_length"]):
                violations.append(f"{field}: longer than {rule['max_length']}")
        pattern = request_pattern(str(rule["pattern"]), f"rules[{field}].pattern") if "pattern" in rule else None
        if isinstance(item, str) and pattern is not None and not pattern.fullmatch(item):
            violations.append(f"{field}: does not match {rule['pattern']}")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if "min" in rule and item < float(rule["min"]):
                violations.append(f"{field}: below {rule['min']}")
            if "max" in rule and item > float(rule["max"]):
                violations.append(f"{field}: above {rule['max']}")
    return violations


@plugin.protocol("validate", type=T.PROTOCOL_TYPE_VALIDATION, description="Checks `value` against declared `rules`")
def validate(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    value, rules = data.get("value"), data.get("rules", [])
    if not isinstance(value, dict) or not isinstance(rules, list):
        raise ValueError("input needs `value` (object) and `rules` (list)")
    violations = validate_value(value, rules)
    return {"valid": not violations, "violations": violations, "value": value}


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


@plugin.protocol(
    "rule_route",
    type=T.PROTOCOL_TYPE_ROUTER,
    description="Picks the next state from numeric features of the last output (`routes`, `default`)",
)
def rule_route(data: dict[str, Any], ctx: Context) -> Reply:
    output = _object(data, "output")
    source = _object(data, "input")
    routes = source.get("routes") or output.get("routes") or []
    features = {
        k: v for k, v in {**source, **output}.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if not isinstance(routes, list) or not all(isinstance(rule, dict) for rule in routes):
        raise ValueError("`routes` must be a list of {feature, below | at_least, to}")
    for rule in routes:
        value = features.get(str(rule.get("feature")))
        if value is None:
            continue
        if ("below" in rule and value < float(rule["below"])) or (
            "at_least" in rule and value >= float(rule["at_least"])
        ):
            return goto(str(rule["to"]), because=f"{rule['feature']}={value}")
    default = source.get("default") or output.get("default")
    if not default:
        raise ValueError("no route matched and no `default` state was given")
    return goto(str(default), because="default")


@plugin.protocol(
    "quality_supervisor",
    type=T.PROTOCOL_TYPE_SUPERVISOR,
    description="Accepts when every child's `score` reaches `threshold` (default 0.8); else retries with the fixes",
)
def quality_supervisor(data: dict[str, Any], ctx: Context) -> Reply:
    source = _object(data, "input")
    threshold = float(source.get("threshold", 0.8))
    children = _object(data, "children")
    weak = {
        cid: out for cid, out in children.items() if not isinstance(out, dict) or float(out.get("score", 0)) < threshold
    }
    if not weak:
        best = max(children.values(), key=lambda out: float(out.get("score", 0)))
        return accept({**best, "rounds": data.get("round", 1)})
    fixes = sorted({issue["fix"] for out in weak.values() if isinstance(out, dict) for issue in out.get("issues", [])})
    return retry("; ".join(fixes) or f"raise the score to {threshold}", children=sorted(weak))


if __name__ == "__main__":
    plugin.main()
