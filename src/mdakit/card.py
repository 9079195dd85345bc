"""The model card: how to rebuild a module and what its logits mean (``card.json`` of a model file).

The card says how to rebuild the module (architecture, constructor arguments, input shape,
normalisation), what its logits mean (dataset, class names, ``logit_classes``), how it was made
(training settings, structural edits, provenance) and what it scored (metrics). Its architecture
comes from the zoo (:mod:`mdakit.zoo`) and its structural edits are replayed by the registry of
:mod:`mdakit.edits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mdakit.card_schema import FORMAT, FORMAT_VERSION, RECORDED_KIND, check_card_fields
from mdakit.edits import apply_edits
from mdakit.errors import MdakitError, UserBuiltModuleError

if TYPE_CHECKING:
    from torch import nn

    from mdakit.data import DatasetInfo

__all__ = ["FORMAT", "FORMAT_VERSION", "RECORDED_KIND", "ModelCard", "check_card_classes", "check_card_fields"]



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

    @property
    def rebuildable(self) -> bool:
        """Whether the card alone rebuilds its module: a zoo architecture, or a user-built module whose
        structure its first edit records (:mod:`mdakit.graph.recorded`).

        >>> ModelCard("lenet5", [1, 28, 28], 10).rebuildable, ModelCard(None, [1, 28, 28], 10).rebuildable
        (True, False)
        """
        return self.arch is not None or (bool(self.edits) and self.edits[0].get("kind") == RECORDED_KIND)

    def build(self) -> nn.Module:
        """A fresh module of this card's architecture with its structural edits, before weights are loaded."""
        from mdakit.zoo import build_model  # torch: a card is read without it (mdakit info)

        if not self.rebuildable:
            raise UserBuiltModuleError(why=self.provenance.get("not_recorded"))
        base = None if self.arch is None else build_model(self.arch, self.input_shape, self.num_classes, self.mean,
                                                          self.std, **self.arch_kwargs)
        return apply_edits(base, self.edits)



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
