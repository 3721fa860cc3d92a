"""The strict turn parser: a table of valid and invalid turns, and a property-based fuzz."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniagent_jax.agent.actions import (
    Answer,
    GetAudio,
    GetClip,
    GetFrames,
    Turn,
    action_to_dict,
    parse_action,
)
from omniagent_jax.agent.errors import ActionError, ErrorCode

OK = {"observation": "o", "think": "t", "confidence": 0.5}


def j(action, **top) -> str:
    return json.dumps({**OK, **top, "action": action})


FRAMES = {"type": "get_frames", "start": 0.0, "end": 10.5, "num": 5}

# (text, strict_confidence, expected error code or None, substring of the detail)
PARSER_TABLE = [
    # valid turns
    (j(FRAMES), False, None, ""),
    (j({"type": "get_audio", "start": 1, "end": 2.5}), True, None, ""),
    (j({"type": "get_clip", "start": 0, "end": 3}), False, None, ""),
    (j({"type": "answer", "content": "A"}), True, None, ""),
    ("  \n" + j(FRAMES) + "\n ", False, None, ""),  # surrounding whitespace is stripped
    (json.dumps({"observation": "o", "think": "t", "action": FRAMES}), False, None, ""),  # confidence optional
    (j({**FRAMES, "content": ""}), False, None, ""),  # extra action fields are ignored (prompt schema lists them)
    (j(FRAMES, confidence=1), False, None, ""),  # an int confidence is a number
    # INVALID_JSON
    ("```json\n" + j(FRAMES) + "\n```", False, ErrorCode.INVALID_JSON, "code fence"),
    ('"' + j(FRAMES) + '"', False, ErrorCode.INVALID_JSON, "outer quotes"),
    ("Sure! " + j(FRAMES), False, ErrorCode.INVALID_JSON, "must start with '{'"),
    ("", False, ErrorCode.INVALID_JSON, "must start with '{'"),
    ("[1, 2]", False, ErrorCode.INVALID_JSON, "must start with '{'"),
    ('{"observation": "o", "think": }', False, ErrorCode.INVALID_JSON, "json decode error"),
    ('{"observation": NaN, "think": "t", "action": {}}', False, ErrorCode.INVALID_JSON, "non-finite"),
    ('{"observation": "o", "observation": "p", "think": "t", "action": {}}', False, ErrorCode.INVALID_JSON, "duplicate key"),
    (json.dumps({"observation": "o", "think": "t", "action": FRAMES}), True, ErrorCode.INVALID_JSON,
     "missing keys: ['confidence']"),
    (json.dumps({"think": "t", "action": FRAMES}), False, ErrorCode.INVALID_JSON, "missing keys: ['observation']"),
    (j(FRAMES, extra=1), False, ErrorCode.INVALID_JSON, "unknown keys: ['extra']"),
    (json.dumps({"observation": 1, "think": "t", "action": FRAMES}), False, ErrorCode.INVALID_JSON,
     "'observation' must be string"),
    (json.dumps({"observation": "o", "think": None, "action": FRAMES}), False, ErrorCode.INVALID_JSON, "'think' must be string"),
    (j(FRAMES, confidence="high"), False, ErrorCode.INVALID_JSON, "'confidence' must be a numeric value"),
    (j(FRAMES, confidence=True), False, ErrorCode.INVALID_JSON, "'confidence' must be a numeric value"),
    (j(FRAMES, confidence=1.5), False, ErrorCode.INVALID_JSON, "between 0 and 1"),
    ('{"observation": "o", "think": "t", "confidence": 1e999, "action": {}}', False, ErrorCode.INVALID_JSON,
     "'confidence' must be a numeric value"),
    (j([FRAMES]), False, ErrorCode.INVALID_JSON, "'action' not object"),
    (j({**FRAMES, "num": 5.0}), False, ErrorCode.INVALID_JSON, "get_frames requires integer 'num'"),
    (j({**FRAMES, "num": True}), False, ErrorCode.INVALID_JSON, "get_frames requires integer 'num'"),
    (j({"type": "get_frames", "end": 1, "num": 2}), False, ErrorCode.INVALID_JSON, "get_frames requires numeric 'start'"),
    (j({**FRAMES, "end": "10"}), False, ErrorCode.INVALID_JSON, "get_frames requires numeric 'end'"),
    # TRAILING_GARBAGE
    (j(FRAMES) + " {}", False, ErrorCode.TRAILING_GARBAGE, "extra characters after JSON"),
    (j(FRAMES) + "}", False, ErrorCode.TRAILING_GARBAGE, "extra characters after JSON"),
    # UNKNOWN_ACTION_TYPE
    (j({"type": "zoom", "start": 0}), False, ErrorCode.UNKNOWN_ACTION_TYPE, "unknown action.type: zoom"),
    (j({"start": 0}), False, ErrorCode.UNKNOWN_ACTION_TYPE, "unknown action.type: None"),
    (j({"type": ["get_frames"]}), False, ErrorCode.UNKNOWN_ACTION_TYPE, "unknown action.type: ['get_frames']"),
    # AUDIO_ARG_TYPE / CLIP_ARG_TYPE
    (j({"type": "get_audio", "start": "0", "end": 5}), False, ErrorCode.AUDIO_ARG_TYPE, "'start' missing or not number"),
    (j({"type": "get_audio", "start": 0}), False, ErrorCode.AUDIO_ARG_TYPE, "'end' missing or not number"),
    (j({"type": "get_clip", "start": None, "end": 5}), False, ErrorCode.CLIP_ARG_TYPE, "'start' missing or not number"),
    (j({"type": "get_clip", "start": 0, "end": False}), False, ErrorCode.CLIP_ARG_TYPE, "'end' missing or not number"),
    # ANSWER_NOT_STRING
    (j({"type": "answer", "content": 3}), False, ErrorCode.ANSWER_NOT_STRING, "'content' missing or not string"),
    (j({"type": "answer"}), False, ErrorCode.ANSWER_NOT_STRING, "'content' missing or not string"),
]


@pytest.mark.parametrize("text,strict,code,detail", PARSER_TABLE)
def test_parser_table(text, strict, code, detail):
    if code is None:
        t = parse_action(text, strict_confidence=strict)
        assert isinstance(t, Turn) and t.observation == "o" and t.think == "t"
        return
    with pytest.raises(ActionError) as info:
        parse_action(text, strict_confidence=strict)
    assert info.value.code is code
    assert detail in info.value.detail


def test_parsed_values_and_types():
    t = parse_action(j({"type": "get_frames", "start": 1, "end": 2, "num": 3}))
    assert t.action == GetFrames(1.0, 2.0, 3) and isinstance(t.action.start, float)
    assert t.confidence == 0.5
    assert parse_action(j({"type": "get_audio", "start": 0, "end": 1})).action == GetAudio(0.0, 1.0)
    assert parse_action(j({"type": "get_clip", "start": 0, "end": 1})).action == GetClip(0.0, 1.0)
    assert parse_action(j({"type": "answer", "content": "[[1, 2]]"})).action == Answer("[[1, 2]]")
    no_conf = parse_action(json.dumps({"observation": "", "think": "", "action": FRAMES}))
    assert no_conf.confidence is None
    assert action_to_dict(GetFrames(0.0, 1.0, 2)) == {"type": "get_frames", "start": 0.0, "end": 1.0, "num": 2}


def test_reference_outputs_parse_in_strict_mode(reference_dir):
    """Every recorded model turn of the reference SFT file is a valid strict turn."""
    for line in (reference_dir / "example_train_sft.jsonl").read_text().splitlines():
        turn = parse_action(json.loads(line)["output"], strict_confidence=True)
        assert 0.0 <= turn.confidence <= 1.0


def test_non_string_input():
    for bad in (None, 3, b"{}", ["{}"]):
        with pytest.raises(ActionError) as info:
            parse_action(bad)
        assert info.value.code is ErrorCode.INVALID_JSON and info.value.detail == "not a string"


def test_pathological_inputs_raise_action_error_only():
    deep = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    huge_int = ('{"observation": "o", "think": "t", "action": {"type": "get_frames", "start": 0, "end": 1, "num": '
                + "9" * 5000 + "}}")
    for text in (deep, huge_int, "{" * 50_000, "{\x00}", '{"observation": "\ud800", "think": "t", "action": 1}'):
        with pytest.raises(ActionError):
            parse_action(text)


# --------------------------------------------------------------------------------- fuzz
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_json_value = st.recursive(
    _json_leaf,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)
_valid_turns = st.builds(
    lambda atype, s, e, n, content, conf: j(
        {"type": atype, "start": s, "end": e, "num": n, "content": content}, confidence=conf),
    st.sampled_from(["get_frames", "get_audio", "get_clip", "answer"]),
    st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.integers(-5, 100), st.text(max_size=20), st.floats(0, 1),
)


def _mutate(text: str, data) -> str:
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["ins", "del", "swap", "dup", "cut"]),
                                        st.integers(0, max(0, len(text))),
                                        st.text(string.printable + "{}[]\":,\\é✓\x00", min_size=1, max_size=3)),
                             min_size=1, max_size=4))
    for op, i, s in ops:
        i = min(i, len(text))
        if op == "ins":
            text = text[:i] + s + text[i:]
        elif op == "del":
            text = text[:i] + text[i + 1:]
        elif op == "swap" and i + 1 < len(text):
            text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        elif op == "dup":
            text = text[:i] + text[i:] + text[i:]
        else:
            text = text[:i]
    return text


def _check(text, strict):
    try:
        t = parse_action(text, strict_confidence=strict)
    except ActionError as e:
        assert isinstance(e.code, ErrorCode) and isinstance(e.detail, str)
    else:
        assert isinstance(t, Turn)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_turns, st.booleans(), st.data())
def test_fuzz_mutated_valid_turns(text, strict, data):
    _check(_mutate(text, data), strict)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")), st.text(max_size=200)), st.booleans())
def test_fuzz_random_text(text, strict):
    _check(text, strict)
    _check("{" + text + "}", strict)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["observation", "think", "confidence", "action", "x"]), _json_value, max_size=5),
       st.dictionaries(st.sampled_from(["type", "start", "end", "num", "content"]), _json_value, max_size=5),
       st.sampled_from(["get_frames", "get_audio", "get_clip", "answer", None]), st.integers(0, 300), st.booleans())
def test_fuzz_structured(top, action, atype, depth, strict):
    """Random JSON shapes, deep nesting, huge and non-finite numbers, unicode."""
    if atype is not None:
        action = {**action, "type": atype}
    top = {**top, "action": action}
    text = json.dumps(top, allow_nan=True)
    _check(text, strict)
    _check("{" + '"observation": ' + "[" * depth + "]" * depth + "}", strict)
    _check(text.replace("0", "9" * 400), strict)
