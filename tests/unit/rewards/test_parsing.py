"""parse_answer: the key spellings of Seg-Zero / VisionReasoner / Qwen grounding, and fuzzing for robustness."""

from __future__ import annotations

import math
import string
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samr1.rewards import Answer, parse_answer


def _check(answer: Answer | None) -> None:
    """The contract: an Answer or None, every coordinate a finite float, every box ordered."""
    if answer is None:
        return
    assert isinstance(answer, Answer)
    for obj in [answer, *answer.objects]:
        if obj.box is not None:
            assert len(obj.box) == 4 and all(isinstance(v, float) and math.isfinite(v) for v in obj.box)
            assert obj.box[0] <= obj.box[2] and obj.box[1] <= obj.box[3]
        for point in obj.points:
            assert len(point) == 2 and all(isinstance(v, float) and math.isfinite(v) for v in point)


def test_segzero_json():
    a = parse_answer(
        '<think>the man on the left</think><answer>{"bbox": [10, 20, 110, 220], "points_1": [50, 60], '
        '"points_2": [70.5, 80]}</answer>'
    )
    assert a.box == (10.0, 20.0, 110.0, 220.0)
    assert a.points == [(50.0, 60.0), (70.5, 80.0)]
    assert len(a.objects) == 1 and not a.is_list


def test_python_style_single_quotes_and_reordered_corners():
    a = parse_answer("<answer>{'bbox': [110, 220, 10, 20], 'points_1': [1, 2], 'points_2': [3, 4]}</answer>")
    assert a.box == (10.0, 20.0, 110.0, 220.0)
    assert a.points == [(1.0, 2.0), (3.0, 4.0)]


def test_visionreasoner_list_of_objects():
    a = parse_answer(
        '<answer>[{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}, {"bbox_2d": [5, 6, 7, 8], "point_2d": [6, 7]}]'
        "</answer>"
    )
    assert a.is_list
    assert [o.box for o in a.objects] == [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]
    assert [o.points for o in a.objects] == [[(2.0, 3.0)], [(6.0, 7.0)]]
    assert a.box == (1.0, 2.0, 3.0, 4.0) and a.points == [(2.0, 3.0)]  # first object for single-object use


def test_points_list_key_and_bare_box():
    assert parse_answer('<answer>{"points": [[1, 2], [3, 4]]}</answer>').points == [(1.0, 2.0), (3.0, 4.0)]
    assert parse_answer('<answer>{"points": [1, 2]}</answer>').points == [(1.0, 2.0)]
    assert parse_answer("<answer>[1, 2, 3, 4]</answer>").box == (1.0, 2.0, 3.0, 4.0)


def test_code_fence_and_prose_around_json():
    assert parse_answer('<answer>```json\n{"bbox": [1, 2, 3, 4]}\n```</answer>').box == (1.0, 2.0, 3.0, 4.0)
    assert parse_answer('<answer>Here it is: {"bbox": [1, 2, 3, 4]}.</answer>').box == (1.0, 2.0, 3.0, 4.0)


def test_innermost_answer_tag_is_read():
    a = parse_answer('<answer><answer>{"bbox": [1, 2, 3, 4]}</answer></answer>')
    assert a is not None and a.box == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no tags at all",
        '<answer>{"bbox": [1, 2, 3, 4]}',  # truncated: no closing tag
        '{"bbox": [1, 2, 3, 4]}</answer>',
        "<answer></answer>",
        "<answer>null</answer>",
        "<answer>42</answer>",
        '<answer>"a string"</answer>',
        "<answer>NaN</answer>",
        "<answer>{bbox: [1, 2, 3, 4]}</answer>",  # unquoted key: a name, never evaluated
        "<answer>__import__('os').system('echo hi')</answer>",
        "<answer>" + "[" * 10_000 + "</answer>",
        "<answer>" + "[" * 10_000 + "]" * 10_000 + "</answer>",
        "<answer>" + "{'a': " * 5_000 + "1" + "}" * 5_000 + "</answer>",
        "<answer>" + "(" * 3_000 + ")" * 3_000 + "</answer>",
        "<answer>" + "9" * 100_000 + "</answer>",
        None,
        12,
        b"<answer>{}</answer>",
    ],
)
def test_unusable_answers_return_none(text):
    assert parse_answer(text) is None


