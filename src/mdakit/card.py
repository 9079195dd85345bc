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
from typing import Any

from torch import nn

from mdakit.data import DatasetInfo
from mdakit.edits import apply_edits
from mdakit.errors import MdakitError
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
        if raw.get("format") != FORMAT:
            raise MdakitError(f"not an mdakit model card (format is {raw.get('format')!r})")
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise MdakitError(f"model card format {raw['format_version']} is newer than this mdakit reads "
                              f"({FORMAT_VERSION}); upgrade mdakit")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise MdakitError(f"model card is incomplete: {exc}") from exc

    def build(self) -> nn.Module:
        """A fresh module of this card's architecture with its structural edits, before weights are loaded."""
        if self.arch is None:
            raise MdakitError("this model was saved from a user-built module: pass that module as `into=`")
        return apply_edits(build_model(self.arch, self.input_shape, self.num_classes, self.mean, self.std,
                                       **self.arch_kwargs), self.edits)
