"""The model card: how to rebuild a module and what its logits mean (``card.json`` of a model file).

The card says how to rebuild the module (architecture, constructor arguments, input shape,
normalisation), what its logits mean (dataset, class names, ``logit_classes``), how it was made
(training settings, structural edits, provenance) and what it scored (metrics). Its architecture
comes from the zoo (:mod:`mdakit.zoo`) and its structural edits are replayed by the registry of
:mod:`mdakit.edits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from mdakit.data import DatasetInfo
from mdakit.edits import apply_edits
from mdakit.errors import MdakitError, UserBuiltModuleError
from mdakit.zoo import build_model

FORMAT = "mdakit-model"
FORMAT_VERSION = 1


@dataclass
class ModelCard:
    """Everything needed to rebuild a model and to know what its logits mean.

    >>> import torch
    >>> card = ModelCard(arch="lenet5", input_shape=[1, 28, 28], num_classes=10)
    >>> ModelCard.from_dict(card.to_dict()) == card, card.build()(torch.zeros(1, 1, 28, 28)).shape
    (True, torch.Size([1, 10]))
    """

    arch: str | None
    input_shape: list[int]
    num_classes: int
    dataset: str | None = None
    class_names: list[str] = field(default_factory=list)
    logit_classes: list[int] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    edits: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.logit_classes:
            self.logit_classes = list(range(self.num_classes))
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]

    @classmethod
    def for_dataset(cls, arch: str, info: DatasetInfo, **kwargs: Any) -> ModelCard:
        """A card for a zoo architecture trained on a dataset.

        >>> from mdakit.data import BUILTIN
        >>> ModelCard.for_dataset("lenet5", BUILTIN["mnist"]).input_shape
        [1, 28, 28]
        """
        return cls(arch=arch, input_shape=list(info.input_shape), num_classes=info.num_classes,
                   dataset=info.name, class_names=list(info.class_names), mean=list(info.mean),
                   std=list(info.std), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelCard:
        """The card held by ``raw`` (a parsed ``card.json``), its fields' types checked.

        >>> ModelCard.from_dict({"format": FORMAT, "arch": "lenet5", "input_shape": "1x28x28", "num_classes": 10})
        Traceback (most recent call last):
        ...
        mdakit.errors.MdakitError: model card field 'input_shape' must be a list of positive integers, got '1x28x28'
        """
        if raw.get("format") != FORMAT:
            raise MdakitError(f"not an mdakit model card (format is {raw.get('format')!r})")
        check_card_fields(raw)
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise MdakitError(f"model card format {raw['format_version']} is newer than this mdakit reads "
                              f"({FORMAT_VERSION}); upgrade mdakit")
        missing = [name for name in ("arch", "input_shape", "num_classes") if name not in raw]
        if missing:
            raise MdakitError(f"model card is incomplete: it has no {', '.join(map(repr, missing))} field")
        known = set(cls.__dataclass_fields__)
        card = cls(**{k: v for k, v in raw.items() if k in known})
        check_card_classes(card)
        return card

    def build(self) -> nn.Module:
        """A fresh module of this card's architecture with its structural edits, before weights are loaded."""
        if self.arch is None:
            raise UserBuiltModuleError()
        return apply_edits(build_model(self.arch, self.input_shape, self.num_classes, self.mean, self.std,
                                       **self.arch_kwargs), self.edits)


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
       for name in ("arch_kwargs", "training", "metrics", "provenance")},
}
"""Each card field's check and what it must be (fields a card may leave out are checked when present)."""


def check_card_classes(card: ModelCard) -> None:
    """Refuse a card whose logits are not distinct classes among its ``class_names`` (``num_classes`` is the
    architecture's output count, which a padded assembly's merged network does not share with its logits).

    >>> check_card_classes(ModelCard(arch="lenet5", input_shape=[1, 28, 28], num_classes=10, logit_classes=[0, 12]))
    Traceback (most recent call last):
    ...
    mdakit.errors.MdakitError: model card field 'logit_classes' names class 12, but 'class_names' has classes 0-9
    """
    beyond = [c for c in card.logit_classes if c >= len(card.class_names)]
    if beyond:
        raise MdakitError(f"model card field 'logit_classes' names class {beyond[0]}, but 'class_names' has "
                          f"classes 0-{len(card.class_names) - 1}")
    if len(set(card.logit_classes)) != len(card.logit_classes):
        raise MdakitError("model card field 'logit_classes' lists a class more than once")


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
