"""What a model card's JSON must hold, checked without torch (``mdakit info`` reads cards before importing it).

>>> check_card_fields({"num_classes": 10, "weights": {"sha256": "ab"}})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from mdakit.errors import MdakitError

FORMAT = "mdakit-model"
FORMAT_VERSION = 1
RECORDED_KIND = "graph"
"""The kind of the first edit of a user-built module's card that records its structure."""


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (_integer(value) or isinstance(value, float)) and math.isfinite(value)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _or_none(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format_version": (_integer, "an integer"),
    "arch": (_or_none(lambda v: isinstance(v, str)), "a string or null"),
    "input_shape": (lambda v: _list_of(lambda d: _integer(d) and d > 0)(v) and len(v) > 0,
                    "a list of positive integers"),
    "num_classes": (lambda v: _integer(v) and v > 0, "a positive integer"),
    "dataset": (_or_none(lambda v: isinstance(v, str)), "a string or null"),
    "class_names": (_list_of(lambda v: isinstance(v, str)), "a list of strings"),
    "logit_classes": (_list_of(lambda v: _integer(v) and v >= 0), "a list of non-negative integers"),
    "mean": (_or_none(_list_of(_number)), "a list of numbers or null"),
    "std": (_or_none(_list_of(lambda v: _number(v) and v > 0)), "a list of positive numbers or null"),
    "edits": (_list_of(lambda v: isinstance(v, dict)), "a list of objects"),
    "weights": (lambda v: isinstance(v, dict) and isinstance(v.get("sha256", ""), str), "an object"),
    **{name: (lambda v: isinstance(v, dict), "an object")
       for name in ("arch_kwargs", "training", "metrics", "provenance", "summary")},
}
"""Each card field's check and what it must be (fields a card may leave out are checked when present)."""


def check_card_fields(raw: Mapping[str, Any]) -> None:
    """Refuse a card whose fields have the wrong type (hand-edited or written by something else).

    >>> check_card_fields({"num_classes": 10, "weights": {"sha256": "ab"}})
    >>> check_card_fields({"format_version": "1"})
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: model card field 'format_version' must be an integer, got '1'
    """
    for name, (check, expected) in _FIELDS.items():
        if name in raw and not check(raw[name]):
            raise MdakitError(f"model card field {name!r} must be {expected}, got {raw[name]!r:.60}")