@pytest.mark.parametrize(
    "body",
    [
        '{"bbox": [NaN, 1, 2, 3]}',
        '{"bbox": [Infinity, 1, 2, 3]}',
        '{"bbox": [-Infinity, 1, 2, 3]}',
        '{"bbox": [1e400, 1, 2, 3]}',
        "{'bbox': [1e400, 1, 2, 3]}",
        "{'bbox': [float('nan'), 1, 2, 3]}",
        '{"bbox": ["1", "2", "3", "4"]}',
        '{"bbox": [true, 1, 2, 3]}',
        '{"bbox": [1, 2, 3]}',
        '{"bbox": [1, 2, 3, 4, 5]}',
        '{"bbox": [[1, 2], [3, 4]]}',
        '{"bbox": null}',
        '{"bbox": {"x": 1}}',
        "{'bbox': [1+2j, 1, 2, 3]}",
        "{'bbox': [" + "9" * 400 + ", 1, 2, 3]}",
    ],
)
def test_bad_coordinates_are_dropped_not_returned(body):
    a = parse_answer(f"<answer>{body}</answer>")
    _check(a)
    assert a is None or a.box is None


@pytest.mark.parametrize(
    "body, box",
    [
        ("{'bbox': [1, 2, 3, 4], 'note': '\\>'}", (1.0, 2.0, 3.0, 4.0)),
        ("{'bbox': [1, 2, 3, 4if 1 else 0]}", None),
    ],
)
def test_odd_escapes_and_numbers_in_a_completion_raise_no_python_warnings(body, box):
    # Python's compiler warns about these ("invalid escape sequence", "invalid decimal literal"); a policy's
    # completion is data, so reading it must not print warnings into a training run.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = parse_answer(f"<answer>{body}</answer>")
    assert caught == []
    assert (answer.box if answer is not None else None) == box


def test_bad_points_are_dropped_individually():
    a = parse_answer('<answer>{"points_1": [NaN, 1], "points_2": [3, 4], "points": [[5, 6]]}</answer>')
    assert a.points == [(3.0, 4.0)]
    a = parse_answer('<answer>{"points_1": [NaN, 1], "points": [[1], [5, 6], "x"]}</answer>')
    assert a.points == [(5.0, 6.0)]  # no usable single point: the generic list is read, bad entries dropped


def test_explicit_points_win_over_a_generic_points_key():
    a = parse_answer(
        '<answer>{"bbox": [0, 0, 9, 9], "points_1": [1, 2], "points_2": [3, 4], "points": [[5, 6], [7, 8]]}'
        "</answer>"
    )
    assert a.points == [(1.0, 2.0), (3.0, 4.0)]


@pytest.mark.parametrize(
    "body",
    [
        '{"bbox": [1, 2, 3, 4], "points_1": [1, 2], "points_2": [3, 4]}\n{"bbox": [5, 6, 7, 8]}',
        "{'bbox': [1, 2, 3, 4], 'points_1': [1, 2], 'points_2': [3, 4]} {'bbox': [5, 6, 7, 8]}",
        'first: {"bbox": [1, 2, 3, 4], "points_1": [1, 2], "points_2": [3, 4], "note": "a } in text"}, '
        'then {"bbox": [5, 6, 7, 8]}',
    ],
)
def test_first_of_several_bare_objects(body):
    a = parse_answer(f"<answer>{body}</answer>")
    assert a.box == (1.0, 2.0, 3.0, 4.0)
    assert a.points == [(1.0, 2.0), (3.0, 4.0)]
    assert len(a.objects) == 1 and not a.is_list


def test_unknown_keys_parse_to_an_empty_answer():
    a = parse_answer('<answer>{"mask": [1, 2]}</answer>')
    assert a is not None and a.box is None and a.points == []


# --- fuzzing: >= 10,000 random strings in total, none may raise or yield a non-finite coordinate -------------

_ANSWERISH = st.text(alphabet=string.printable, max_size=200).map(lambda s: f"<answer>{s}</answer>")
_TOKENS = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", " ", '"bbox"', "'bbox'", '"bbox_2d"', '"points_1"', '"points_2"',
        '"point_2d"', '"points"', "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "0", "1", "-3.5", "1e308",
        "null", "true", "None", "'x'", '"', "'", "<answer>", "</answer>", "<think>", "</think>", "(", ")", "+", "j",
    ]
)  # fmt: skip
_STRUCTURED = st.lists(_TOKENS, max_size=40).map(lambda t: "<answer>" + "".join(t) + "</answer>")


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text):
    _check(parse_answer(text))


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_ANSWERISH)
def test_fuzz_answer_bodies(text):
    _check(parse_answer(text))


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_STRUCTURED)
def test_fuzz_json_like_tokens(text):
    _check(parse_answer(text))


_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**400), max_value=10**400)
)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_NUMBER, min_size=4, max_size=4), st.lists(_NUMBER, min_size=2, max_size=2))
def test_fuzz_numbers_in_valid_layout(box, point):
    text = f"<answer>{{'bbox': {box!r}, 'points_1': {point!r}}}</answer>"
    a = parse_answer(text)
    _check(a)
    finite = all(math.isfinite(v) if isinstance(v, float) else abs(v) < 1e308 for v in box)
    if a is not None and finite:
        assert a.box is not None
