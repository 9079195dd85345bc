"""What an assembled model is made of and what each of its output logits means."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mdakit.artifacts import ModelCard

FORMAT = "mdakit-assembly"
FORMAT_VERSION = 1


def class_name(card: ModelCard, label: int) -> str:
    """The name of dataset label ``label`` by a part's card (the label itself when unnamed).

    >>> class_name(ModelCard(None, [1, 4, 4], 2, class_names=["cat", "dog"]), 1)
    'dog'
    """
    return card.class_names[label] if label < len(card.class_names) else str(label)


@dataclass
class AssemblyCard:
    """What an assembled model is made of and what each of its logits means.

    >>> a = ModelCard("lenet5", [1, 28, 28], 10, dataset="mnist", logit_classes=[0, 2])
    >>> b = ModelCard("lenet5", [1, 28, 28], 10, dataset="fashion-mnist", logit_classes=[1])
    >>> card = AssemblyCard([a, b], sources=["p0", "p1"])
    >>> card.offsets, card.logits[2]
    ([0, 2], {'part': 1, 'dataset': 'fashion-mnist', 'label': 1, 'name': '1'})
    """

    part_cards: list[ModelCard]
    sources: list[str | None]
    layout: str = "parallel"
    rescale: str = "none"
    fit: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> list[int]:
        return list(self.part_cards[0].input_shape)

    @property
    def sizes(self) -> list[int]:
        return [len(card.logit_classes) for card in self.part_cards]

    @property
    def offsets(self) -> list[int]:
        """Index of each part's first logit in the output."""
        return [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    @property
    def logits(self) -> list[dict[str, Any]]:
        """For each output logit: its part, that part's dataset, the dataset label and the class name."""
        return [{"part": p, "dataset": card.dataset, "label": int(c), "name": class_name(card, c)}
                for p, card in enumerate(self.part_cards) for c in card.logit_classes]

    @property
    def architecture(self) -> tuple[str | None, dict[str, Any]]:
        """The parts' zoo architecture and constructor arguments; ``(None, {})`` when they differ (a
        parallel assembly of different architectures or of user-built modules)."""
        first = self.part_cards[0]
        if all((card.arch, card.arch_kwargs) == (first.arch, first.arch_kwargs) for card in self.part_cards):
            return first.arch, first.arch_kwargs
        return None, {}

    def to_dict(self) -> dict[str, Any]:
        arch, arch_kwargs = self.architecture
        parts = [{"dir": f"part-{p}", "source": self.sources[p], "dataset": card.dataset,
                  "classes": list(card.logit_classes), "num_logits": len(card.logit_classes)}
                 for p, card in enumerate(self.part_cards)]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": self.layout, "rescale": self.rescale,
                "arch": arch, "arch_kwargs": arch_kwargs, "input_shape": self.input_shape,
                "parts": parts, "logits": self.logits, "fit": self.fit, "metrics": self.metrics}
