"""Reading the model's `<answer>` body into a box and points (public contract: `parse_answer`).

The body is JSON, or a Python-style literal with single quotes (Seg-Zero's in-prompt example is written that
way), holding one object or a list of objects. A body holding several bare values (`{...}\n{...}`) is read as
its first one, as Seg-Zero's parser does. Key spellings accepted, first match wins:

    box:    bbox, bbox_2d, box, box_2d                 -> [x1, y1, x2, y2]
    points: points_1, points_2, point_2d, point        -> [x, y]
            points                                     -> [[x, y], ...] or a single [x, y]; read only when
                                                          no single-point key above gives a point

Coordinates are returned as the model wrote them (the model's input space); callers map them with
`sample.transform.to_original`. `parse_answer` never raises and never returns a non-finite coordinate: model
output is untrusted text, and a reward must score it rather than crash the training step.
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

BOX_KEYS = ("bbox", "bbox_2d", "box", "box_2d")
SINGLE_POINT_KEYS = ("points_1", "points_2", "point_2d", "point")
POINT_LIST_KEY = "points"

# Bodies longer or deeper than this are not answers; the caps keep json/ast away from RecursionError and from
# spending time on pathological text (a real answer is well under 1 kB and 3 levels deep).
MAX_BODY_CHARS = 20_000
MAX_DEPTH = 16
MAX_OBJECTS = 64

# The innermost `<answer>...</answer>`: a body never contains another opening tag, so nested or repeated
# opening tags resolve to the last one before the first closing tag.
_ANSWER_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass
class Answer:
    """A parsed answer. `box` and `points` are the first object's; `objects` lists every object.

    `box` is (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2 (corners are reordered), or None when the object has
    no usable box. `points` holds every usable point of the object in key order (points_1 before points_2).
    `raw` is the parsed body (a dict or a list) for rewards that check the exact format.
    """

    box: Box | None = None
    points: list[Point] = field(default_factory=list)
    objects: list[Answer] = field(default_factory=list)
    raw: Any = None

    @property
    def is_list(self) -> bool:
        return isinstance(self.raw, list)


def extract_answer_body(text: Any) -> str | None:
    """The text between the innermost `<answer>` and its `</answer>`, or None if there is no such pair."""
    if not isinstance(text, str):
        return None
    match = _ANSWER_RE.search(text)
    return None if match is None else match.group(1)


def parse_answer(text: Any) -> Answer | None:
    """Parse a completion's `<answer>` body; None when there is no body or it is not an object or a list."""
    try:
        body = extract_answer_body(text)
        if body is None:
            return None
        data = load_literal(body)
        if data is None:
            return None
        return _to_answer(data)
    except Exception:  # noqa: BLE001 - the contract is "never raises"; any surprise is an unusable answer
        return None


def load_literal(body: str) -> dict | list | None:
    """Decode a JSON or Python-literal dict/list from `body` (tolerating code fences and surrounding prose)."""
    body = body.strip()
    fenced = _FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1)
    if len(body) > MAX_BODY_CHARS:
        return None
    candidates = [body]
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    end = max(body.rfind("}"), body.rfind("]"))
    if start >= 0 and end > start and (start, end) != (0, len(body) - 1):
        candidates.append(body[start : end + 1])
    if start >= 0:
        first = _first_value(body, start)
        if first is not None and first not in candidates:
            candidates.append(first)
    for candidate in candidates:
        if not candidate or _nesting_depth(candidate) > MAX_DEPTH:
            continue
        data = _decode(candidate)
        if isinstance(data, (dict, list)):
            return data
    return None


def _first_value(text: str, start: int) -> str | None:
    """The bracketed value opening at `text[start]` up to its matching close (quote-aware), or None."""
    closing = {"{": "}", "[": "]"}
    stack: list[str] = []
    quote = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in closing:
            stack.append(closing[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return text[start : i + 1]
    return None


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError, TypeError):
        pass
    try:
        # literal_eval only builds literals (no names, calls or attribute access): safe on untrusted text. Its
        # compiler warns about odd escapes or numbers in the text ("\>", "4if"); a completion is not our code.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, OverflowError):
        return None


def _nesting_depth(text: str) -> int:
    """Bracket depth, counted without parsing; strings are not excluded, which only over-counts (safe side)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{(":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif ch in "]})":
            depth -= 1
    return deepest


def _to_answer(data: dict | list) -> Answer:
    if isinstance(data, dict):
        items: list[Any] = [data]
    elif _number_list(data, 4) is not None:
        items = [{"bbox": data}]  # a bare [x1, y1, x2, y2]: Qwen grounding's shortest answer
    else:
        items = [item for item in data[:MAX_OBJECTS] if isinstance(item, dict)]
    objects = [_object(item) for item in items]
    first = objects[0] if objects else Answer()
    return Answer(box=first.box, points=list(first.points), objects=objects, raw=data)


def _object(item: dict) -> Answer:
    box = None
    for key in BOX_KEYS:
        if key in item:
            box = _box(item[key])
            if box is not None:
                break
    points: list[Point] = []
    for key in SINGLE_POINT_KEYS:
        if key in item:
            point = _number_list(item[key], 2)
            if point is not None:
                points.append((point[0], point[1]))
    if not points and POINT_LIST_KEY in item:  # explicit points_1 / points_2 win over a generic list
        points = _point_list(item[POINT_LIST_KEY])
    return Answer(box=box, points=points, objects=[], raw=item)


def _box(value: Any) -> Box | None:
    nums = _number_list(value, 4)
    if nums is None:
        return None
    x1, y1, x2, y2 = nums
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _point_list(value: Any) -> list[Point]:
    single = _number_list(value, 2)
    if single is not None:
        return [(single[0], single[1])]
    if not isinstance(value, (list, tuple)):
        return []
    out = []
    for entry in value[:MAX_OBJECTS]:
        point = _number_list(entry, 2)
        if point is not None:
            out.append((point[0], point[1]))
    return out


def _number_list(value: Any, length: int) -> list[float] | None:
    """`value` as `length` finite floats, or None. Strings and booleans are not numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        return None
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        try:
            f = float(v)
        except (OverflowError, ValueError):  # an int literal too large for a float
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return out
